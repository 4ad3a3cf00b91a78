"""End-to-end: the load tools against a real `bankrace serve` that requires client tokens.

The server runs with BANK_API_TOKENS, an admin token and BANK_ADMIN_ONLY_READS=1.
With BANK_CLIENT_TOKEN (and BANK_ADMIN_TOKEN for /mode and /audit) the race
test runs and passes; without a token it stops before any load, with one line.
No token ever shows in the tools' output, report or history.

Locust runs only as a subprocess: importing it here would let gevent patch pytest.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from loadtest.client_token import NEEDS_TOKEN
from loadtest.jepsen_checker import check
from loadtest.jepsen_history import load
from tests.support.locust_runs import LOADTEST_DIRECTORY, LocustProcess, run_headless
from tests.support.servers import ServerProcess

pytestmark = pytest.mark.e2e

LOCUSTFILE = LOADTEST_DIRECTORY / "locustfile.py"
JEPSEN_LOCUSTFILE = LOADTEST_DIRECTORY / "jepsen_locustfile.py"
# Far beyond a run that stops at once; a run of 401s for its whole -t would not end by then.
LOCUST_DEADLINE_SECONDS = 40
CLIENT_TOKEN = f"e2e-load-client-{secrets.token_urlsafe(12)}"
ADMIN_TOKEN = f"e2e-load-admin-{secrets.token_urlsafe(12)}"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    workdir = tmp_path_factory.mktemp("protected")
    settings = {
        "BANK_DATABASE_URL": f"sqlite:///{workdir / 'bank.db'}",
        "BANK_LOCK_MODE": "locked",
        "BANK_WORKERS": "1",
        "BANK_API_TOKENS": CLIENT_TOKEN,
        "BANK_ADMIN_TOKEN": ADMIN_TOKEN,
        "BANK_ADMIN_ONLY_READS": "1",
    }
    with ServerProcess(workdir=workdir, settings=settings) as started:
        yield started


def run_locust(
    locustfile: Path, workdir: Path, tokens: dict[str, str], *args: str
) -> LocustProcess:
    """Locust headless from `workdir`, with only `tokens` of the BANK_* variables."""
    environment = {key: value for key, value in os.environ.items() if not key.startswith("BANK_")}
    run = run_headless(
        locustfile,
        args,
        workdir=workdir,
        deadline_seconds=LOCUST_DEADLINE_SECONDS,
        environment={**environment, **tokens},
    )
    if run.timed_out:
        raise AssertionError(f"locust ran past {LOCUST_DEADLINE_SECONDS} s:\n{run.output[-3000:]}")
    return run


def race_arguments(url: str, report: Path, run_time: str) -> list[str]:
    return ["-u", "4", "-r", "4", "-t", run_time, "--host", url, "--bank-report-json", str(report)]


def assert_no_token(*texts: str) -> None:
    for text in texts:
        assert CLIENT_TOKEN not in text and ADMIN_TOKEN not in text


def test_the_race_test_with_the_client_token_runs_and_passes(
    server: ServerProcess, tmp_path: Path
) -> None:
    """BANK_CLIENT_TOKEN + BANK_ADMIN_TOKEN: load, per-account audits and /audit all read."""
    report_path = tmp_path / "race.json"
    tokens = {"BANK_CLIENT_TOKEN": CLIENT_TOKEN, "BANK_ADMIN_TOKEN": ADMIN_TOKEN}
    run = run_locust(LOCUSTFILE, tmp_path, tokens, *race_arguments(server.url, report_path, "3s"))
    assert run.exit_code == 0, run.output[-3000:]
    report = json.loads(report_path.read_text())
    assert report["verdict"] == "PASS", report["problems"]
    assert report["acknowledged_operations"] > 0
    assert not any(label.split()[1] == "401" for label in report["responses"])
    assert report["lock_mode"] == "locked"  # GET /mode, an admin read, with the admin token
    assert report["server_audit"] is not None  # GET /audit likewise
    assert all(account["server_consistent"] for account in report["accounts"])
    assert_no_token(run.output, report_path.read_text(), server.read_log())


def test_the_race_test_without_a_token_stops_at_once_with_one_line(
    server: ServerProcess, tmp_path: Path
) -> None:
    """No token: the set-up's first request is refused, the run ends long before its 60 s."""
    report_path = tmp_path / "race.json"
    run = run_locust(LOCUSTFILE, tmp_path, {}, *race_arguments(server.url, report_path, "60s"))
    assert run.exit_code == 1, run.output[-3000:]
    assert NEEDS_TOKEN in run.output
    report = json.loads(report_path.read_text())
    assert report["problems"] == [f"setup failed: TokenRefused: {NEEDS_TOKEN}"]
    assert report["responses"] == {}  # not one operation was sent


def test_the_jepsen_locustfile_takes_the_bank_token_option(
    server: ServerProcess, tmp_path: Path
) -> None:
    """--bank-token: transfers and reads go through; the history is valid and token-free."""
    history = tmp_path / "history.json"
    run = run_locust(
        JEPSEN_LOCUSTFILE, tmp_path, {},
        "-u", "3", "-r", "3", "-t", "2s", "--host", server.url,
        "--jepsen-history", str(history), "--bank-token", CLIENT_TOKEN,
    )  # fmt: skip
    assert run.exit_code == 0, run.output[-3000:]
    document = load(history)
    assert {(op["type"], op["f"]) for op in document["history"]} >= {
        ("ok", "transfer"),
        ("ok", "read"),
    }
    assert check(document).valid
    assert_no_token(run.output, history.read_text())
