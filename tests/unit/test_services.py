"""services.py on its own: the mode source (guard, cache, fallback) and the database retry loop.

The stores here are in-memory fakes built on MemoryStore, so each test
controls exactly what the store answers; nothing sleeps to synchronise.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable

import pytest

from service import services
from service.domain import (
    Leg,
    LockMode,
    LockTimeout,
    ModeSetting,
    StoreUnavailable,
    TransactionKind,
    UnsafeModeRefused,
    WriteConflict,
    utc_now,
)
from service.idempotency import Claim
from service.keyed_locks import KeyedLocks
from service.modes import Operation
from service.services import Bank, ModeSource
from service.stores.base import RetryableConflict, Written
from service.stores.memory import MemoryStore

LOCK_TIMEOUT_MS = 2000


class CountingStore(MemoryStore):
    """The in-memory store, counting mode reads and able to fail them."""

    def __init__(self) -> None:
        super().__init__(lock_timeout_ms=LOCK_TIMEOUT_MS)
        self.loads = 0
        self.load_error: Exception | None = None

    def load_mode(self) -> ModeSetting | None:
        self.loads += 1
        if self.load_error is not None:
            raise self.load_error
        return super().load_mode()


def make_bank(store: MemoryStore, *, allow_unsafe_modes: bool = True) -> Bank:
    return Bank(
        store=store,
        modes=ModeSource(store, allow_unsafe_modes=allow_unsafe_modes),
        process_locks=KeyedLocks(LOCK_TIMEOUT_MS),
        lock_timeout_ms=LOCK_TIMEOUT_MS,
    )


def test_a_replica_that_forbids_unsafe_modes_never_stores_one_when_changing_the_window() -> None:
    """Stored `unlocked`, PUT of only the window on a safe replica: it serves and stores locked."""
    store = CountingStore()
    store.save_mode(ModeSetting(LockMode.UNLOCKED, 0))
    modes = ModeSource(store, allow_unsafe_modes=False)
    changed = modes.change(race_window_ms=20)
    assert changed == ModeSetting(LockMode.LOCKED, 20)
    assert modes.current() == ModeSetting(LockMode.LOCKED, 20)
    assert store.load_mode() == ModeSetting(LockMode.LOCKED, 20)


def test_a_replica_that_forbids_unsafe_modes_serves_locked_when_another_stored_unsafe() -> None:
    """The guard applies to what is read from the shared store, keeping the race window."""
    store = CountingStore()
    store.save_mode(ModeSetting(LockMode.PROCESS_LOCK, 7))
    assert ModeSource(store, allow_unsafe_modes=False).current() == ModeSetting(LockMode.LOCKED, 7)
    assert ModeSource(store, allow_unsafe_modes=True).current() == ModeSetting(
        LockMode.PROCESS_LOCK, 7
    )


def test_switching_into_an_unsafe_mode_is_refused_and_changes_nothing() -> None:
    """change(unlocked) on a safe replica raises UnsafeModeRefused; the stored mode stays."""
    store = CountingStore()
    store.save_mode(ModeSetting(LockMode.ATOMIC, 3))
    with pytest.raises(UnsafeModeRefused):
        ModeSource(store, allow_unsafe_modes=False).change(LockMode.UNLOCKED)
    assert store.load_mode() == ModeSetting(LockMode.ATOMIC, 3)


def test_the_mode_is_cached_briefly_and_a_change_is_seen_at_once_by_its_process() -> None:
    """Repeated reads within the refresh interval hit the store once; a change updates the cache."""
    store = CountingStore()
    store.save_mode(ModeSetting(LockMode.LOCKED, 0))
    modes = ModeSource(store, allow_unsafe_modes=True)
    for _ in range(50):
        assert modes.current().lock_mode is LockMode.LOCKED
    assert store.loads == 1
    modes.change(LockMode.ATOMIC)
    loads_after_change = store.loads
    assert modes.current().lock_mode is LockMode.ATOMIC
    assert store.loads == loads_after_change


def test_a_store_that_fails_after_a_read_serves_the_cached_mode() -> None:
    """When refreshing fails, the last known mode is served instead of an error."""
    store = CountingStore()
    store.save_mode(ModeSetting(LockMode.OPTIMISTIC, 0))
    modes = ModeSource(store, allow_unsafe_modes=True)
    assert modes.current().lock_mode is LockMode.OPTIMISTIC
    store.load_error = StoreUnavailable("down")
    modes._fetched_at = 0.0  # the cache has expired
    assert modes.current().lock_mode is LockMode.OPTIMISTIC


def test_a_store_that_was_never_read_raises_when_down() -> None:
    """With nothing cached, a failing store is an honest StoreUnavailable (a 503)."""
    store = CountingStore()
    store.load_error = StoreUnavailable("down")
    with pytest.raises(StoreUnavailable):
        ModeSource(store, allow_unsafe_modes=True).current()


def test_nothing_stored_serves_and_seeds_the_configured_mode() -> None:
    """A store whose seed failed at boot serves the configured mode and seeds it on first read."""
    store = CountingStore()
    modes = ModeSource(store, allow_unsafe_modes=False, initial=ModeSetting(LockMode.ATOMIC, 0))
    assert modes.current() == ModeSetting(LockMode.ATOMIC, 0)
    assert store.load_mode() == ModeSetting(LockMode.ATOMIC, 0)


def conflicting(times: int, *, deadlock: bool) -> Callable[[Operation, object], Written]:
    """A strategy that fails `times` times with a database conflict, then succeeds."""
    calls = [0]

    def strategy(operation: Operation, context: object) -> Written:
        calls[0] += 1
        if calls[0] <= times:
            raise RetryableConflict("conflict", deadlock=deadlock)
        return Written(())

    return strategy


@pytest.mark.parametrize("deadlock", [True, False])
def test_database_conflicts_are_retried_a_bounded_number_of_times(
    monkeypatch: pytest.MonkeyPatch, deadlock: bool
) -> None:
    """40P01/40001 are run again; after DATABASE_RETRY_ATTEMPTS they become a 503 refusal."""
    bank = make_bank(CountingStore())
    setting = ModeSetting(LockMode.LOCKED, 0)
    operation = Operation((Leg(1, TransactionKind.DEPOSIT, 1),), (1,))
    recovering = conflicting(services.DATABASE_RETRY_ATTEMPTS - 1, deadlock=deadlock)
    monkeypatch.setitem(services.STRATEGIES, LockMode.LOCKED, recovering)  # type: ignore[arg-type]
    assert services._apply(operation, setting, bank) == Written(())

    failing = conflicting(services.DATABASE_RETRY_ATTEMPTS, deadlock=deadlock)
    monkeypatch.setitem(services.STRATEGIES, LockMode.LOCKED, failing)  # type: ignore[arg-type]
    expected = LockTimeout if deadlock else WriteConflict
    with pytest.raises(expected):
        services._apply(operation, setting, bank)


def test_a_transfer_between_currencies_or_to_itself_is_refused_before_any_lock() -> None:
    """same_account and currency_mismatch are decided before the mode runs."""
    store = CountingStore()
    bank = make_bank(store)
    dollars = store.open_account("a", "USD", 10, "locked")
    euros = store.open_account("b", "EUR", 10, "locked")
    setting = ModeSetting(LockMode.LOCKED, 0)
    with pytest.raises(services.SameAccount):
        services.transfer(dollars.id, dollars.id, 1, setting, bank)
    with pytest.raises(services.CurrencyMismatch):
        services.transfer(dollars.id, euros.id, 1, setting, bank)
    assert store.audit_bank().total_balance == 20


def test_expired_keys_are_purged_in_batches_until_none_is_left() -> None:
    """purge_expired_keys deletes every expired key, PURGE_BATCH_KEYS per call, and no live one."""
    store = CountingStore()
    now = utc_now()
    expired = services.PURGE_BATCH_KEYS * 2 + 7
    for index in range(expired):
        old = Claim(
            "", f"old-{index}", "f", "o", now - dt.timedelta(hours=30), dt.timedelta(hours=24)
        )
        assert store.claim_key(old) is None
    assert store.claim_key(Claim("", "live", "f", "o", now, dt.timedelta(hours=24))) is None
    calls: list[int] = []
    purge = store.purge_keys

    def counting(moment: dt.datetime, limit: int) -> int:
        deleted = purge(moment, limit)
        calls.append(deleted)
        return deleted

    store.purge_keys = counting  # type: ignore[method-assign]
    assert services.purge_expired_keys(store) == expired
    assert calls == [services.PURGE_BATCH_KEYS, services.PURGE_BATCH_KEYS, 7]
    live = store.claim_key(Claim("", "live", "other", "p", now, dt.timedelta(hours=24)))
    assert live is not None and live.fingerprint == "f"


def test_the_janitor_purges_at_most_once_per_interval() -> None:
    """maybe_purge starts a purge, then none until PURGE_INTERVAL_SECONDS have passed."""
    store = CountingStore()
    started: list[threading.Event] = []
    purge = store.purge_keys

    def signalling(moment: dt.datetime, limit: int) -> int:
        started.append(threading.Event())
        return purge(moment, limit)

    store.purge_keys = signalling  # type: ignore[method-assign]
    janitor = services.KeyJanitor(store)
    janitor.maybe_purge()
    deadline = time.monotonic() + 10
    while (janitor._running or not started) and time.monotonic() < deadline:
        time.sleep(0.01)  # polling the janitor's state against a deadline
    assert len(started) == 1 and not janitor._running
    janitor.maybe_purge()
    assert len(started) == 1
