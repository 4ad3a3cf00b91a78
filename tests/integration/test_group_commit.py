"""The SQLite group commit: batches, savepoints, deadlines, and the bound on a batch's length.

Jobs here are tiny functions of the writer's connection that write rows of a
scratch table, so each test sees exactly what was committed.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import Connection, Engine, text

from service.domain import (
    InsufficientFunds,
    Leg,
    LockTimeout,
    OutcomeUnknown,
    StoreUnavailable,
    TransactionKind,
)
from service.schema import upgrade
from service.stores import group_commit
from service.stores.base import LegWrite, LegWriter, Written
from service.stores.engines import build_engine
from service.stores.group_commit import MAX_BATCH_SECONDS, GroupCommitter
from service.stores.sql import SqlStore
from service.stores.writer_lock import LOCK_FILE_SUFFIX, WriterLock

JOIN_DEADLINE_SECONDS = 30.0
# How long answered jobs may take to reach their threads; an unanswered one never does.
ANSWER_DEADLINE_SECONDS = 10.0


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    database = tmp_path / "scratch.db"
    sqlite3.connect(database).close()  # the service's engines open a database, never create one
    built = build_engine(f"sqlite:///{database}", lock_timeout_ms=2000, pool_size=4)
    with built.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE rows (name TEXT PRIMARY KEY)")
    yield built
    built.dispose()


@pytest.fixture
def committer(engine: Engine, tmp_path: Path) -> GroupCommitter:
    lock = WriterLock(str(tmp_path / "scratch.db"))
    return GroupCommitter(
        engine,
        prepare=lambda connection: connection.execution_options(sqlite_begin="IMMEDIATE"),
        writer_lock=lock.held,
    )


def insert(name: str) -> object:
    def work(connection: Connection) -> str:
        connection.exec_driver_sql("INSERT INTO rows (name) VALUES (?)", (name,))
        return name

    return work


def committed(engine: Engine) -> set[str]:
    with engine.connect() as connection:
        return {row[0] for row in connection.execute(text("SELECT name FROM rows"))}


def later(seconds: float = 10.0) -> float:
    return time.monotonic() + seconds


def test_a_refused_job_is_undone_alone(committer: GroupCommitter, engine: Engine) -> None:
    """A job that writes then refuses is rolled back to its savepoint; the others commit."""

    def write_then_refuse(connection: Connection) -> None:
        connection.exec_driver_sql("INSERT INTO rows (name) VALUES ('refused')")
        raise InsufficientFunds("no")

    results: list[object] = []
    errors: list[BaseException] = []
    start = threading.Barrier(3, timeout=JOIN_DEADLINE_SECONDS)

    def submit(work: object) -> None:
        start.wait()
        try:
            results.append(committer.run(work, later()))  # type: ignore[arg-type]
        except BaseException as error:  # reported to the test thread
            errors.append(error)

    threads = [
        threading.Thread(target=submit, args=(work,))
        for work in (insert("a"), write_then_refuse, insert("b"))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(JOIN_DEADLINE_SECONDS)
    assert sorted(results) == ["a", "b"]  # type: ignore[type-var]
    assert len(errors) == 1 and isinstance(errors[0], InsufficientFunds)
    assert committed(engine) == {"a", "b"}


def test_a_job_still_queued_at_its_deadline_never_runs(
    committer: GroupCommitter, engine: Engine
) -> None:
    """While the writer is busy, a job whose deadline passes is cancelled: 503, nothing written."""
    busy = threading.Event()
    release = threading.Event()

    def hold(connection: Connection) -> None:
        busy.set()
        release.wait(JOIN_DEADLINE_SECONDS)

    holder = threading.Thread(target=committer.run, args=(hold, later()))
    holder.start()
    assert busy.wait(JOIN_DEADLINE_SECONDS)
    with pytest.raises(LockTimeout):
        committer.run(insert("late"), time.monotonic() + 0.2)  # type: ignore[arg-type]
    release.set()
    holder.join(JOIN_DEADLINE_SECONDS)
    assert committer.run(insert("after"), later()) == "after"  # type: ignore[arg-type]
    assert committed(engine) == {"after"}


def wait_until_queued(committer: GroupCommitter, count: int) -> None:
    deadline = time.monotonic() + JOIN_DEADLINE_SECONDS
    while committer._queue.qsize() < count:
        assert time.monotonic() < deadline, "the job was never queued"
        time.sleep(0.001)  # polling the queue against a deadline


def test_jobs_behind_a_long_job_are_committed_in_a_later_batch(
    committer: GroupCommitter, engine: Engine
) -> None:
    """Queued in one batch behind a job that runs past MAX_BATCH_SECONDS, a job waits for the
    next batch, which starts after the long job was committed (so its request is not held)."""
    gate_open = threading.Event()
    gate_holding = threading.Event()
    seen_by_second: list[set[str]] = []

    def gate(connection: Connection) -> None:
        gate_holding.set()
        assert gate_open.wait(JOIN_DEADLINE_SECONDS)

    def slow(connection: Connection) -> str:
        connection.exec_driver_sql("INSERT INTO rows (name) VALUES ('slow')")
        time.sleep(MAX_BATCH_SECONDS * 2)  # a race window inside the batch (product behaviour)
        return "slow"

    def second(connection: Connection) -> str:
        seen_by_second.append(committed(engine))  # another connection: committed rows only
        return "second"

    threads = [threading.Thread(target=committer.run, args=(gate, later()))]
    threads[0].start()
    assert gate_holding.wait(JOIN_DEADLINE_SECONDS)
    for position, work in enumerate((slow, second), start=1):
        threads.append(threading.Thread(target=committer.run, args=(work, later())))
        threads[-1].start()
        wait_until_queued(committer, position)  # slow, then second, behind the gate
    gate_open.set()  # the next batch holds slow and second
    for thread in threads:
        thread.join(JOIN_DEADLINE_SECONDS)
    assert seen_by_second == [{"slow"}]


@pytest.mark.parametrize(
    ("error_name", "unknown"),
    [
        ("SQLITE_IOERR_FSYNC", True),  # the commit record may be in the WAL: recovery replays it
        ("SQLITE_IOERR_SHMMAP", True),
        ("SQLITE_FULL", False),  # the commit record, the last frame, was never written
        ("SQLITE_IOERR_WRITE", False),
        ("SQLITE_READONLY_DBMOVED", False),
    ],
)
def test_a_failed_commit_is_outcome_unknown_unless_sqlite_surely_wrote_nothing(
    committer: GroupCommitter,
    engine: Engine,
    monkeypatch: pytest.MonkeyPatch,
    error_name: str,
    unknown: bool,
) -> None:
    """A COMMIT failing on a failed fsync may be on disk all the same (its WAL frames were
    written): 503 outcome_unknown. One that failed writing them changed nothing: plain 503."""

    def failing_commit(_connection: object) -> None:
        error = sqlite3.OperationalError("disk I/O error")
        error.sqlite_errorname = error_name  # what sqlite3 sets on a real failure
        raise error

    monkeypatch.setattr(engine.dialect, "do_commit", failing_commit)
    with pytest.raises(StoreUnavailable) as raised:
        committer.run(insert("a"), later())  # type: ignore[arg-type]
    assert isinstance(raised.value, OutcomeUnknown) is unknown
    assert raised.value.code == ("outcome_unknown" if unknown else "store_unavailable")
    assert ("may have been applied" in raised.value.detail) is unknown
    monkeypatch.undo()
    assert committer.run(insert("b"), later()) == "b"  # type: ignore[arg-type]


class WriterHalt(BaseException):
    """Not an Exception: what `except Exception` lets through (SystemExit, a greenlet's exit)."""


def test_a_base_exception_in_one_job_still_answers_every_job_of_its_batch(
    committer: GroupCommitter, engine: Engine
) -> None:
    """A job raising a BaseException mid-batch: its own request gets that exception, the
    others of the batch are committed and answered; nobody waits forever."""
    gate_open = threading.Event()
    gate_holding = threading.Event()

    def gate(connection: Connection) -> None:
        gate_holding.set()
        assert gate_open.wait(JOIN_DEADLINE_SECONDS)

    def halt(connection: Connection) -> None:
        connection.exec_driver_sql("INSERT INTO rows (name) VALUES ('halted')")
        raise WriterHalt("the job's thread was told to stop")

    answers: dict[str, object] = {}

    def submit(name: str, work: object) -> None:
        try:
            answers[name] = committer.run(work, later())  # type: ignore[arg-type]
        except BaseException as error:  # reported to the test thread
            answers[name] = error

    threads = [threading.Thread(target=submit, args=("gate", gate), daemon=True)]
    threads[0].start()
    assert gate_holding.wait(JOIN_DEADLINE_SECONDS)
    for position, (name, work) in enumerate(
        [("a", insert("a")), ("halt", halt), ("b", insert("b"))], start=1
    ):
        threads.append(threading.Thread(target=submit, args=(name, work), daemon=True))
        threads[-1].start()
        wait_until_queued(committer, position)  # one batch behind the gate
    gate_open.set()
    for thread in threads:
        thread.join(ANSWER_DEADLINE_SECONDS)
    assert not any(thread.is_alive() for thread in threads), f"unanswered: {answers}"
    assert answers["a"] == "a" and answers["b"] == "b"
    assert isinstance(answers["halt"], WriterHalt)
    assert committed(engine) == {"a", "b"}
    assert committer.run(insert("after"), later()) == "after"  # type: ignore[arg-type]


def test_a_base_exception_around_the_batch_answers_its_jobs_and_the_writer_goes_on(
    engine: Engine, tmp_path: Path
) -> None:
    """The writer meets a BaseException outside any job (taking the lock): the batch's job is
    answered 503 (nothing was written) and the next write is served."""
    lock = WriterLock(str(tmp_path / "scratch.db"))
    halts = [WriterHalt("the writer was told to stop")]

    @contextmanager
    def halting_lock() -> Iterator[None]:
        if halts:
            raise halts.pop()
        with lock.held():
            yield

    committer = GroupCommitter(
        engine,
        prepare=lambda connection: connection.execution_options(sqlite_begin="IMMEDIATE"),
        writer_lock=halting_lock,
    )
    with pytest.raises(StoreUnavailable) as raised:
        committer.run(insert("a"), later())  # type: ignore[arg-type]
    assert not isinstance(raised.value, OutcomeUnknown)
    assert committer.run(insert("b"), later()) == "b"  # type: ignore[arg-type]
    assert committed(engine) == {"b"}
    committer.close()


def test_a_claimed_job_whose_writer_never_finishes_is_answered_outcome_unknown(
    committer: GroupCommitter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer stuck inside a job: its request still gets an answer, outcome_unknown
    (the job may yet be committed), once its deadline and the grace have passed."""
    monkeypatch.setattr(group_commit, "CLAIMED_JOB_GRACE_SECONDS", 0.1)
    stuck = threading.Event()
    release = threading.Event()

    def never_ends(connection: Connection) -> None:
        stuck.set()
        release.wait(JOIN_DEADLINE_SECONDS)

    try:
        with pytest.raises(OutcomeUnknown, match="may still be applied"):
            committer.run(never_ends, time.monotonic() + 0.1)
        assert stuck.is_set()
    finally:
        release.set()
    committer.close()


def lock_is_free(lock_path: str) -> bool:
    """Whether another open file (as another process would have) can take the writer lock now."""
    descriptor = os.open(lock_path, os.O_RDWR)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(descriptor)  # releases the probe's own lock, if it got it
    return True


def test_closing_the_writer_lock_while_it_is_held_keeps_it_until_the_holder_lets_go(
    tmp_path: Path,
) -> None:
    """close() during a holder's turn: the lock stays held (its descriptor open) until the
    holder releases it, which then succeeds; only then is the descriptor closed."""
    lock = WriterLock(str(tmp_path / "scratch.db"))
    lock_path = str(tmp_path / "scratch.db") + LOCK_FILE_SUFFIX
    holding, release = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def holder() -> None:
        try:
            with lock.held():
                holding.set()
                release.wait(JOIN_DEADLINE_SECONDS)
        except BaseException as error:  # reported to the test thread
            errors.append(error)

    thread = threading.Thread(target=holder, daemon=True)
    thread.start()
    assert holding.wait(JOIN_DEADLINE_SECONDS)
    lock.close()
    assert not lock_is_free(lock_path), "close() dropped the lock under its holder"
    release.set()
    thread.join(JOIN_DEADLINE_SECONDS)
    assert not thread.is_alive() and errors == []
    assert lock_is_free(lock_path)


def test_closing_a_sqlite_store_while_its_writer_is_busy_keeps_the_lock_and_the_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SqlStore.close() while a locked write sits in the writer (close's wait runs out first):
    the writer lock stays held until that write is done, and the write is committed."""
    database = tmp_path / "bank.db"
    url = f"sqlite:///{database}"
    upgrade(url)
    store = SqlStore(url, lock_timeout_ms=2000, pool_size=2)
    account_id = store.open_account("busy", "USD", 100, "locked").id
    monkeypatch.setattr(group_commit, "CLOSE_DEADLINE_SECONDS", 0.05)
    inside, release = threading.Event(), threading.Event()
    answers: list[object] = []

    def slow_deposit(writer: LegWriter) -> Written:
        balance = writer.read_states([account_id])[account_id].balance
        inside.set()
        release.wait(JOIN_DEADLINE_SECONDS)
        leg = Leg(account_id, TransactionKind.DEPOSIT, 5)
        return writer.write_legs([LegWrite(leg, new_balance=balance + 5)], "locked")

    def request() -> None:
        try:
            answers.append(store.exclusive([account_id], slow_deposit))
        except BaseException as error:  # reported to the test thread
            answers.append(error)

    thread = threading.Thread(target=request, daemon=True)
    thread.start()
    assert inside.wait(JOIN_DEADLINE_SECONDS)
    store.close()
    assert not lock_is_free(str(database) + LOCK_FILE_SUFFIX), "close() dropped a busy lock"
    release.set()
    thread.join(JOIN_DEADLINE_SECONDS)
    assert len(answers) == 1 and isinstance(answers[0], Written), answers
    assert lock_is_free(str(database) + LOCK_FILE_SUFFIX)
    with sqlite3.connect(database) as connection:
        (balance,) = connection.execute(
            "SELECT balance FROM accounts WHERE id = ?", (account_id,)
        ).fetchone()
    assert balance == 105
