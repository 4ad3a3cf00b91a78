"""The metric calls of the write path count exactly what happened, in one process.

In-memory fakes decide what the store answers (a version conflict, a
database abort), so each count is known in advance; the numbers are read
from the text `service.metrics.exposition()` serves at GET /metrics.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from service import metrics, services
from service.domain import LockMode, LockTimeout, ModeSetting
from service.idempotency import Completion
from service.keyed_locks import KeyedLocks
from service.services import DATABASE_RETRY_ATTEMPTS, Bank, ModeSource
from service.stores.base import (
    LegWrite,
    RetryableConflict,
    TransferSpec,
    VersionConflict,
    Written,
)
from service.stores.memory import MemoryStore
from tests.support.metrics_samples import sample

LOCK_TIMEOUT_MS = 2000


class ConflictingStore(MemoryStore):
    """The in-memory store whose first `conflicts` optimistic writes find another version."""

    def __init__(self, conflicts: int) -> None:
        super().__init__(lock_timeout_ms=LOCK_TIMEOUT_MS)
        self.conflicts = conflicts

    def write_legs(
        self,
        writes: Sequence[LegWrite],
        lock_mode: str,
        transfer: TransferSpec | None = None,
        completion: Completion | None = None,
    ) -> Written:
        if self.conflicts > 0 and any(write.expected_version is not None for write in writes):
            self.conflicts -= 1
            raise VersionConflict("someone wrote first")
        return super().write_legs(writes, lock_mode, transfer, completion)


class AbortingStore(MemoryStore):
    """The in-memory store whose locked transactions the 'database' aborts `aborts` times."""

    def __init__(self, aborts: int, *, deadlock: bool) -> None:
        super().__init__(lock_timeout_ms=LOCK_TIMEOUT_MS)
        self.aborts, self.deadlock = aborts, deadlock

    def exclusive(self, account_ids: Sequence[int], work: object) -> Written:
        if self.aborts > 0:
            self.aborts -= 1
            raise RetryableConflict("aborted", deadlock=self.deadlock)
        return super().exclusive(account_ids, work)  # type: ignore[arg-type]


def bank_of(store: MemoryStore) -> Bank:
    return Bank(
        store=store,
        modes=ModeSource(store, allow_unsafe_modes=True),
        process_locks=KeyedLocks(LOCK_TIMEOUT_MS),
        lock_timeout_ms=LOCK_TIMEOUT_MS,
    )


def opened(store: MemoryStore) -> int:
    return store.open_account("metrics", "USD", 100, LockMode.LOCKED.value).id


def test_each_optimistic_conflict_is_counted_once() -> None:
    """Three version conflicts, then success: conflicts +3, one ok deposit in optimistic."""
    store = ConflictingStore(conflicts=3)
    account_id = opened(store)
    conflicts = sample("bankrace_optimistic_conflicts_total")
    done = sample("bankrace_operations_total", kind="deposit", outcome="ok", lock_mode="optimistic")
    setting = ModeSetting(LockMode.OPTIMISTIC, 0)
    services.deposit(account_id, 5, setting, bank_of(store))
    assert sample("bankrace_optimistic_conflicts_total") == conflicts + 3
    assert (
        sample("bankrace_operations_total", kind="deposit", outcome="ok", lock_mode="optimistic")
        == done + 1
    )


def test_database_retries_are_counted_by_reason() -> None:
    """Two serialization aborts, then success: two retries; the deposit counts once, ok."""
    store = AbortingStore(aborts=2, deadlock=False)
    account_id = opened(store)
    retries = sample("bankrace_database_retries_total", reason="serialization")
    services.deposit(account_id, 5, ModeSetting(LockMode.LOCKED, 0), bank_of(store))
    assert sample("bankrace_database_retries_total", reason="serialization") == retries + 2


def test_a_deadlock_that_never_clears_is_counted_as_its_refusal() -> None:
    """Deadlocks every time: retried until the attempts run out, then one lock_timeout outcome."""
    store = AbortingStore(aborts=DATABASE_RETRY_ATTEMPTS, deadlock=True)
    account_id = opened(store)
    retries = sample("bankrace_database_retries_total", reason="deadlock")
    refused = sample(
        "bankrace_operations_total", kind="withdrawal", outcome="lock_timeout", lock_mode="locked"
    )
    with pytest.raises(LockTimeout):
        services.withdraw(account_id, 5, ModeSetting(LockMode.LOCKED, 0), bank_of(store))
    assert sample("bankrace_database_retries_total", reason="deadlock") == (
        retries + DATABASE_RETRY_ATTEMPTS - 1
    )
    assert (
        sample(
            "bankrace_operations_total",
            kind="withdrawal",
            outcome="lock_timeout",
            lock_mode="locked",
        )
        == refused + 1
    )


@pytest.mark.parametrize("lock_mode", [LockMode.LOCKED, LockMode.PROCESS_LOCK])
def test_lock_wait_is_observed_once_per_operation(lock_mode: LockMode) -> None:
    """Each locked or process-lock operation adds one lock-wait observation; atomic none."""
    store = MemoryStore(lock_timeout_ms=LOCK_TIMEOUT_MS)
    first, second = opened(store), opened(store)
    bank = bank_of(store)
    waits = sample("bankrace_lock_wait_seconds_count", lock_mode=lock_mode.value)
    atomic_waits = sample("bankrace_lock_wait_seconds_count", lock_mode="atomic")
    services.deposit(first, 1, ModeSetting(lock_mode, 0), bank)
    services.transfer(first, second, 1, ModeSetting(lock_mode, 0), bank)
    services.deposit(first, 1, ModeSetting(LockMode.ATOMIC, 0), bank)
    assert sample("bankrace_lock_wait_seconds_count", lock_mode=lock_mode.value) == waits + 2
    assert sample("bankrace_lock_wait_seconds_count", lock_mode="atomic") == atomic_waits


def test_lock_wait_timer_observes_only_the_first_call() -> None:
    """A store calling the locked work twice does not count a second wait."""
    before = sample("bankrace_lock_wait_seconds_count", lock_mode="test")
    timed = metrics.after_lock_wait("test", lambda argument: argument * 2)
    assert [timed(1), timed(2)] == [2, 4]
    assert sample("bankrace_lock_wait_seconds_count", lock_mode="test") == before + 1


def test_each_request_series_counts_its_own_requests_and_durations() -> None:
    """The looked-up-once series still count apart: by method, route and status."""
    labels = {"method": "GET", "route": "/series-test/{id}"}
    before_ok = sample("bankrace_http_requests_total", **labels, status="200")
    before_missing = sample("bankrace_http_requests_total", **labels, status="404")
    before_timed = sample("bankrace_http_request_duration_seconds_count", **labels)
    for status in (200, 200, 404):
        metrics.request_answered("GET", "/series-test/{id}", status, 0.002)
    metrics.request_answered("GET", "/series-test/{id}", 200, None)  # not timed
    assert sample("bankrace_http_requests_total", **labels, status="200") == before_ok + 3
    assert sample("bankrace_http_requests_total", **labels, status="404") == before_missing + 1
    assert sample("bankrace_http_request_duration_seconds_count", **labels) == before_timed + 3
