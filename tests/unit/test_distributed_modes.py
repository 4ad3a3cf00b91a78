"""redis-lock and fenced in modes.py: what each asks of the lock service and the store.

A stand-in lock service (no Redis: the lock client has its own tests) hands
out growing tokens and records when locks are taken and given back, so the
shape of each mode is visible: `redis-lock` reads and writes inside the
lock like `process-lock`; `fenced` claims the accounts with the lock's
tokens and writes fenced by them, and a newer claim in between makes the
write a StaleLock that changes nothing.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import pytest

from service.domain import BalanceState, Leg, LockMode, StaleLock, TransactionKind
from service.keyed_locks import KeyedLocks
from service.modes import STRATEGIES, ModeContext, Operation
from service.redis_locks import Lease
from service.stores.base import TransferSpec, Written
from tests.unit.test_metrics import sample
from tests.unit.test_modes import LOCK_TIMEOUT_MS, RecordingStore


class FakeLocks:
    """The lock service's interface: tokens from a counter, every step recorded."""

    def __init__(self, events: list[str]) -> None:
        self.events = events
        self.counter = 0
        self.asked: list[tuple[tuple[int, ...], str]] = []

    @contextmanager
    def holding(
        self, account_ids: Sequence[int], lock_mode: str, deadline: float
    ) -> Iterator[Lease]:
        self.asked.append((tuple(account_ids), lock_mode))
        lease = Lease()
        for account_id in account_ids:
            self.counter += 1
            lease.tokens[account_id] = self.counter
            self.events.append(f"lock {account_id}")
        try:
            yield lease
        finally:
            self.events.append("unlock")

    def count_past(self, token: int) -> None:
        self.events.append(f"count past {token}")
        self.counter = max(self.counter, token)


class ClaimingStore(RecordingStore):
    """The recording store, also recording claims; optionally a newer holder claims before
    the next write (what a lock holder paused past its lease finds when it resumes)."""

    def __init__(self) -> None:
        super().__init__()
        self.newer_claim_before_write = False

    def claim_states(self, fences: Mapping[int, int]) -> dict[int, BalanceState]:
        self.calls.append(f"claim {dict(fences)}")
        return super().claim_states(fences)

    def write_legs(self, writes: Sequence[Any], *arguments: Any) -> Written:
        if self.newer_claim_before_write:
            self.newer_claim_before_write = False
            super().claim_states({write.leg.account_id: 1000 for write in writes})
        return super().write_legs(writes, *arguments)


def context(store: RecordingStore, locks: FakeLocks) -> ModeContext:
    return ModeContext(
        store,
        KeyedLocks(LOCK_TIMEOUT_MS),
        0,
        time.monotonic() + 5,
        locks,  # type: ignore[arg-type]
    )


def deposit(account_id: int) -> Operation:
    return Operation((Leg(account_id, TransactionKind.DEPOSIT, 5),), (account_id,))


def test_redis_lock_reads_and_writes_inside_the_lock() -> None:
    """redis-lock: lock, read, write (absolute, unfenced), unlock -- the textbook shape."""
    store, events = ClaimingStore(), []
    locks = FakeLocks(events)
    account = store.open_account("a", "USD", 10, "locked")
    store.calls.clear()
    written = STRATEGIES[LockMode.REDIS_LOCK](deposit(account.id), context(store, locks))
    assert store.calls == ["read", "write"]
    assert events == [f"lock {account.id}", "unlock"]
    [write] = store.writes
    assert (write.new_balance, write.fence) == (15, None)
    assert written.transactions[0].lock_mode == "redis-lock"
    assert locks.asked == [((account.id,), "redis-lock")]


def test_fenced_claims_with_the_token_and_writes_fenced_by_it() -> None:
    """fenced: the read is a claim with the lock's token, and the write carries that token."""
    store, events = ClaimingStore(), []
    locks = FakeLocks(events)
    account = store.open_account("a", "USD", 10, "locked")
    store.calls.clear()
    written = STRATEGIES[LockMode.FENCED](deposit(account.id), context(store, locks))
    assert store.calls == [f"claim {{{account.id}: 1}}", "write"]
    [write] = store.writes
    assert (write.new_balance, write.fence) == (15, 1)
    assert written.transactions[0].lock_mode == "fenced"
    assert events == [f"lock {account.id}", "unlock"]


def test_fenced_transfer_locks_in_order_and_fences_each_leg_with_its_token() -> None:
    """A transfer from 2 to 1 locks 1 then 2; each leg is fenced by its own account's token."""
    store, events = ClaimingStore(), []
    first = store.open_account("a", "USD", 0, "locked")
    second = store.open_account("b", "USD", 50, "locked")
    operation = Operation(
        (
            Leg(second.id, TransactionKind.TRANSFER_OUT, 20),
            Leg(first.id, TransactionKind.TRANSFER_IN, 20),
        ),
        (first.id, second.id),
        TransferSpec(second.id, first.id, 20),
    )
    STRATEGIES[LockMode.FENCED](operation, context(store, FakeLocks(events)))
    assert events == [f"lock {first.id}", f"lock {second.id}", "unlock"]
    assert {write.leg.account_id: write.fence for write in store.writes} == {
        first.id: 1,
        second.id: 2,
    }
    assert (store.get_account(first.id).balance, store.get_account(second.id).balance) == (20, 30)


def test_fenced_refuses_a_late_write_counts_it_and_gives_the_lock_back() -> None:
    """A newer holder claims the account during the race window: StaleLock, nothing written,
    one stale-lock refusal counted, the lock released."""
    store, events = ClaimingStore(), []
    account = store.open_account("a", "USD", 10, "locked")
    store.newer_claim_before_write = True
    refusals = sample("bankrace_stale_lock_refusals_total", lock_mode="fenced")
    with pytest.raises(StaleLock):
        STRATEGIES[LockMode.FENCED](deposit(account.id), context(store, FakeLocks(events)))
    assert store.get_account(account.id).balance == 10
    assert store.audit_account(account.id).consistent
    assert events[-2:] == ["count past 1000", "unlock"]
    assert sample("bankrace_stale_lock_refusals_total", lock_mode="fenced") == refusals + 1


def test_redis_lock_trusts_its_lease_and_overwrites_a_newer_holder() -> None:
    """The same interleaving in redis-lock: nothing checks, the late write lands (the lesson)."""
    store, events = ClaimingStore(), []
    account = store.open_account("a", "USD", 10, "locked")
    store.newer_claim_before_write = True
    STRATEGIES[LockMode.REDIS_LOCK](deposit(account.id), context(store, FakeLocks(events)))
    assert store.get_account(account.id).balance == 15


def test_every_lock_mode_has_a_strategy() -> None:
    """STRATEGIES covers the seven modes of DESIGN §2."""
    assert set(STRATEGIES) == set(LockMode)
