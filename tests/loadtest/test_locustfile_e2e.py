"""End-to-end: the real locustfile, headless, against a real gunicorn `bankrace serve`.

Locust runs only as a subprocess (tests/support/locust_runs.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.locust_runs import LOADTEST_DIRECTORY, run_headless
from tests.support.servers import ServerProcess, free_port

pytestmark = pytest.mark.e2e

LOCUSTFILE = LOADTEST_DIRECTORY / "locustfile.py"
LOCUST_DEADLINE_SECONDS = 120
REPORT_HEADER = " bankrace race report "
RACE_WINDOW_MS = "20"


@dataclass
class LocustRun:
    exit_code: int
    output: str  # stdout and stderr
    report: dict[str, Any]


def run_locust(url: str, workdir: Path, *extra: str, users: int = 10) -> LocustRun:
    """Run the locustfile headless for 4 s from an unrelated directory; return its report."""
    report_path = workdir / f"race-{len(list(workdir.glob('race-*.json')))}.json"
    if "--processes" in extra:
        # Locust's default master port (5557) may be taken by another run on the machine.
        port = str(free_port())
        extra = (*extra, "--master-bind-port", port, "--master-port", port)
    # Past the deadline its whole process group goes, forked workers included.
    run = run_headless(
        LOCUSTFILE,
        ["-u", str(users), "-r", str(users), "-t", "4s", "--host", url,
         "--bank-report-json", str(report_path), *extra],
        workdir=workdir,
        deadline_seconds=LOCUST_DEADLINE_SECONDS,
    )  # fmt: skip
    assert report_path.exists(), f"no report written:\n{run.output[-3000:]}"
    return LocustRun(run.exit_code, run.output, json.loads(report_path.read_text()))


def start_server(workdir: Path, settings: dict[str, str]) -> ServerProcess:
    workdir.mkdir(parents=True, exist_ok=True)
    return ServerProcess(workdir=workdir, settings=settings).start()


@pytest.fixture(scope="module")
def unlocked_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = start_server(
        tmp_path_factory.mktemp("unlocked"),
        {
            "BANK_LOCK_MODE": "unlocked",
            "BANK_ALLOW_UNSAFE_MODES": "1",
            "BANK_RACE_WINDOW_MS": RACE_WINDOW_MS,
            "BANK_WORKERS": "2",
            "BANK_THREADS": "8",
        },
    )
    yield server
    server.stop()


@pytest.fixture(scope="module")
def locked_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = start_server(
        tmp_path_factory.mktemp("locked"),
        {"BANK_LOCK_MODE": "locked", "BANK_RACE_WINDOW_MS": RACE_WINDOW_MS, "BANK_WORKERS": "2"},
    )
    yield server
    server.stop()


def assert_losses_reported(run: LocustRun) -> None:
    assert run.exit_code == 1, run.output[-3000:]
    assert run.report["verdict"] == "FAIL"
    assert run.report["lost_updates"] > 0
    assert run.report["money_lost"] > 0
    assert any("lost updates" in problem for problem in run.report["problems"])
    assert "VERDICT: FAIL" in run.output
    assert f"lost updates: {run.report['lost_updates']} " in run.output


def assert_clean(run: LocustRun) -> None:
    assert run.exit_code == 0, run.output[-3000:]
    assert run.report["verdict"] == "PASS", run.report["problems"]
    assert run.report["acknowledged_operations"] > 0
    assert run.report["lost_updates"] == run.report["overdrafts"] == 0
    assert run.report["served_by_mode"].keys() == {"locked"}
    assert "VERDICT: PASS" in run.output


def test_unlocked_with_a_race_window_fails_and_names_the_lost_updates(
    unlocked_server: ServerProcess, tmp_path: Path
) -> None:
    """Unlocked + 20 ms window: lost updates are found, printed, and the exit code is 1."""
    run = run_locust(unlocked_server.url, tmp_path)
    assert_losses_reported(run)
    assert run.report["server_chain_breaks"] > 0  # the server sees it too
    assert run.output.count(REPORT_HEADER) == 1


def test_locked_passes_with_exit_code_zero(locked_server: ServerProcess, tmp_path: Path) -> None:
    """Locked mode under the same load keeps every invariant: PASS, exit code 0."""
    run = run_locust(locked_server.url, tmp_path)
    assert_clean(run)
    assert run.report["reporters"] == run.report["expected_reporters"] == 1


def test_unlocked_distributed_over_two_processes_reports_once(
    unlocked_server: ServerProcess, tmp_path: Path
) -> None:
    """--processes 2: one report on the master, built from both workers' tallies."""
    run = run_locust(unlocked_server.url, tmp_path, "--processes", "2")
    assert_losses_reported(run)
    assert run.output.count(REPORT_HEADER) == 1
    assert run.report["reporters"] == run.report["expected_reporters"] == 2


def test_locked_distributed_over_two_processes_balances_to_the_cent(
    locked_server: ServerProcess, tmp_path: Path
) -> None:
    """--processes 2 in locked mode: the merged tallies match every balance exactly.

    Had one worker's tally been lost or counted twice, expected and actual
    balances would differ and the run would fail.
    """
    run = run_locust(locked_server.url, tmp_path, "--processes", "2")
    assert_clean(run)
    assert run.output.count(REPORT_HEADER) == 1
    assert run.report["reporters"] == run.report["expected_reporters"] == 2
    assert run.report["total_actual"] == run.report["total_expected"]


@pytest.mark.parametrize(("lock_order", "deadlocks"), [("request", True), ("sorted", False)])
def test_deadlock_scenario_counts_lock_timeouts_only_with_request_order(
    tmp_path: Path, lock_order: str, deadlocks: bool
) -> None:
    """Opposing transfers deadlock (503 lock_timeout) with request lock order, never sorted."""
    server = start_server(
        tmp_path / "server",
        {
            "BANK_DATABASE_URL": "memory://",
            "BANK_WORKERS": "1",
            "BANK_TRANSFER_LOCK_ORDER": lock_order,
            # Far above the longest honest queue of 4 users x 20 ms, so that with
            # sorted order no wait runs out; a deadlock waits it out every time.
            "BANK_LOCK_TIMEOUT_MS": "1000",
            "BANK_RACE_WINDOW_MS": RACE_WINDOW_MS,
        },
    )
    try:
        run = run_locust(server.url, tmp_path, "--bank-scenario", "deadlock", users=4)
    finally:
        server.stop()
    assert run.exit_code == 0, run.output[-3000:]  # honest 503s are not anomalies
    assert run.report["scenario"] == "deadlock"
    assert len(run.report["accounts"]) == 2
    if deadlocks:
        assert run.report["lock_timeouts"] > 0
        assert run.report["lock_timeout_max_ms"] >= 1000
        assert "clients waited median" in run.output
    else:
        assert run.report["lock_timeouts"] == 0
        assert "never deadlocked" in run.output


@pytest.mark.parametrize("extra", [(), ("--processes", "2")], ids=["local", "distributed"])
def test_unreachable_service_fails_at_once(tmp_path: Path, extra: tuple[str, ...]) -> None:
    """No service: the run cannot open its accounts, says so, and exits 1 without waiting."""
    run = run_locust(f"http://127.0.0.1:{free_port()}", tmp_path, *extra)
    assert run.exit_code == 1, run.output[-3000:]
    assert run.report["problems"][0].startswith("setup failed: ConnectionError")
    assert run.output.count(REPORT_HEADER) == 1
