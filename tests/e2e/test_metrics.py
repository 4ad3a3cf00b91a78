"""GET /metrics of a real `bankrace serve` with 2 workers adds up to exactly what was sent.

Each request opens its own connection, so both workers serve some (the test
keeps sending until the request log shows two processes); whichever worker
answers the scrape, the counts are the sums over both (prometheus-client's
multiprocess mode). The audit gauges must repeat what the last audit
answered, lost updates included, and a killed worker's counts must stay
while its place in `bankrace_workers` goes.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from service.services import MODE_REFRESH_SECONDS
from tests.e2e.conftest import E2E_ADMIN_TOKEN, StartServer
from tests.support.load import Call, fire, set_mode
from tests.support.servers import ServerProcess

pytestmark = pytest.mark.e2e

Sample = tuple[str, frozenset[tuple[str, str]]]
CLIENT_THREADS = 8
MAX_ROUNDS = 10
DEPOSIT_ROUTE = "/accounts/{account_id}/deposit"
WITHDRAW_ROUTE = "/accounts/{account_id}/withdraw"
WAIT_SECONDS = 30.0
POLL_SECONDS = 0.1


def scrape(server: ServerProcess) -> dict[Sample, float]:
    response = requests.get(f"{server.url}/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Mapping[Sample, float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def increase(
    before: Mapping[Sample, float], after: Mapping[Sample, float], name: str, **labels: str
) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def request_processes(server: ServerProcess, message_prefix: str) -> set[int]:
    """The pids whose request log lines start with this message (e.g. 'POST /accounts/')."""
    processes = set()
    for line in server.read_log().splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            if str(entry.get("message", "")).startswith(message_prefix):
                processes.add(int(entry["process"]))
    return processes


def send(server: ServerProcess, calls: list[tuple[str, str, dict[str, Any]]]) -> Counter[int]:
    """Each call on a new connection, from a few threads at once; the statuses seen."""

    def one(call: tuple[str, str, dict[str, Any]]) -> int:
        method, path, options = call
        response = requests.request(
            method,
            server.url + path,
            headers={"Connection": "close", **options.pop("headers", {})},
            timeout=30,
            **options,
        )
        return response.status_code

    with ThreadPoolExecutor(max_workers=CLIENT_THREADS) as pool:
        return Counter(pool.map(one, calls))


def round_of_calls(account_id: int) -> list[tuple[str, str, dict[str, Any]]]:
    deposit = f"/accounts/{account_id}/deposit"
    return [
        *[("POST", deposit, {"json": {"amount": 3}}) for _ in range(12)],
        *[
            ("POST", f"/accounts/{account_id}/withdraw", {"json": {"amount": 10**9}})
            for _ in range(4)
        ],
        *[("GET", "/accounts/987654321", {}) for _ in range(3)],
        *[
            ("POST", deposit, {"data": "{", "headers": {"Content-Type": "application/json"}})
            for _ in range(2)
        ],
        *[("GET", "/no/such/route", {}) for _ in range(2)],
    ]


def test_counters_add_up_over_two_workers(start_server: StartServer) -> None:
    """Requests, problems, operations, latency and lock-wait counts equal what was sent."""
    server = start_server()
    before = scrape(server)
    opened = requests.post(
        f"{server.url}/accounts", json={"owner": "metrics", "opening_balance": 100}, timeout=10
    )
    account_id = opened.json()["id"]
    sent: Counter[int] = Counter()
    rounds = 0
    while rounds < MAX_ROUNDS:
        sent += send(server, round_of_calls(account_id))
        rounds += 1
        if len(request_processes(server, "POST /accounts/")) >= 2:
            break
    assert len(request_processes(server, "POST /accounts/")) == 2, "one worker served it all"
    after = scrape(server)
    print(f"{rounds} round(s): {dict(sent)}")

    deposits, withdrawals = 12 * rounds, 4 * rounds
    assert sent == {201: deposits, 409: withdrawals, 404: 5 * rounds, 400: 2 * rounds}
    counted = {
        ("POST", "/accounts", "201"): 1,
        ("POST", DEPOSIT_ROUTE, "201"): deposits,
        ("POST", DEPOSIT_ROUTE, "400"): 2 * rounds,
        ("POST", WITHDRAW_ROUTE, "409"): withdrawals,
        ("GET", "/accounts/{account_id}", "404"): 3 * rounds,
        ("GET", "unmatched", "404"): 2 * rounds,
        ("GET", "/metrics", "200"): 1,  # the first scrape (a scrape counts after it answers)
    }
    for (method, route, status), expected in counted.items():
        got = increase(
            before, after, "bankrace_http_requests_total", method=method, route=route, status=status
        )
        assert got == expected, (method, route, status)
    total = sum(
        number - value(before, name, **dict(labels))
        for (name, labels), number in after.items()
        if name == "bankrace_http_requests_total"
    )
    assert total == sum(counted.values())
    latency_count = increase(
        before,
        after,
        "bankrace_http_request_duration_seconds_count",
        method="POST",
        route=DEPOSIT_ROUTE,
    )
    assert latency_count == deposits + 2 * rounds

    problems = {
        ("409", "insufficient_funds"): withdrawals,
        ("404", "not_found"): 5 * rounds,
        ("400", "malformed_json"): 2 * rounds,
    }
    for (status, code), expected in problems.items():
        got = increase(before, after, "bankrace_http_problems_total", status=status, code=code)
        assert got == expected, code

    operations = {
        ("deposit", "ok"): deposits,
        ("withdrawal", "insufficient_funds"): withdrawals,
    }
    for (kind, outcome), expected in operations.items():
        got = increase(
            before,
            after,
            "bankrace_operations_total",
            kind=kind,
            outcome=outcome,
            lock_mode="locked",
        )
        assert got == expected, (kind, outcome)
    timed = increase(
        before,
        after,
        "bankrace_operation_duration_seconds_count",
        kind="deposit",
        lock_mode="locked",
    )
    assert timed == deposits
    waited = increase(before, after, "bankrace_lock_wait_seconds_count", lock_mode="locked")
    assert waited == deposits + withdrawals  # a refused withdrawal held the lock too
    assert value(after, "bankrace_lock_mode", lock_mode="locked") == 1
    assert value(after, "bankrace_lock_mode", lock_mode="unlocked") == 0
    assert value(after, "bankrace_workers") == 2
    assert any(name == "bankrace_build_info" for name, _labels in after)


def test_audit_gauges_show_the_last_audit_lost_updates_included(
    start_server: StartServer,
) -> None:
    """Unlocked with a race window loses updates; the gauges repeat what the audits answered."""
    server = start_server()
    opened = requests.post(
        f"{server.url}/accounts", json={"owner": "race", "opening_balance": 0}, timeout=10
    )
    account_id = opened.json()["id"]
    set_mode(server.url, E2E_ADMIN_TOKEN, "unlocked", 100)
    changed_at = time.monotonic()
    outcome = fire(
        server.url, [Call("POST", f"/accounts/{account_id}/deposit", {"amount": 1})] * 32
    )
    assert outcome.count(201) == 32
    bank = requests.get(f"{server.url}/audit", timeout=30).json()
    samples = scrape(server)
    print(f"bank audit: {bank}")
    assert bank["drift"] < 0, "32 racing deposits lost nothing: the race did not happen"
    assert value(samples, "bankrace_audit_drift_minor", scope="bank") == bank["drift"]
    assert value(samples, "bankrace_audit_chain_breaks", scope="bank") == bank["chain_breaks"]
    assert value(samples, "bankrace_audit_inconsistent_accounts") == 1
    assert value(samples, "bankrace_audit_consistent", scope="bank") == 0
    # The mode gauges are the answering worker's view, up to MODE_REFRESH_SECONDS old.
    wait_for(
        "every worker to report unlocked",
        lambda: (
            time.monotonic() - changed_at > MODE_REFRESH_SECONDS
            and value(scrape(server), "bankrace_lock_mode", lock_mode="unlocked") == 1
        ),
    )
    samples = scrape(server)
    assert value(samples, "bankrace_lock_mode", lock_mode="locked") == 0
    assert value(samples, "bankrace_race_window_seconds") == pytest.approx(0.1)

    account = requests.get(f"{server.url}/accounts/{account_id}/audit", timeout=30).json()
    samples = scrape(server)
    assert value(samples, "bankrace_audit_drift_minor", scope="account") == account["drift"]
    assert value(samples, "bankrace_audit_chain_breaks", scope="account") == account["chain_breaks"]
    assert value(samples, "bankrace_audit_account_id") == account_id
    assert value(samples, "bankrace_audit_time_seconds", scope="account") >= value(
        samples, "bankrace_audit_time_seconds", scope="bank"
    )


def worker_pids(server: ServerProcess) -> list[int]:
    return [
        int(line.split()[2])
        for line in server.read_log().splitlines()
        if line.startswith("bankrace: worker ") and line.endswith(" ready")
    ]


def wait_for(what: str, check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(POLL_SECONDS)  # polling interval, not synchronisation


def test_a_killed_worker_keeps_its_counts_and_leaves_the_worker_gauge(
    start_server: StartServer, tmp_path: Path
) -> None:
    """SIGKILL one worker: gunicorn replaces it; counts stay, bankrace_workers is 2 again."""
    server = start_server()
    sent = send(server, [("GET", "/healthz", {}) for _ in range(40)])
    assert sent == {200: 40}
    wait_for("both workers to answer", lambda: len(request_processes(server, "GET /healthz")) == 2)
    before = scrape(server)
    victim = worker_pids(server)[0]
    os.kill(victim, signal.SIGKILL)  # a worker of the server this test started
    wait_for("a replacement worker", lambda: len(worker_pids(server)) == 3)
    wait_for(
        "the replacement to count itself", lambda: value(scrape(server), "bankrace_workers") == 2
    )
    after = scrape(server)
    healthz = value(
        after, "bankrace_http_requests_total", method="GET", route="/healthz", status="200"
    )
    assert (
        healthz
        == value(
            before, "bankrace_http_requests_total", method="GET", route="/healthz", status="200"
        )
        == 40
    )
    assert value(after, "bankrace_workers") == 2


def healthz_count(server: ServerProcess) -> float:
    samples = scrape(server)
    return value(
        samples, "bankrace_http_requests_total", method="GET", route="/healthz", status="200"
    )


def test_serve_makes_and_removes_its_metrics_directory(tmp_path: Path) -> None:
    """Without PROMETHEUS_MULTIPROC_DIR, serve writes samples to a new directory, gone after."""
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    settings = {
        "BANK_DATABASE_URL": f"sqlite:///{tmp_path / 'bank.db'}",
        "TMPDIR": str(temporary),  # where tempfile makes the directory
    }
    with ServerProcess(tmp_path, settings) as server:
        send(server, [("GET", "/healthz", {}) for _ in range(4)])
        (made,) = temporary.glob("bankrace-metrics-*")
        assert list(made.glob("*.db")), "no sample files while serving"
        assert healthz_count(server) == 4 + 0  # /readyz polls at start are not /healthz
    assert not made.exists()


def test_a_given_metrics_directory_is_emptied_at_each_start(tmp_path: Path) -> None:
    """PROMETHEUS_MULTIPROC_DIR is kept, but a restart does not add the last run's counts."""
    directory = tmp_path / "metrics"
    settings = {
        "BANK_DATABASE_URL": f"sqlite:///{tmp_path / 'bank.db'}",
        "PROMETHEUS_MULTIPROC_DIR": str(directory),
    }
    server = ServerProcess(tmp_path, settings)
    for _run in range(2):
        with server:
            send(server, [("GET", "/healthz", {}) for _ in range(3)])
            assert healthz_count(server) == 3
        assert list(directory.glob("*.db")), "the given directory keeps its files after a stop"
