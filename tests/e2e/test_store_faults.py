"""The store breaks under a running `bankrace serve` (2 workers) in the middle of a write load.

Four faults, each injected while client threads send deposits and
transfers, then removed (docs/faults.md):

- the SQLite file and its WAL made read-only (`chattr +i` on a file system of
  the test's own: root ignores chmod, see tests/support/filesystems.py);
- its disk full (a 16 MiB ext4 the test fills up);
- the file deleted (the database, its WAL and shared-memory files unlinked,
  hard links kept aside so the "restore" puts the very same files back);
- PostgreSQL cut mid-load through the project's TCP proxy, then restored.

During each fault every write must be answered 503 `store_unavailable` with
Retry-After -- never a 500, never an answer later than the lock timeout
(plus a margin for the request itself on a loaded machine) -- and once the
fault is removed the service must serve again by itself, without a restart:
the load runs until SERVED_IN_A_ROW requests in a row, through both workers,
were served. Afterwards every acknowledged (201) request must be in the
journal, no refused one may be, and /audit must be consistent.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

from tests.support.fault_load import OPENING_BALANCE, FaultLoad, FaultReport
from tests.support.filesystems import fill, immutable, small_file_system
from tests.support.load import audit_of, open_account
from tests.support.postgres import server_behind_proxy
from tests.support.servers import ServerProcess

pytestmark = pytest.mark.e2e

LOCK_TIMEOUT_MS = 2000
# The longest a request may wait during a fault: the lock timeout, plus the
# request's own work and a loaded 2-core machine's scheduling (the margin of
# tests/e2e/test_lock_wait.py); far below the clients' own 20 s timeout.
WAIT_BOUND_SECONDS = LOCK_TIMEOUT_MS / 1000 + 2.0
ACCOUNTS = 4
WARM_UP_ACKNOWLEDGED = 20
FAULT_MIN_SECONDS = 2.0
REFUSALS_TO_SEE = 5
FAULT_DEADLINE_SECONDS = 10.0
RECOVERY_DEADLINE_SECONDS = 15.0
# Served again, for good: this many requests in a row (by start, each on a new
# connection, so through both workers) answered 201 after the repair.
SERVED_IN_A_ROW = 20
WORKER_REPLACED_DEADLINE_SECONDS = 20.0
SMALL_FILE_SYSTEM_MEBIBYTES = 16
# outcome_unknown: a write whose COMMIT was lost with the connection (it may have been applied).
HONEST_CODES = {"store_unavailable", "outcome_unknown"}


def sqlite_server(workdir: Path, database: Path) -> ServerProcess:
    return ServerProcess(
        workdir=workdir,
        settings={
            "BANK_DATABASE_URL": f"sqlite:///{database}",
            "BANK_WORKERS": "2",
            "BANK_LOCK_TIMEOUT_MS": str(LOCK_TIMEOUT_MS),
        },
    )


@contextmanager
def running(server: ServerProcess) -> Iterator[ServerProcess]:
    server.start()
    try:
        yield server
    finally:
        server.stop()


def readiness(url: str) -> int:
    return requests.get(f"{url}/readyz", timeout=10).status_code


def replace_a_worker(server: ServerProcess) -> None:
    """SIGTERM one worker (it finishes its requests); wait for gunicorn's replacement."""
    assert server.process is not None
    master = server.process.pid
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    before = server.read_log().count("bankrace: worker ")
    os.kill(int(children[0]), signal.SIGTERM)
    deadline = time.monotonic() + WORKER_REPLACED_DEADLINE_SECONDS
    while server.read_log().count("bankrace: worker ") == before:
        assert time.monotonic() < deadline, "no worker replaced the stopped one"
        time.sleep(0.05)  # polling interval, not synchronisation


def run_fault(
    name: str, url: str, inject: Callable[[], None], repair: Callable[[], None]
) -> FaultReport:
    """Load, fault, repair, load: every request's fate, checked against the journal."""
    accounts = [open_account(url, OPENING_BALANCE, owner=name) for _ in range(ACCOUNTS)]
    with FaultLoad(url, accounts) as load:
        assert load.wait_for(0.0, 201, WARM_UP_ACKNOWLEDGED, FAULT_DEADLINE_SECONDS)
        load.mark_fault()
        inject()
        felt = load.wait_for(
            load.fault_started or 0.0, 503, REFUSALS_TO_SEE, FAULT_DEADLINE_SECONDS
        )
        ready_during_fault = readiness(url)
        while time.monotonic() < (load.fault_started or 0.0) + FAULT_MIN_SECONDS:
            time.sleep(0.05)  # polling until the fault has lasted its minimum, not synchronisation
        repair()
        load.mark_repair()
        repaired = load.fault_removed or 0.0
        steady = poll_until(
            lambda: served_in_a_row(load, repaired) >= SERVED_IN_A_ROW, RECOVERY_DEADLINE_SECONDS
        )
    first_served = min(
        (
            item.finished or 0.0
            for item in load.sent
            if item.started >= repaired and item.status == 201
        ),
        default=None,
    )
    report = FaultReport(
        name,
        load.sent,
        load.fault_started or 0.0,
        repaired,
        None if first_served is None else first_served - repaired,
    )
    report.check_journal(url)
    refused_after_repair = [
        item for item in load.sent if item.started >= repaired and item.status != 201
    ]
    last_refused = max((item.started - repaired for item in refused_after_repair), default=None)
    print(
        f"\n{report.summary()}; /readyz during the fault: {ready_during_fault}; "
        f"after the repair {len(refused_after_repair)} refused"
        + ("" if last_refused is None else f", the last sent {last_refused:.2f} s after it")
    )
    assert felt, f"{name}: the fault was never felt ({report.fault_codes})"
    assert steady, f"{name}: not {SERVED_IN_A_ROW} served in a row: {report.summary()}"
    return report


def served_in_a_row(load: FaultLoad, since: float) -> int:
    """How many of the latest answered requests started after `since` were all served (201)."""
    answered = sorted(
        (item for item in list(load.sent) if item.started >= since and item.status is not None),
        key=lambda item: item.started,
    )
    streak = 0
    for item in reversed(answered):
        if item.status != 201:
            break
        streak += 1
    return streak


def poll_until(check: Callable[[], bool], deadline_seconds: float) -> bool:
    """Poll `check` until it holds (True) or the deadline passes (False)."""
    deadline = time.monotonic() + deadline_seconds
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)  # polling interval, not synchronisation
    return True


def assert_answered_honestly(report: FaultReport, url: str) -> None:
    """503 store_unavailable with Retry-After, in time; recovered; nothing lost or half-done."""
    assert report.server_errors == [], report.server_errors[:5]
    assert report.unanswered == [], report.unanswered[:5]
    refused = {item.code for item in report.during_fault if item.status != 201}
    assert refused <= HONEST_CODES, report.fault_codes
    assert report.max_fault_latency_seconds <= WAIT_BOUND_SECONDS, report.summary()
    assert report.recovered_after_seconds is not None, report.summary()
    assert report.missing_acknowledged == [], report.missing_acknowledged[:5]
    assert report.applied_refusals == [], report.applied_refusals[:5]
    audit = audit_of(url)
    assert audit["consistent"] is True and audit["drift"] == 0, audit


def test_a_read_only_database_file(tmp_path: Path) -> None:
    """chattr +i on the SQLite file and its WAL: 503 store_unavailable; chattr -i: served again.

    A worker replaced during the fault opens its connections while the files
    are read-only (SQLite then opens them read-only for good): it must serve
    again once they are writable, like the worker whose connections are older.
    """
    with small_file_system(tmp_path, SMALL_FILE_SYSTEM_MEBIBYTES) as mounted:
        database = mounted / "bank.db"
        files = (database, Path(f"{database}-wal"))
        with running(sqlite_server(tmp_path, database)) as server:

            def make_read_only() -> None:
                immutable(*files, on=True)
                replace_a_worker(server)

            report = run_fault(
                "read-only file",
                server.url,
                inject=make_read_only,
                repair=lambda: immutable(*files, on=False),
            )
            assert_answered_honestly(report, server.url)


def test_a_full_disk(tmp_path: Path) -> None:
    """The file system holding the database filled up: 503; space freed: served again."""
    with small_file_system(tmp_path, SMALL_FILE_SYSTEM_MEBIBYTES) as mounted:
        database = mounted / "bank.db"
        filler: list[Path] = []
        with running(sqlite_server(tmp_path, database)) as server:
            report = run_fault(
                "disk full",
                server.url,
                inject=lambda: filler.append(fill(mounted)),
                repair=lambda: filler[0].unlink(),
            )
            assert_answered_honestly(report, server.url)


@pytest.mark.parametrize("what", ["file", "folder"])
def test_a_deleted_database(tmp_path: Path, what: str) -> None:
    """The database files (or their whole folder) deleted: 503, no write acknowledged into the
    void; the same files restored: served again.

    A server that kept writing into the unlinked file would acknowledge writes
    that vanish at its next restart. Hard links kept aside let the test put
    the same files back, as an operator restoring them would.
    """
    with small_file_system(tmp_path, SMALL_FILE_SYSTEM_MEBIBYTES) as mounted:
        folder = mounted / "var"
        folder.mkdir()
        database = folder / "bank.db"
        rescue = mounted / "rescue"
        rescue.mkdir()
        deleted_at: list[float] = []
        restoring_at: list[float] = []
        names: list[str] = []

        def delete() -> None:
            names.extend(path.name for path in folder.iterdir())  # -wal, -shm, the writer lock
            for name in names:
                os.link(folder / name, rescue / name)
            if what == "folder":
                shutil.rmtree(folder)
            else:
                for name in names:
                    os.unlink(folder / name)
            deleted_at.append(time.monotonic())

        def restore() -> None:
            restoring_at.append(time.monotonic())
            assert not database.exists(), "a new database was made in the deleted one's place"
            folder.mkdir(exist_ok=True)
            # The database file last: once it is back, a worker may open it at once, and
            # SQLite would make a new -shm (or -wal) if the old ones were not there yet.
            for name in sorted(names, key=lambda name: name == database.name):
                os.link(rescue / name, folder / name)
                os.unlink(rescue / name)

        with running(sqlite_server(tmp_path, database)) as server:
            report = run_fault(f"deleted {what}", server.url, inject=delete, repair=restore)
            # Sent after the files were gone and answered before they were back.
            acknowledged_into_the_void = [
                item
                for item in report.sent
                if item.status == 201
                and item.started > deleted_at[0]
                and (item.finished or 0.0) < restoring_at[0]
            ]
            assert acknowledged_into_the_void == [], acknowledged_into_the_void[:5]
            assert_answered_honestly(report, server.url)


@pytest.mark.postgres
def test_postgresql_cut_mid_load(tmp_path: Path) -> None:
    """Every connection to PostgreSQL cut under load: 503; the path restored: served again."""
    settings = {"BANK_WORKERS": "2", "BANK_LOCK_TIMEOUT_MS": str(LOCK_TIMEOUT_MS)}
    with server_behind_proxy(tmp_path, settings) as (server, proxy):
        report = run_fault("PostgreSQL cut", server.url, inject=proxy.cut, repair=proxy.restore)
        assert_answered_honestly(report, server.url)
