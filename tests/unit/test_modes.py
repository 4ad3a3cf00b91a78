"""modes.py on its own: what each strategy asks of the store, in what order, and its bounds.

A recording store (the in-memory store, logging each primitive it is asked
for) shows the shape of every mode: `unlocked` reads and writes in two
steps, `locked` does both inside the store's exclusive section, `optimistic`
writes with the version it read and retries a bounded number of times,
`atomic` never reads. Nothing sleeps to synchronise.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Sequence

import pytest

from service import modes
from service.domain import (
    BalanceState,
    HoldAction,
    HoldChange,
    HoldNotPending,
    HoldStatus,
    InsufficientFunds,
    Leg,
    LockMode,
    TransactionKind,
    WriteConflict,
    utc_now,
)
from service.idempotency import Completion
from service.keyed_locks import KeyedLocks
from service.modes import (
    OPTIMISTIC_MAX_ATTEMPTS,
    STRATEGIES,
    ModeContext,
    Operation,
    in_lock_order,
)
from service.stores.base import LegWrite, LegWriter, TransferSpec, VersionConflict, Written
from service.stores.memory import MemoryStore

LOCK_TIMEOUT_MS = 2000
# README's lock-mode table and docs/overload.md: optimistic gives up after 100 attempts.
DOCUMENTED_OPTIMISTIC_ATTEMPTS = 100


class RecordingStore(MemoryStore):
    """The in-memory store, recording the primitives a mode uses."""

    def __init__(self) -> None:
        super().__init__(lock_timeout_ms=LOCK_TIMEOUT_MS)
        self.calls: list[str] = []
        self.writes: list[LegWrite] = []
        self.conflicts_left = 0

    def read_states(self, account_ids: Sequence[int]) -> dict[int, BalanceState]:
        self.calls.append("read")
        return super().read_states(account_ids)

    def write_legs(
        self,
        writes: Sequence[LegWrite],
        lock_mode: str,
        transfer: TransferSpec | None = None,
        completion: Completion | None = None,
    ) -> Written:
        self.calls.append("write")
        self.writes.extend(writes)
        if self.conflicts_left:
            self.conflicts_left -= 1
            raise VersionConflict("someone wrote first")
        return super().write_legs(writes, lock_mode, transfer, completion)

    def exclusive(
        self, account_ids: Sequence[int], work: Callable[[LegWriter], Written]
    ) -> Written:
        self.calls.append("exclusive")
        return super().exclusive(account_ids, work)


def context(store: RecordingStore, *, deadline_seconds: float = 5.0) -> ModeContext:
    return ModeContext(store, KeyedLocks(LOCK_TIMEOUT_MS), 0, time.monotonic() + deadline_seconds)


def deposit(account_id: int, amount: int = 5) -> Operation:
    return Operation((Leg(account_id, TransactionKind.DEPOSIT, amount),), (account_id,))


@pytest.mark.parametrize(
    ("mode", "calls", "absolute", "versioned"),
    [
        (LockMode.UNLOCKED, ["read", "write"], True, False),
        (LockMode.PROCESS_LOCK, ["read", "write"], True, False),
        # locked: everything inside the exclusive section, through its writer
        (LockMode.LOCKED, ["exclusive"], True, False),
        (LockMode.OPTIMISTIC, ["read", "write"], True, True),
        (LockMode.ATOMIC, ["write"], False, False),
    ],
)
def test_each_mode_uses_the_store_as_its_table_says(
    mode: LockMode, calls: list[str], absolute: bool, versioned: bool
) -> None:
    """Read then write, under the exclusive section, with the version, or no read at all."""
    store = RecordingStore()
    account = store.open_account("a", "USD", 10, "locked")
    written = STRATEGIES[mode](deposit(account.id), context(store))
    if mode is LockMode.LOCKED:
        assert store.calls[0] == "exclusive" and "write" not in store.calls
    else:
        assert store.calls == calls
    assert written.transactions[0].balance_after == 15
    assert written.transactions[0].lock_mode == mode.value
    if store.writes:  # `locked` writes through the section's writer, not store.write_legs
        [write] = store.writes
        assert (write.new_balance is not None) is absolute
        assert (write.expected_version is not None) is versioned


def test_optimistic_retries_a_conflict_with_a_fresh_read() -> None:
    """A version conflict is retried: read again, write again, and the deposit lands once."""
    store = RecordingStore()
    account = store.open_account("a", "USD", 10, "locked")
    store.conflicts_left = 2
    written = STRATEGIES[LockMode.OPTIMISTIC](deposit(account.id), context(store))
    assert store.calls == ["read", "write"] * 3
    assert written.transactions[0].balance_after == 15
    assert store.audit_account(account.id).consistent


def test_optimistic_gives_up_at_the_attempt_bound_with_nothing_written(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A row that always changes: exactly the documented 100 attempts, then WriteConflict."""
    # No backoff: its jittered sleeps (about 2.5 s in all) are not what is counted here,
    # and with them gone the 60 s deadline cannot end the retries before the count does.
    monkeypatch.setattr(modes, "OPTIMISTIC_BACKOFF_CAP_MS", 0)
    store = RecordingStore()
    account = store.open_account("a", "USD", 10, "locked")
    store.conflicts_left = 10**6
    with pytest.raises(WriteConflict):
        STRATEGIES[LockMode.OPTIMISTIC](deposit(account.id), context(store, deadline_seconds=60))
    assert OPTIMISTIC_MAX_ATTEMPTS == DOCUMENTED_OPTIMISTIC_ATTEMPTS
    assert store.calls.count("write") == DOCUMENTED_OPTIMISTIC_ATTEMPTS
    assert store.calls == ["read", "write"] * DOCUMENTED_OPTIMISTIC_ATTEMPTS  # a fresh read each
    assert store.get_account(account.id).balance == 10
    assert [entry.kind for entry in store.list_transactions(account.id, None, 10)] == ["open"]


def test_optimistic_gives_up_at_the_deadline() -> None:
    """With the deadline already past, no backoff starts: one attempt, then WriteConflict."""
    store = RecordingStore()
    account = store.open_account("a", "USD", 10, "locked")
    store.conflicts_left = 10**6
    with pytest.raises(WriteConflict):
        STRATEGIES[LockMode.OPTIMISTIC](deposit(account.id), context(store, deadline_seconds=0))
    assert store.calls.count("write") == 1


@pytest.mark.parametrize("mode", [LockMode.LOCKED, LockMode.OPTIMISTIC, LockMode.UNLOCKED])
def test_a_read_modify_write_refuses_an_overdraft_before_writing(mode: LockMode) -> None:
    """Computed from the read, a withdrawal past the balance is refused and writes nothing."""
    store = RecordingStore()
    account = store.open_account("a", "USD", 10, "locked")
    withdrawal = Operation((Leg(account.id, TransactionKind.WITHDRAWAL, 11),), (account.id,))
    with pytest.raises(InsufficientFunds):
        STRATEGIES[mode](withdrawal, context(store))
    assert "write" not in store.calls
    assert store.get_account(account.id).balance == 10


def test_writes_follow_the_lock_order_whatever_the_leg_order() -> None:
    """Rows are written in lock order (ascending ids), so writes never deadlock each other."""
    operation = Operation(
        (Leg(7, TransactionKind.TRANSFER_OUT, 1), Leg(3, TransactionKind.TRANSFER_IN, 1)),
        (3, 7),
    )
    assert [leg.account_id for leg in in_lock_order(operation)] == [3, 7]


# --------------------------------------------------------------------------- holds


def place_hold(store: RecordingStore, account_id: int, amount: int) -> int:
    expires_at = utc_now() + dt.timedelta(minutes=10)
    leg = Leg(account_id, HoldAction.PLACE, amount, HoldChange(None, amount, expires_at))
    written = STRATEGIES[LockMode.LOCKED](Operation((leg,), (account_id,)), context(store))
    assert written.hold is not None and written.transactions == ()
    return written.hold.id


def capture(account_id: int, hold_id: int, amount: int, held: int) -> Operation:
    leg = Leg(account_id, TransactionKind.CAPTURE, amount, HoldChange(hold_id, held))
    return Operation((leg,), (account_id,))


@pytest.mark.parametrize(
    ("mode", "checks_pending", "checks_expiry"),
    [
        # unlocked writes the read's verdict as it is: the race with a second
        # ending and with the clock is left open on purpose
        (LockMode.UNLOCKED, False, False),
        (LockMode.PROCESS_LOCK, False, True),
        (LockMode.OPTIMISTIC, False, True),
        # atomic read nothing: the store's guarded UPDATE is its only check
        (LockMode.ATOMIC, True, True),
    ],
)
def test_each_mode_guards_a_hold_write_as_its_table_says(
    mode: LockMode, checks_pending: bool, checks_expiry: bool
) -> None:
    """A capture's write carries the hold guards of modes.py's holds table."""
    store = RecordingStore()
    account = store.open_account("a", "USD", 1000, "locked")
    hold_id = place_hold(store, account.id, 300)
    store.writes.clear()
    written = STRATEGIES[mode](capture(account.id, hold_id, 200, 300), context(store))
    [write] = store.writes
    assert (write.check_hold_pending, write.check_hold_expiry) == (checks_pending, checks_expiry)
    [entry] = written.transactions
    assert (entry.kind, entry.amount, entry.balance_after, entry.hold_id) == (
        TransactionKind.CAPTURE,
        200,
        800,
        hold_id,
    )
    assert written.hold is not None and written.hold.status is HoldStatus.CAPTURED
    assert store.get_account(account.id).held == 0


@pytest.mark.parametrize(
    "mode", [LockMode.UNLOCKED, LockMode.LOCKED, LockMode.OPTIMISTIC, LockMode.ATOMIC]
)
def test_a_hold_counts_against_a_withdrawal_in_every_mode(mode: LockMode) -> None:
    """Held money is not there to spend: 701 of 1000 with 300 held is refused, nothing written."""
    store = RecordingStore()
    account = store.open_account("a", "USD", 1000, "locked")
    place_hold(store, account.id, 300)
    withdrawal = Operation((Leg(account.id, TransactionKind.WITHDRAWAL, 701),), (account.id,))
    with pytest.raises(InsufficientFunds):
        STRATEGIES[mode](withdrawal, context(store))
    assert store.get_account(account.id).balance == 1000


@pytest.mark.parametrize("mode", [LockMode.UNLOCKED, LockMode.LOCKED, LockMode.OPTIMISTIC])
def test_a_read_modify_write_refuses_a_captured_hold_before_writing(mode: LockMode) -> None:
    """The read sees the hold is no longer pending: 409 hold_not_pending, nothing written."""
    store = RecordingStore()
    account = store.open_account("a", "USD", 1000, "locked")
    hold_id = place_hold(store, account.id, 300)
    STRATEGIES[LockMode.LOCKED](capture(account.id, hold_id, 300, 300), context(store))
    store.writes.clear()
    with pytest.raises(HoldNotPending):
        STRATEGIES[mode](capture(account.id, hold_id, 300, 300), context(store))
    assert store.writes == [] and store.get_account(account.id).balance == 700
