"""The Jepsen-style bank test against real servers: safe modes keep the books, `unlocked` does not.

Writers transfer at random between a few accounts while readers check every
snapshot read (GET /balances) sums to the opening total with no balance below
zero, and a nemesis SIGKILLs and SIGSTOPs gunicorn workers and, on
PostgreSQL, cuts the database's connections through a TCP proxy. The same
checker that finds nothing wrong in `locked`, `atomic` and `optimistic` finds
the lost money of `unlocked` with a race window: that is how the test shows
it can fail. Each run is bounded (a few seconds) and prints its figures.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import requests

from loadtest.jepsen_bank import WorkloadOptions, run_workload
from loadtest.jepsen_checker import Report, check, render
from loadtest.jepsen_history import History, load
from loadtest.jepsen_nemesis import Nemesis, child_pids
from loadtest.service_process import REPOSITORY_ROOT
from tests.support.postgres import proxied_database
from tests.support.servers import ServerProcess
from tests.support.tcp_proxy import TcpProxy

pytestmark = pytest.mark.e2e

RUN_SECONDS = 5.0
UNSAFE_RUN_SECONDS = 3.0
NEMESIS_INTERVAL_SECONDS = 0.6
PAUSE_SECONDS = 0.4
CUT_SECONDS = 0.4
# Lock waits behind a paused worker end well within a client's timeout.
LOCK_TIMEOUT_MS = 1500
RECOVERY_SECONDS = 30.0
POLL_SECONDS = 0.1
# A run too small to mean anything fails instead of passing quietly.
MIN_READS_CHECKED = 50
MIN_TRANSFERS_OK = 30
OPTIONS = WorkloadOptions(
    accounts=5,
    opening_balance=100,
    writers=4,
    readers=2,
    duration_seconds=RUN_SECONDS,
    max_amount=5,
    request_timeout_seconds=3.0,
    retry_attempts=3,
    seed=11,
)


@contextmanager
def bank_server(
    workdir: Path, backend: str, lock_mode: str, race_window_ms: int = 0
) -> Iterator[tuple[ServerProcess, TcpProxy | None]]:
    """`bankrace serve` (2 workers x 4 threads); on PostgreSQL behind a cuttable proxy."""
    with ExitStack() as stack:
        proxy = None
        if backend == "sqlite":
            database_url = f"sqlite:///{workdir / 'bank.db'}"
        else:
            database_url, proxy = stack.enter_context(proxied_database())
        server = ServerProcess(
            workdir=workdir,
            settings={
                "BANK_DATABASE_URL": database_url,
                "BANK_LOCK_MODE": lock_mode,
                "BANK_RACE_WINDOW_MS": str(race_window_ms),
                "BANK_ALLOW_UNSAFE_MODES": "1",
                "BANK_WORKERS": "2",
                "BANK_THREADS": "4",
                "BANK_LOCK_TIMEOUT_MS": str(LOCK_TIMEOUT_MS),
            },
        )
        stack.callback(server.stop)
        server.start()
        yield server, proxy


def run(
    server: ServerProcess, proxy: TcpProxy | None, options: WorkloadOptions = OPTIONS
) -> tuple[History, Report]:
    assert server.process is not None
    faults = ["kill", "pause"] + (["cut"] if proxy is not None else [])
    nemesis = Nemesis(
        faults,
        master_pid=server.process.pid,
        proxy=proxy,
        interval_seconds=NEMESIS_INTERVAL_SECONDS,
        pause_seconds=PAUSE_SECONDS,
        cut_seconds=CUT_SECONDS,
        seed=options.seed,
    )
    history = run_workload(server.url, options, nemesis)
    report = check(history.to_dict())
    mode = history.metadata["mode"]
    print(f"\n[{mode['lock_mode']}, race window {mode['race_window_ms']} ms]\n{render(report)}")
    return history, report


def wait_for_workers(server: ServerProcess, count: int) -> None:
    """gunicorn has replaced every killed worker (polled against a deadline)."""
    assert server.process is not None
    deadline = time.monotonic() + RECOVERY_SECONDS
    while len(child_pids(server.process.pid)) != count:
        assert time.monotonic() < deadline, "gunicorn did not get back to its workers"
        time.sleep(POLL_SECONDS)  # polling interval, not synchronisation


def server_audit(server: ServerProcess) -> dict[str, Any]:
    response = requests.get(f"{server.url}/audit", timeout=30)
    assert response.status_code == 200, response.text
    audit: dict[str, Any] = response.json()
    return audit


def assert_books_kept(server: ServerProcess, report: Report, faults: tuple[str, ...]) -> None:
    assert report.valid, report.problems
    assert report.wrong_totals == 0 and report.negative_balances == 0
    assert report.final.total == report.expected_total
    assert report.reads_checked >= MIN_READS_CHECKED
    assert report.outcomes["transfer"].get("ok", 0) >= MIN_TRANSFERS_OK
    assert all(report.faults[fault] >= 1 for fault in faults), report.faults
    # A 500 is a bug, whatever the fault: only "no answer" and honest 503s are allowed.
    assert not [error for error in report.errors if ": 500" in error], report.errors
    wait_for_workers(server, 2)
    assert server_audit(server)["consistent"] is True


@pytest.mark.parametrize(
    ("backend", "lock_mode"),
    [
        ("sqlite", "locked"),
        pytest.param("postgres", "locked", marks=pytest.mark.postgres),
        pytest.param("postgres", "optimistic", marks=pytest.mark.postgres),
    ],
)
def test_safe_modes_keep_the_total_under_faults(
    tmp_path: Path, backend: str, lock_mode: str
) -> None:
    """Kills, pauses (and cuts on PostgreSQL): every snapshot adds up, the final read reconciles."""
    with bank_server(tmp_path, backend, lock_mode) as (server, proxy):
        _history, report = run(server, proxy)
        faults = ("kill", "pause", "cut") if proxy else ("kill", "pause")
        assert_books_kept(server, report, faults)


def test_unlocked_with_a_race_window_loses_money_and_the_checker_says_so(tmp_path: Path) -> None:
    """The same workload and checker on `unlocked` (20 ms window): wrong totals, invalid run."""
    options = replace(OPTIONS, duration_seconds=UNSAFE_RUN_SECONDS)
    with bank_server(tmp_path, "sqlite", "unlocked", race_window_ms=20) as (server, proxy):
        _history, report = run(server, proxy, options)
    assert not report.valid
    assert report.wrong_totals > 0
    assert report.final.total != report.expected_total or report.final.explained is False


def test_the_command_line_runs_atomic_under_faults_and_saves_a_checkable_history(
    tmp_path: Path,
) -> None:
    """`python -m loadtest.jepsen_bank --serve` (atomic, SQLite): exit 0, and the stand-alone
    checker prints, from the saved history, the very report the run printed."""
    history_path = tmp_path / "history.json"
    command = [
        sys.executable,
        "-m",
        "loadtest.jepsen_bank",
        "--serve",
        "--lock-mode=atomic",
        f"--duration={RUN_SECONDS}",
        f"--nemesis-interval={NEMESIS_INTERVAL_SECONDS}",
        f"--pause-seconds={PAUSE_SECONDS}",
        "--seed=5",
        f"--history={history_path}",
    ]
    environment = {key: value for key, value in os.environ.items() if not key.startswith("BANK_")}
    finished = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=120,
        env=environment,
        cwd=REPOSITORY_ROOT,
        check=False,
    )
    print(f"\n[atomic, command line]\n{finished.stdout}")
    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert "jepsen bank: VALID" in finished.stdout
    report = check(load(history_path))
    assert report.valid and report.wrong_totals == 0
    assert report.faults["kill"] >= 1 and report.faults["pause"] >= 1
    assert report.reads_checked >= MIN_READS_CHECKED
    checker = subprocess.run(
        [sys.executable, "-m", "loadtest.jepsen_checker", str(history_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert checker.returncode == 0, checker.stdout
    assert checker.stdout.strip() == printed_report(finished.stdout)


def printed_report(output: str) -> str:
    """The report a jepsen_bank run printed: from its verdict line up to the history's path."""
    lines = output.strip().splitlines()
    first = next(n for n, line in enumerate(lines) if line.startswith("jepsen bank: "))
    last = next(n for n, line in enumerate(lines) if line.startswith("history: "))
    return "\n".join(lines[first:last])
