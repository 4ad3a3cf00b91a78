"""Schema-driven fuzzing: schemathesis against a real `bankrace serve`, from its /openapi.json.

schemathesis reads the document the server serves and generates requests
from it: documented examples, the coverage phase's boundary and
wrong-type values, property-based fuzzing, and stateful sequences that
follow the document's links (open an account, then deposit into the id it
got back). Every answer must conform to the document:

- never a 5xx (`not_a_server_error`; the fuzzer's light load leaves no room
  for an honest 503 either);
- a documented status, media type, body schema and headers
  (`status_code_conformance`, `content_type_conformance`,
  `response_schema_conformance`, `response_headers_conformance`);
- 405 with an `Allow` header for an undocumented method, resources that
  exist once created and are not found when they never were, PUT /mode
  refused without its token.

Two checks are left out, on purpose: `positive_data_acceptance` expects a
2xx for every schema-valid body, but a valid body may be refused for a
business reason the schema cannot express (a transfer to the same account,
between currencies, an overdraft, an Idempotency-Key reused with another
body, and `10.0`, which JSON Schema calls an integer and this service does
not); `negative_data_rejection` expects a 4xx for every schema-invalid part,
but the documented `X-Request-ID` rule is lenient by design (an unusable
value is replaced, not refused).

The server is seeded first, and schemathesis's dictionaries mix the seeded
ids into every id it generates (half the time), so the fuzzer reaches
existing accounts, transactions and transfers instead of only 404s.

PUT /mode: the main run has no admin token, so it checks that the refusal
(401) conforms; a second, short run fuzzes PUT /mode alone with the token,
on a server that forbids unsafe modes (403), so the fuzzer can switch only
between safe modes and the books must stay consistent whatever it picks.
The mode is reset afterwards and /audit must be consistent, the server's
own metrics must count no 5xx, and its log must hold no traceback.

Deterministic by default (a fixed seed, Hypothesis derandomized, no example
database, one client worker, bounded by example counts): CI runs the same
cases every time, so a failure is reproducible and never flaky -- at the
price of never exploring new inputs in CI. Set SCHEMATHESIS_SEED to explore
a different part of the input space locally.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import E2E_ADMIN_TOKEN, StartServer

pytestmark = pytest.mark.e2e

DEFAULT_SEED = 20261129
# Per operation and phase; with 20 operations this is ~1,500 requests in ~25 s on 2 cores.
MAX_EXAMPLES = 25
MODE_MAX_EXAMPLES = 40
# Safety bounds on wall time; the example counts end each run well before.
MAIN_RUN_SECONDS = 45
MODE_RUN_SECONDS = 10
REQUEST_TIMEOUT_SECONDS = 10
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "response_headers_conformance",
    "unsupported_method",
    "allow_header_conformance",
    "use_after_free",
    "ensure_resource_availability",
    "ignored_auth",
)
# Seed: three USD accounts (transfers between them succeed) and one EUR account
# (a transfer to it is a currency mismatch), each with a journal and a transfer.
SEED_ACCOUNTS = (("alice", "USD", 1_000_000), ("bob", "USD", 500), ("carol", "USD", 0))
SEED_FOREIGN_ACCOUNT = ("dieter", "EUR", 10_000)


def seed_the_bank(url: str) -> dict[str, list[int]]:
    """Accounts, journal entries and transfers the fuzzer can find by id."""
    session = requests.Session()
    accounts = []
    for owner, currency, balance in (*SEED_ACCOUNTS, SEED_FOREIGN_ACCOUNT):
        response = session.post(
            f"{url}/accounts",
            json={"owner": owner, "currency": currency, "opening_balance": balance},
            timeout=10,
        )
        assert response.status_code == 201, response.text
        accounts.append(response.json()["id"])
    transactions, transfers = [], []
    for account in accounts:
        response = session.post(
            f"{url}/accounts/{account}/deposit", json={"amount": 100}, timeout=10
        )
        assert response.status_code == 201, response.text
        transactions.append(response.json()["id"])
    response = session.post(
        f"{url}/transfers",
        json={"from_account": accounts[0], "to_account": accounts[1], "amount": 250},
        timeout=10,
    )
    assert response.status_code == 201, response.text
    transfers.append(response.json()["id"])
    transactions += [leg["id"] for leg in response.json()["legs"]]
    return {"account_ids": accounts, "transaction_ids": transactions, "transfer_ids": transfers}


def write_config(path: Path, ids: dict[str, list[int]]) -> Path:
    """schemathesis.toml: the seeded ids as dictionaries, mixed into half of the generated ids."""
    bindings = {
        "path.account_id": "account_ids",
        "body.from_account": "account_ids",
        "body.to_account": "account_ids",
        "path.transaction_id": "transaction_ids",
        "path.transfer_id": "transfer_ids",
    }
    deterministic = "false" if os.environ.get("SCHEMATHESIS_SEED") else "true"
    lines = ["[generation]", 'database = "none"', f"deterministic = {deterministic}", ""]
    for name, values in ids.items():
        lines += [f"[dictionaries.{name}]", f"values = {json.dumps(values)}", ""]
    lines.append("[parameters]")
    lines += [
        f'"{key}" = {{ dictionary = "{dictionary}", probability = 0.5 }}'
        for key, dictionary in bindings.items()
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def run_schemathesis(
    url: str, config: Path, report: Path, *arguments: str, max_examples: int, seconds: int
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """One `st run` against the served document; its exit status and JSON report."""
    seed = int(os.environ.get("SCHEMATHESIS_SEED", DEFAULT_SEED))
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "--config-file",
        str(config),
        "--no-color",
        "run",
        f"{url}/openapi.json",
        "--checks",
        ",".join(CHECKS),
        "--max-examples",
        str(max_examples),
        "--seed",
        str(seed),
        "--workers",
        "1",
        "--request-timeout",
        str(REQUEST_TIMEOUT_SECONDS),
        "--output-truncate",
        "true",
        "--report",
        "json",
        "--report-json-path",
        str(report),
        *arguments,
    ]
    finished = subprocess.run(
        command, capture_output=True, text=True, timeout=seconds + 60, cwd=config.parent
    )
    return finished, json.loads(report.read_text())


def served_statuses(url: str) -> dict[str, float]:
    """Requests the server answered, by status class, from its own /metrics."""
    families = text_string_to_metric_families(requests.get(f"{url}/metrics", timeout=10).text)
    counts: dict[str, float] = {}
    for family in families:
        if family.name != "bankrace_http_requests":
            continue
        for sample in family.samples:
            if sample.name.endswith("_total"):
                status = sample.labels["status"]
                counts[status] = counts.get(status, 0) + sample.value
    return counts


@pytest.mark.parametrize("server_backend", ["sqlite"])
def test_every_answer_conforms_to_the_document(start_server: StartServer, tmp_path: Path) -> None:
    """schemathesis from /openapi.json: no 5xx, every answer as documented, books consistent."""
    server = start_server(allow_unsafe_modes="0", lock_timeout_ms=2000)
    ids = seed_the_bank(server.url)
    config = write_config(tmp_path / "schemathesis.toml", ids)
    started = time.monotonic()

    main, main_report = run_schemathesis(
        server.url,
        config,
        tmp_path / "main.json",
        max_examples=MAX_EXAMPLES,
        seconds=MAIN_RUN_SECONDS,
    )
    mode, mode_report = run_schemathesis(
        server.url,
        config,
        tmp_path / "mode.json",
        "--include-operation-id",
        "admin_put_mode",
        "--header",
        f"Authorization: Bearer {E2E_ADMIN_TOKEN}",
        max_examples=MODE_MAX_EXAMPLES,
        seconds=MODE_RUN_SECONDS,
    )
    elapsed = time.monotonic() - started

    reset = requests.put(
        f"{server.url}/mode",
        json={"lock_mode": "locked", "race_window_ms": 0},
        headers={"Authorization": f"Bearer {E2E_ADMIN_TOKEN}"},
        timeout=10,
    )
    audit = requests.get(f"{server.url}/audit", timeout=30).json()
    statuses = served_statuses(server.url)
    server_errors = sum(count for status, count in statuses.items() if status.startswith("5"))
    cases = main_report["test_cases"]["generated"] + mode_report["test_cases"]["generated"]
    print(
        f"\nschemathesis: {cases} test cases ({main_report['test_cases']['generated']} over "
        f"{main_report['operations']['tested']} operations, "
        f"{mode_report['test_cases']['generated']} on PUT /mode with the admin token) "
        f"in {elapsed:.1f} s; the server answered {sum(statuses.values()):.0f} requests, "
        f"by status: {dict(sorted(statuses.items()))}; 5xx: {server_errors:.0f}; "
        f"audit: {audit}"
    )

    assert main.returncode == 0, main.stdout + main.stderr
    assert mode.returncode == 0, mode.stdout + mode.stderr
    for report in (main_report, mode_report):
        assert report["operations"]["errored"] == 0, report["errors"]
        assert report["failures"] == [], report["failures"]
    assert main_report["operations"]["tested"] == main_report["operations"]["total"]
    assert reset.status_code == 200, reset.text
    assert server_errors == 0
    assert audit["consistent"] is True and audit["drift"] == 0, audit
    assert audit["negative_accounts"] == 0 and audit["chain_breaks"] == 0, audit
    assert "Traceback" not in server.read_log()


@pytest.mark.parametrize("server_backend", ["sqlite"])
def test_the_http_servers_own_refusals_are_documented_problems(start_server: StartServer) -> None:
    """ST105: a 414 from gunicorn (GET /balances, long id list) was text/html, not a problem."""
    server = start_server()
    document = requests.get(f"{server.url}/openapi.json", timeout=10).json()
    codes = set(document["components"]["schemas"]["ProblemCode"]["enum"])
    long_list = ",".join(["123456789012345678"] * 300)  # over gunicorn's 4094-byte request line
    refusals = {
        414: requests.get(f"{server.url}/balances?ids={long_list}", timeout=10),
        431: requests.get(f"{server.url}/healthz", headers={"X-Big": "x" * 9000}, timeout=10),
    }
    for status, response in refusals.items():
        assert response.status_code == status, response.text
        assert response.headers["Content-Type"] == "application/problem+json", response.text
        problem = response.json()
        assert problem["status"] == status and problem["code"] in codes, problem
        assert "Server" not in response.headers
