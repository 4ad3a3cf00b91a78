"""Group commit: one writer thread per process applies queued writes in shared transactions.

Why: SQLite has one database-wide write lock. When every request thread
takes it itself (`BEGIN IMMEDIATE`), the losers sleep in SQLite's busy
handler (1, 2, 5, 10 ... 100 ms) and retry, so threads queue in convoys and
the tail latency explodes; and every commit pays its own fsync. Here the
request threads hand their write to the process's one writer, which takes
the lock once, applies every write waiting at that moment one after another
-- each in its own SAVEPOINT, so one refusal never undoes another -- and
commits them all with one fsync. Nothing is acknowledged before that commit
is durable. (TigerBeetle batches the same way; PostgreSQL's `commit_delay`
is the database-side version.)

A write is a *job*: a function of the open connection. The writer runs a
job only if its request is still waiting for it: a request whose deadline
passes while the job is queued cancels it and answers 503 (nothing
happened); once the writer has claimed a job, its request waits for the
batch's outcome, so a 503 never hides a write that was committed -- except
when the COMMIT itself fails, whose outcome SQLite cannot promise: those
jobs get 503 `outcome_unknown` (OutcomeUnknown), never "nothing changed".
Every claimed job gets an answer whatever the writer meets (a job raising
even a BaseException fails alone), and a writer that is stuck or gone holds
no request for ever: past its deadline and CLAIMED_JOB_GRACE_SECONDS, a
claimed job's request is answered `outcome_unknown`.

A job may be marked not durable (`run(..., durable=False)`: an
idempotency key's claim): a batch of such jobs only commits without an
fsync of its own, and is made durable by the next commit that has one,
before anything that depends on it is acknowledged (`_synchronous`).

What a job does inside the transaction (and so which lock mode is served)
is the caller's business; this module knows transactions, not money.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import queue
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, Generic, TypeVar

from sqlalchemy import Connection, Engine

from service.domain import DomainError, LockTimeout, OutcomeUnknown, StoreUnavailable
from service.stores.sql_errors import translated_errors
from service.stores.sqlite_files import still_current

logger = logging.getLogger(__name__)

T = TypeVar("T")

# A batch is bounded so one commit's latency stays bounded too: at most this
# many jobs wait for one fsync, and no job is started once the batch has run
# this long (a `locked` job may sleep its race window inside the batch; the
# jobs behind it are carried to the next batch, still cancellable, instead
# of waiting for every window before them to be committed).
MAX_BATCH_JOBS = 64
MAX_BATCH_SECONDS = 0.05
LOST_COMMIT_DETAIL = (
    "the database failed while committing: the operation may have been applied; "
    "repeat it with the same Idempotency-Key to learn its outcome"
)
# How long close() waits for the writer to finish what was queued.
CLOSE_DEADLINE_SECONDS = 10.0
# How long past its deadline a claimed job's request waits for the batch's
# outcome: longer than any batch (the longest race window, 5 s, plus a
# commit), so it only ever ends a wait on a writer that is stuck or gone --
# with outcome_unknown, since the job may still be committed.
CLAIMED_JOB_GRACE_SECONDS = 30.0
UNFINISHED_BATCH_DETAIL = (
    "the database did not finish this write in time: it may still be applied; "
    "repeat it with the same Idempotency-Key to learn its outcome"
)


# What SQLite answers when a COMMIT left nothing on disk for certain. The
# commit record is the last WAL frame written, so a failed write (a full disk,
# a file made read-only: SQLITE_FULL, SQLITE_IOERR_WRITE, SQLITE_READONLY_*)
# never wrote a valid one, and SQLITE_BUSY (LockTimeout) leaves the transaction
# uncommitted. Any other failure -- a failed fsync above all -- may come after
# the commit record was written: SQLite reports the error and hides the frames
# from this process, but recovery after a restart replays them unless a later
# write overwrote them first, so the outcome is unknown.
NOT_COMMITTED_SQLITE_ERRORS = (
    "SQLITE_FULL",
    "SQLITE_IOERR_WRITE",
    "SQLITE_READONLY",
    "SQLITE_BUSY",
)


# PRAGMA synchronous levels (https://sqlite.org/pragma.html#pragma_synchronous).
SYNCHRONOUS_NORMAL = 1


def _relaxable_level(connection: Connection) -> int | None:
    """The connection's synchronous level if a batch may drop to NORMAL; else None.

    Only in WAL mode: with a rollback journal, NORMAL can corrupt the database
    in a power cut, and a later commit's fsync covers nothing of an earlier one.
    """
    cursor = connection.connection.cursor()
    try:
        journal = str(cursor.execute("PRAGMA journal_mode").fetchone()[0]).lower()
        level = int(cursor.execute("PRAGMA synchronous").fetchone()[0])
    finally:
        cursor.close()
    return level if journal == "wal" and level > SYNCHRONOUS_NORMAL else None


def _certainly_not_committed(error: BaseException) -> bool:
    """Whether a failed COMMIT, as translated_errors raised it, surely left nothing behind."""
    if isinstance(error, LockTimeout):
        return True
    cause = error.__cause__
    name = getattr(getattr(cause, "orig", cause), "sqlite_errorname", "")
    return isinstance(name, str) and name.startswith(NOT_COMMITTED_SQLITE_ERRORS)


class _State(enum.Enum):
    QUEUED = "queued"
    CLAIMED = "claimed"
    CANCELLED = "cancelled"


class Job(Generic[T]):
    """One request's write, waiting for the writer."""

    def __init__(
        self, work: Callable[[Connection], T], deadline: float, *, durable: bool = True
    ) -> None:
        self.work = work
        self.deadline = deadline
        #: False: the write may wait for a later commit's fsync (see `run`).
        self.durable = durable
        self._state = _State.QUEUED
        self._state_guard = threading.Lock()
        # Held until the job is answered; the request waits by acquiring it. A bare
        # lock is one C call each way, where an Event's Condition runs Python code
        # on both threads (profiled: the hand-off was a fifth of the writer's time).
        self._unanswered = threading.Lock()
        self._unanswered.acquire()
        self._answered = False
        self._result: T | None = None
        self._error: BaseException | None = None

    def claim(self) -> bool:
        """The writer takes the job, unless its request gave up first."""
        with self._state_guard:
            if self._state is _State.QUEUED:
                self._state = _State.CLAIMED
                return True
            return False

    def cancel(self) -> bool:
        """The request gives up, unless the writer already took the job."""
        with self._state_guard:
            if self._state is _State.QUEUED:
                self._state = _State.CANCELLED
                return True
            return False

    def succeed(self, result: T) -> None:
        self._answer(result, None)

    def fail(self, error: BaseException) -> None:
        self._answer(None, error)

    def _answer(self, result: T | None, error: BaseException | None) -> None:
        """The first answer stands; the request is woken once."""
        with self._state_guard:
            if self._answered:
                return
            self._answered = True
        self._result, self._error = result, error
        self._unanswered.release()

    def answer_if_unanswered(self) -> None:
        """The writer's last resort: a job it can no longer finish still gets an answer."""
        if self._answered:
            return
        if self.claim():  # never ran: nothing of it was written
            self.fail(StoreUnavailable("the database writer failed; nothing changed"))
        else:  # it ran, or was running: it may be committed
            self.fail(OutcomeUnknown(UNFINISHED_BATCH_DETAIL))

    def outcome(self) -> T:
        """Wait for the job: until its deadline while queued, for the batch once claimed.

        The batch decides a claimed job (a 503 must never hide a committed
        write), but a writer that is stuck or gone cannot hold the request
        for ever: after CLAIMED_JOB_GRACE_SECONDS more, outcome_unknown.
        """
        if not self._unanswered.acquire(timeout=max(0.0, self.deadline - time.monotonic())):
            if self.cancel():
                raise LockTimeout("the write waited too long for the database; nothing changed")
            if not self._unanswered.acquire(timeout=CLAIMED_JOB_GRACE_SECONDS):
                raise OutcomeUnknown(UNFINISHED_BATCH_DETAIL)
        if self._error is not None:
            raise self._error
        return self._result  # type: ignore[return-value]


class GroupCommitter:
    """The process's one writer: a thread started on first use (after gunicorn forks)."""

    def __init__(
        self,
        engine: Engine,
        *,
        prepare: Callable[[Connection], None],
        writer_lock: Callable[[], AbstractContextManager[None]],
    ) -> None:
        self._engine = engine
        self._prepare = prepare  # per-dialect set-up of the connection (BEGIN IMMEDIATE)
        self._writer_lock = writer_lock  # taken around each batch, across processes
        # Jobs, and None once: the writer's signal to stop (close()).
        self._queue: queue.SimpleQueue[Job[Any] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._closed = False
        # The writer keeps one connection (no pool round trip per batch); a
        # batch that fails drops it, and the next batch opens a fresh one.
        self._connection: Connection | None = None
        # The connection's own synchronous level (engines.py sets FULL), and whether
        # its journal lets a commit skip the fsync safely (WAL only); see `_synchronous`.
        self._full_sync: int | None = None
        self._sync_now: int | None = None
        self._start_guard = threading.Lock()

    def run(self, work: Callable[[Connection], T], deadline: float, *, durable: bool = True) -> T:
        """Run `work` in the writer's next transaction; its result once committed.

        `durable=False` is for a write whose loss in a power cut is harmless
        as long as every later acknowledged write implies it (an idempotency
        key's claim): a batch of such jobs only is committed without its own
        fsync, on a WAL database only (see `_synchronous`).
        """
        if self._closed:
            raise StoreUnavailable("the store is closed")
        job: Job[T] = Job(work, deadline, durable=durable)
        self._ensure_started()
        self._queue.put(job)
        return job.outcome()

    def close(self) -> None:
        """Stop the writer once the jobs already queued are done; its connection closes."""
        self._closed = True
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(CLOSE_DEADLINE_SECONDS)

    def _ensure_started(self) -> None:
        if self._thread is not None:
            return
        with self._start_guard:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._serve, name="bankrace-group-commit", daemon=True
                )
                self._thread.start()

    def _serve(self) -> None:
        carried: list[Job[Any]] = []
        stopping = False
        while carried or not stopping:
            batch = list(carried)
            while len(batch) < MAX_BATCH_JOBS and not stopping:
                try:
                    item = self._queue.get_nowait() if batch else self._queue.get()
                except queue.Empty:
                    break
                if item is None:
                    stopping = True
                else:
                    batch.append(item)
            try:
                carried = self._apply(batch) if batch else []
            except BaseException:  # never let the writer die: every request would hang
                logger.exception("group commit writer failed a batch")
                for job in batch:
                    job.answer_if_unanswered()
                carried = []
        self._drop_connection()

    def _apply(self, batch: list[Job[Any]]) -> list[Job[Any]]:
        """Run and commit what fits in one batch; the jobs left for the next one."""
        claimed: list[Job[Any]] = []
        outcomes: list[tuple[bool, Any]] = []
        left: list[Job[Any]] = []
        committing = False
        try:
            with translated_errors(), self._writer_lock():
                connection = self._open_connection()
                cursor = connection.connection.cursor()
                self._synchronous(cursor, durable=any(job.durable for job in batch))
                self._begin(connection, cursor)  # takes the database's write lock
                started = time.monotonic()
                for position, job in enumerate(batch):
                    if claimed and time.monotonic() - started > MAX_BATCH_SECONDS:
                        left = batch[position:]
                        break
                    if job.claim():
                        claimed.append(job)
                        outcomes.append(self._run_in_savepoint(connection, cursor, job))
                committing = True
                self._engine.dialect.do_commit(connection.connection)
        except BaseException as error:  # whatever the writer meets, every job gets an answer
            self._drop_connection()
            # Before COMMIT, nothing of this batch was committed: every job fails the same way.
            if not isinstance(error, DomainError):
                logger.error("group commit of %d writes failed: %r", len(claimed), error)
                error = StoreUnavailable("the database failed to commit; nothing changed")
            maybe_committed: set[Job[Any]] = set()
            if committing and not _certainly_not_committed(error):
                logger.warning(
                    "the COMMIT of %d writes failed, outcome unknown: %r",
                    len(claimed),
                    error.__cause__,
                )
                maybe_committed = {
                    job for job, (succeeded, _) in zip(claimed, outcomes, strict=True) if succeeded
                }
            for job in batch:
                if job in maybe_committed:
                    job.fail(OutcomeUnknown(LOST_COMMIT_DETAIL))
                elif job in claimed or job.claim():
                    job.fail(error)
            return []
        for job, (succeeded, value) in zip(claimed, outcomes, strict=True):
            if succeeded:
                job.succeed(value)
            else:
                job.fail(value)
        return left

    def _open_connection(self) -> Connection:
        if self._connection is not None and not still_current(self._connection):
            # Its database file was deleted, replaced or opened read-only: writing
            # there would acknowledge writes the path no longer leads to.
            self._drop_connection(invalidate=True)
        if self._connection is None:
            self._connection = self._engine.connect()
            self._prepare(self._connection)
            self._full_sync = self._sync_now = _relaxable_level(self._connection)
        return self._connection

    @staticmethod
    def _begin(connection: Connection, cursor: Any) -> None:
        """BEGIN IMMEDIATE, on the driver's cursor once SQLAlchemy believes a transaction open.

        The writer's connection opens SQLAlchemy's transaction once (its first
        batch: the engine's `begin` hook sends the BEGIN) and never ends it:
        each batch's COMMIT goes to the driver (`_apply`), the next BEGIN too,
        and the jobs' SQLAlchemy statements run in that transaction without
        an autobegin. SQLAlchemy's begin and commit cost a fifth of the
        writer's time per batch (profiled). A batch that fails drops the
        connection: closing it rolls back whatever is open.
        """
        if connection.in_transaction():
            cursor.execute("BEGIN IMMEDIATE")
        else:
            connection.begin()

    def _synchronous(self, cursor: Any, *, durable: bool) -> None:
        """The batch's sync level, set before its BEGIN (SQLite refuses it inside one).

        A batch of non-durable jobs only (claims) commits with
        synchronous=NORMAL: its WAL frames are written, not fsynced. That is
        safe on a WAL database because the WAL is appended in order and each
        frame's checksum covers every frame before it (SQLite's file format:
        recovery keeps a prefix of the log), and a FULL commit fsyncs the
        whole WAL file, frames of earlier commits included -- whichever
        connection or process makes it. So a relaxed commit is durable no
        later than the next acknowledged one, and a power cut can lose it
        only together with every commit after it. Any other batch keeps the
        connection's own level (FULL). A crash of the process loses nothing
        either way: the frames are in the operating system's hands.
        """
        if self._full_sync is None:
            return  # not WAL, or already at NORMAL or below: nothing to relax
        wanted = self._full_sync if durable else SYNCHRONOUS_NORMAL
        if wanted != self._sync_now:
            cursor.execute(f"PRAGMA synchronous={int(wanted)}")
            self._sync_now = wanted

    def _drop_connection(self, *, invalidate: bool = False) -> None:
        if self._connection is not None:
            # A relaxed connection never goes back to the pool: another user of it
            # would commit without the fsync it expects.
            invalidate = invalidate or self._sync_now != self._full_sync
            with contextlib.suppress(Exception):
                if invalidate:  # closed for good, not handed back to the pool
                    self._connection.invalidate()
                self._connection.close()
            self._connection = None
            self._full_sync = self._sync_now = None

    @staticmethod
    def _run_in_savepoint(connection: Connection, cursor: Any, job: Job[Any]) -> tuple[bool, Any]:
        """One job in its own SAVEPOINT: a refusal (or a bug) undoes that job only.

        Whatever the job raises, BaseException included, goes back to the
        job's own request, as if the job had run in its thread, and the
        batch goes on (a job that escaped here would leave the batch's other
        claimed jobs unanswered).

        The savepoints go through the driver's cursor, like the jobs' own
        statements: SQLAlchemy's nested-transaction bookkeeping cost more than
        the job (profiled), and nothing else on this connection uses it.
        """
        cursor.execute("SAVEPOINT job")
        try:
            with translated_errors():
                result = job.work(connection)
        except BaseException as refusal:
            cursor.execute("ROLLBACK TO SAVEPOINT job")
            cursor.execute("RELEASE SAVEPOINT job")
            return False, refusal
        cursor.execute("RELEASE SAVEPOINT job")
        return True, result
