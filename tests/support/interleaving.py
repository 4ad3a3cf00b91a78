"""Hold one operation in its read-to-write gap while another runs: a mode switch in flight.

After `PUT /mode` each worker serves the old mode for a moment, so two safe
modes meet on one account. `interleave` plays that meeting on purpose: the
first operation runs with the marker race window `HOLD_MARKER_MS`, and the
gate that replaces `service.modes.pause_in_race_window` (the one place
every mode pauses between its read and its write) holds it there; the second
operation runs until it is done or provably waiting for the first one's
lock; then the first is let go. No sleeps: each step waits on the event
itself (the gate reached, a thread done, a lock wait seen) with a deadline.

`WaitProbe` is how "provably waiting" is seen on each store: a second user
of an in-memory row lock, a write queued behind SQLite's busy group-commit
writer, a PostgreSQL backend waiting on a lock.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from service import modes
from service.stores.base import Store
from service.stores.memory import MemoryStore
from service.stores.sql import SqlStore

# A race window no test uses otherwise (the product's maximum is 5000 ms):
# the gate holds an operation run with it instead of sleeping.
HOLD_MARKER_MS = 4999
STEP_DEADLINE_SECONDS = 10.0
POLL_SECONDS = 0.001


class GapGate:
    """Holds the first pause of the marker window until `release()`; other pauses as usual."""

    def __init__(self, pause: Callable[[int], None]) -> None:
        self._pause = pause
        self._guard = threading.Lock()
        self._held_once = False
        self.reached = threading.Event()
        self._released = threading.Event()

    def arm(self) -> None:
        with self._guard:
            self._held_once = False
            self.reached.clear()
            self._released.clear()

    def release(self) -> None:
        self._released.set()

    def pause(self, race_window_ms: int) -> None:
        if race_window_ms != HOLD_MARKER_MS:
            self._pause(race_window_ms)
            return
        with self._guard:
            first, self._held_once = not self._held_once, True
        if first:  # an optimistic retry pauses again: only the first is held
            self.reached.set()
            if not self._released.wait(STEP_DEADLINE_SECONDS):
                raise RuntimeError("the held operation was never released")


def install_gate(monkeypatch: pytest.MonkeyPatch) -> GapGate:
    gate = GapGate(modes.pause_in_race_window)
    monkeypatch.setattr(modes, "pause_in_race_window", gate.pause)
    return gate


class WaitProbe:
    """Whether some request is waiting for a lock held by another, on one store."""

    def __init__(self, store: Store, postgres_url: str | None = None) -> None:
        self._store = store
        self._engine = (
            create_engine(postgres_url, poolclass=NullPool) if postgres_url is not None else None
        )

    def someone_waits(self) -> bool:
        # Instrumentation: the stores offer no public view of who waits, so
        # this reads their internals (the row locks, the writer's queue).
        store = self._store
        if isinstance(store, MemoryStore):  # a row lock with a holder and a waiter
            row_locks = store._row_locks
            with row_locks._guard:
                return any(entry.users > 1 for entry in row_locks._locks.values())
        if self._engine is not None:
            with self._engine.connect() as connection:
                waiting = connection.execute(
                    text(
                        "SELECT count(*) FROM pg_stat_activity"
                        " WHERE datname = current_database() AND wait_event_type = 'Lock'"
                    )
                ).scalar_one()
            return bool(waiting)
        assert isinstance(store, SqlStore) and store._committer is not None
        # The writer is held in the first operation's job: a queued job waits for it.
        return not store._committer._queue.empty()

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()


@dataclass
class Outcome:
    """What one operation answered: its result, or what it raised."""

    result: object = None
    raised: BaseException | None = None


class _Runner(threading.Thread):
    def __init__(self, operation: Callable[[], object]) -> None:
        super().__init__(daemon=True)
        self._operation = operation
        self.outcome = Outcome()
        self.finished = threading.Event()

    def run(self) -> None:
        try:
            self.outcome.result = self._operation()
        except BaseException as error:  # handed to the test thread
            self.outcome.raised = error
        finally:
            self.finished.set()


def _wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + STEP_DEADLINE_SECONDS
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {STEP_DEADLINE_SECONDS} s for {what}")
        time.sleep(POLL_SECONDS)  # a poll of the observable state, not a synchronisation


def interleave(
    first: Callable[[], object],
    second: Callable[[], object],
    gate: GapGate,
    probe: WaitProbe | None = None,
) -> tuple[Outcome, Outcome, bool]:
    """Run `first` (with the marker window) up to its gap, `second` meanwhile, then both out.

    With a `probe`, the first operation holds a store lock in its gap
    (`locked`), so the second may wait for it instead of finishing: the
    first is let go as soon as that wait is seen. Returns both outcomes and
    whether the first was really held in its gap (a refusal before the gap
    is not).
    """
    gate.arm()
    held, other = _Runner(first), _Runner(second)
    held.start()
    try:
        _wait_for(lambda: gate.reached.is_set() or held.finished.is_set(), "the first operation")
        paused = gate.reached.is_set() and not held.finished.is_set()
        other.start()
        if paused and probe is not None:
            someone_waits = probe.someone_waits
            _wait_for(
                lambda: other.finished.is_set() or someone_waits(),
                "the second operation to finish or wait for the first one's lock",
            )
        else:
            _wait_for(other.finished.is_set, "the second operation")
    finally:  # whatever failed, nothing stays held: the next test needs the store
        gate.release()
        for runner in (held, other):
            if runner.is_alive():
                _wait_for(runner.finished.is_set, "both operations to end")
    return held.outcome, other.outcome, paused
