"""End-to-end: the holds scenario against a real gunicorn `bankrace serve`, unlocked and locked.

`unlocked` with a race window must break the hold invariants and say how
(the race report's counts and the server's own audit); `locked` must keep
every one. Locust runs as a subprocess (tests/support/locust_runs.py); each
run is 4 s of six users on one account, so that holds race on it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.support.locust_runs import LOADTEST_DIRECTORY, run_headless
from tests.support.servers import ServerProcess

pytestmark = pytest.mark.e2e

LOCUST_DEADLINE_SECONDS = 90
RACE_WINDOW_MS = "20"


def run_holds(server: ServerProcess, workdir: Path) -> tuple[int, str, dict[str, Any]]:
    report_path = workdir / "race.json"
    run = run_headless(
        LOADTEST_DIRECTORY / "locustfile.py",
        ["-u", "6", "-r", "6", "-t", "4s", "--host", server.url, "--bank-scenario", "holds",
         "--bank-accounts", "1", "--bank-report-json", str(report_path)],
        workdir=workdir,
        deadline_seconds=LOCUST_DEADLINE_SECONDS,
    )  # fmt: skip
    assert report_path.exists(), f"no report written:\n{run.output[-3000:]}"
    return run.exit_code, run.output, json.loads(report_path.read_text())


def serve(workdir: Path, mode: str) -> ServerProcess:
    settings = {
        "BANK_LOCK_MODE": mode,
        "BANK_ALLOW_UNSAFE_MODES": "1",
        "BANK_RACE_WINDOW_MS": RACE_WINDOW_MS,
        "BANK_WORKERS": "2",
        "BANK_THREADS": "8",
    }
    workdir.mkdir(parents=True, exist_ok=True)
    return ServerProcess(workdir=workdir, settings=settings).start()


def test_unlocked_breaks_the_holds_and_the_report_and_audit_say_how(tmp_path: Path) -> None:
    server = serve(tmp_path / "server", "unlocked")
    try:
        exit_code, output, report = run_holds(server, tmp_path)
    finally:
        server.stop()
    holds = report["holds"]
    print(json.dumps({name: holds[name] for name in HOLD_FIGURES}))
    assert exit_code == 1, output[-3000:]
    assert report["verdict"] == "FAIL"
    assert report["hold_anomalies"] > 0
    # The races this load sets up: two captures of one hold, a capture with a void.
    assert holds["double_captures"] + holds["captures_after_void"] > 0, holds
    assert "FAIL" in output and "double captures:" in output
    # The server's own audit sees the holds that ended twice.
    audit = report["server_audit"]
    assert audit is not None and audit["consistent"] is False, audit


def test_locked_keeps_every_hold_invariant(tmp_path: Path) -> None:
    server = serve(tmp_path / "server", "locked")
    try:
        exit_code, output, report = run_holds(server, tmp_path)
    finally:
        server.stop()
    holds = report["holds"]
    print(json.dumps({name: holds[name] for name in HOLD_FIGURES}))
    assert exit_code == 0, output[-3000:]
    assert report["verdict"] == "PASS", report["problems"]
    assert report["hold_anomalies"] == 0
    # The load did race: the losers were refused 409 hold_not_pending, correctly.
    assert holds["captures"] > 0 and holds["voids"] > 0 and holds["not_pending_refusals"] > 0
    assert holds["lowest_available"] is not None and holds["lowest_available"] >= 0


HOLD_FIGURES = (
    "holds_placed",
    "placements_refused",
    "captures",
    "voids",
    "not_pending_refusals",
    "double_captures",
    "captures_after_void",
    "captures_after_expiry",
    "over_hold_reads",
    "lowest_available",
    "held_drift_accounts",
    "held_drift_money",
)
