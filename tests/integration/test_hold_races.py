"""Holds race in `unlocked` and in no safe mode, on every store.

Each race holds one operation in its read-to-write gap (the gate of
tests/support/interleaving.py, no sleeps) while a second one runs on the
same hold or account, then lets the first write:

- two captures of one hold, a capture against a void: in `unlocked` both land
  (the hold gets two outcomes, the audit says so); in every safe mode one
  lands and the other is refused 409 hold_not_pending;
- two holds, or a withdrawal and a hold, that together exceed the balance:
  `unlocked` over-reserves (available < 0, the audit counts an overcommitted
  account); the safe modes refuse one with insufficient_funds;
- a capture read before the hold's expiry and written after it: `unlocked`
  captures an expired hold (the audit counts a capture after expiry); every
  safe mode refuses it (hold_not_pending, expired).

`locked` holds the store's lock in its gap, so the second operation waits
for it (seen by the WaitProbe); `optimistic` and `atomic` hold nothing, so
the second one lands first and the first must notice. `fenced` holds a Redis
lease in its gap, which the probe cannot see: it runs the two operations at
once with a real race window instead.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from service import services
from service.domain import (
    HoldAction,
    HoldChange,
    HoldNotPending,
    InsufficientFunds,
    Leg,
    LockMode,
    ModeSetting,
    utc_now,
)
from service.keyed_locks import KeyedLocks
from service.redis_locks import RedisLocks
from service.services import Bank, ModeSource
from service.stores.base import LegWrite, Store
from tests.conftest import TEST_LOCK_TIMEOUT_MS
from tests.support.interleaving import (
    HOLD_MARKER_MS,
    GapGate,
    Outcome,
    WaitProbe,
    install_gate,
    interleave,
)
from tests.support.redis_service import delete_prefix, redis_url, unique_prefix

GATED_SAFE_MODES = [LockMode.LOCKED, LockMode.OPTIMISTIC, LockMode.ATOMIC]
REDIS_LEASE_MS = 10_000
# fenced: both operations start together and each pauses this long in its gap.
FENCED_RACE_WINDOW_MS = 150
# A hold placed to expire while a capture of it waits in its gap.
SHORT_EXPIRY = dt.timedelta(milliseconds=300)
EXPIRY_DEADLINE_SECONDS = 10.0

Race = Callable[[int], tuple[Callable[[ModeSetting], object], Callable[[ModeSetting], object]]]


@pytest.fixture
def bank(store: Store) -> Iterator[Bank]:
    url, prefix = redis_url(), unique_prefix("hold-races")
    yield Bank(
        store=store,
        modes=ModeSource(store, allow_unsafe_modes=True),
        process_locks=KeyedLocks(TEST_LOCK_TIMEOUT_MS),
        lock_timeout_ms=TEST_LOCK_TIMEOUT_MS,
        redis_locks=RedisLocks(
            url, lease_ms=REDIS_LEASE_MS, lock_timeout_ms=TEST_LOCK_TIMEOUT_MS, key_prefix=prefix
        ),
    )
    delete_prefix(url, prefix)


@pytest.fixture
def probe(store: Store, database_url: str) -> Iterator[WaitProbe]:
    waiting = WaitProbe(store, database_url if database_url.startswith("postgresql") else None)
    yield waiting
    waiting.close()


def run_race(
    first: Callable[[], object],
    second: Callable[[], object],
    mode: LockMode,
    gate: GapGate,
    probe: WaitProbe,
) -> tuple[Outcome, Outcome]:
    held, other, paused = interleave(
        first, second, gate, probe if mode is LockMode.LOCKED else None
    )
    assert paused, "the first operation never reached its gap"
    return held, other


def refusals(outcomes: tuple[Outcome, Outcome]) -> list[type[BaseException] | None]:
    return [None if outcome.raised is None else type(outcome.raised) for outcome in outcomes]


# ------------------------------------------------------------------ one hold, two endings

ENDINGS = {
    "capture": lambda hold_id, setting, bank: services.capture_hold(hold_id, None, setting, bank),
    "void": lambda hold_id, setting, bank: services.void_hold(hold_id, setting, bank),
}


@pytest.mark.parametrize("second", ["capture", "void"])
@pytest.mark.parametrize("mode", [LockMode.UNLOCKED, *GATED_SAFE_MODES])
def test_a_capture_and_a_second_ending_of_one_hold(
    store: Store,
    bank: Bank,
    probe: WaitProbe,
    mode: LockMode,
    second: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Capture held in its gap, then a capture or void meanwhile: unlocked ends the hold twice."""
    gate = install_gate(monkeypatch)
    account = store.open_account("race", "USD", 1000, "locked")
    hold = services.place_hold(account.id, 300, 600, ModeSetting(mode, 0), bank).hold
    assert hold is not None
    outcomes = run_race(
        lambda: services.capture_hold(hold.id, None, ModeSetting(mode, HOLD_MARKER_MS), bank),
        lambda: ENDINGS[second](hold.id, ModeSetting(mode, 0), bank),
        mode,
        gate,
        probe,
    )
    audit = store.audit_account(account.id)
    print(f"\n{mode.value} capture+{second}: {refusals(outcomes)} holds={audit.holds}")
    if mode is LockMode.UNLOCKED:
        assert refusals(outcomes) == [None, None]
        assert audit.holds.two_outcomes == 1 and not audit.consistent
        return
    assert sorted(refusals(outcomes), key=str) == sorted([None, HoldNotPending], key=str)
    assert audit.consistent, audit
    assert audit.holds.held == 0
    captured = 1 if outcomes[0].raised is None or second == "capture" else 0
    assert audit.balance == 1000 - 300 * captured


# ------------------------------------------------------------------ two claims on one balance

CLAIMS = {
    "hold": lambda account_id, setting, bank: services.place_hold(
        account_id, 800, 600, setting, bank
    ),
    "withdrawal": lambda account_id, setting, bank: services.withdraw(
        account_id, 800, setting, bank
    ),
}


@pytest.mark.parametrize(
    ("first", "second"), [("hold", "hold"), ("withdrawal", "hold"), ("hold", "withdrawal")]
)
@pytest.mark.parametrize("mode", [LockMode.UNLOCKED, *GATED_SAFE_MODES])
def test_two_claims_on_one_balance(
    store: Store,
    bank: Bank,
    probe: WaitProbe,
    mode: LockMode,
    first: str,
    second: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """800 and 800 against a balance of 1000: unlocked reserves or spends held money."""
    gate = install_gate(monkeypatch)
    account = store.open_account("race", "USD", 1000, "locked")
    outcomes = run_race(
        lambda: CLAIMS[first](account.id, ModeSetting(mode, HOLD_MARKER_MS), bank),
        lambda: CLAIMS[second](account.id, ModeSetting(mode, 0), bank),
        mode,
        gate,
        probe,
    )
    audit = store.audit_account(account.id)
    print(f"\n{mode.value} {first}+{second}: {refusals(outcomes)} holds={audit.holds}")
    if mode is LockMode.UNLOCKED:
        # Both land: held money spent or reserved twice (available < 0), or --
        # when the hold wrote last -- its absolute balance lost the withdrawal.
        assert refusals(outcomes) == [None, None]
        assert audit.holds.overcommitted_accounts == 1 or audit.drift != 0
        assert not audit.consistent
        return
    assert sorted(refusals(outcomes), key=str) == sorted([None, InsufficientFunds], key=str)
    assert audit.consistent, audit
    assert audit.balance - audit.holds.held == 200


# ------------------------------------------------------------------ a capture against the clock


def place_expiring(store: Store, account_id: int) -> tuple[int, dt.datetime]:
    """A hold that expires SHORT_EXPIRY from now (below the API's 1 s minimum, on purpose)."""
    expires_at = utc_now() + SHORT_EXPIRY
    leg = Leg(account_id, HoldAction.PLACE, 300, HoldChange(None, 300, expires_at))
    written = store.write_legs([LegWrite(leg, new_balance=1000)], "locked")
    assert written.hold is not None
    return written.hold.id, expires_at


def wait_until(moment: dt.datetime) -> None:
    """The clock is the event here: poll it until the hold has expired."""
    deadline = time.monotonic() + EXPIRY_DEADLINE_SECONDS
    while utc_now() <= moment:
        assert time.monotonic() < deadline
        time.sleep(0.005)


@pytest.mark.parametrize("mode", [LockMode.UNLOCKED, *GATED_SAFE_MODES])
def test_a_capture_against_the_expiry(
    store: Store,
    bank: Bank,
    probe: WaitProbe,
    mode: LockMode,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Capture read before the expiry, written after it: only unlocked captures an expired hold."""
    gate = install_gate(monkeypatch)
    account = store.open_account("race", "USD", 1000, "locked")
    hold_id, expires_at = place_expiring(store, account.id)
    held, _ = run_race(
        lambda: services.capture_hold(hold_id, None, ModeSetting(mode, HOLD_MARKER_MS), bank),
        lambda: wait_until(expires_at),
        LockMode.UNLOCKED,  # the second takes no lock: no probe
        gate,
        probe,
    )
    audit = store.audit_account(account.id)
    print(f"\n{mode.value} capture past expiry: {held.raised!r} holds={audit.holds}")
    if mode is LockMode.UNLOCKED:
        assert held.raised is None
        assert audit.holds.captured_after_expiry == 1 and not audit.consistent
        return
    assert isinstance(held.raised, HoldNotPending) and held.raised.status.value == "expired"
    assert audit.consistent and audit.balance == 1000 and audit.holds.held == 0


# ------------------------------------------------------------------ the Redis-leased modes


@pytest.mark.parametrize("mode", [LockMode.FENCED, LockMode.REDIS_LOCK, LockMode.PROCESS_LOCK])
def test_lease_and_process_locks_end_a_hold_once_among_threads(
    store: Store, bank: Bank, mode: LockMode
) -> None:
    """Two captures of one hold, started together, each pausing in its gap: one lands."""
    account = store.open_account("race", "USD", 1000, "locked")
    hold = services.place_hold(account.id, 300, 600, ModeSetting(mode, 0), bank).hold
    assert hold is not None
    start = threading.Barrier(2)
    outcomes = [Outcome(), Outcome()]

    def capture(index: int) -> None:
        start.wait()
        try:
            setting = ModeSetting(mode, FENCED_RACE_WINDOW_MS)
            outcomes[index].result = services.capture_hold(hold.id, None, setting, bank)
        except Exception as error:  # handed to the test thread
            outcomes[index].raised = error

    threads = [threading.Thread(target=capture, args=(index,)) for index in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(EXPIRY_DEADLINE_SECONDS)
    assert not any(thread.is_alive() for thread in threads)
    assert sorted(refusals((outcomes[0], outcomes[1])), key=str) == sorted(
        [None, HoldNotPending], key=str
    )
    audit = store.audit_account(account.id)
    assert audit.consistent and audit.balance == 700, audit


# ------------------------------------------------------------------ across a mode switch

SWITCH_PAIRS = [
    (held, other) for held in GATED_SAFE_MODES for other in GATED_SAFE_MODES if other is not held
]


@pytest.mark.parametrize(("held_mode", "other_mode"), SWITCH_PAIRS)
def test_two_safe_modes_capture_one_hold_once_across_a_switch(
    store: Store,
    bank: Bank,
    probe: WaitProbe,
    held_mode: LockMode,
    other_mode: LockMode,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A capture held in its gap in one safe mode, one in another meanwhile (workers serve
    the old mode for a moment after PUT /mode): one lands, the other is refused."""
    gate = install_gate(monkeypatch)
    # No retry: every writer of a hold queues on its account's row first, so
    # PostgreSQL never has a deadlock to break here (a retry would hide one).
    monkeypatch.setattr(services, "DATABASE_RETRY_ATTEMPTS", 1)
    account = store.open_account("race", "USD", 1000, "locked")
    hold = services.place_hold(account.id, 300, 600, ModeSetting(held_mode, 0), bank).hold
    assert hold is not None
    outcomes = run_race(
        lambda: services.capture_hold(hold.id, None, ModeSetting(held_mode, HOLD_MARKER_MS), bank),
        lambda: services.capture_hold(hold.id, None, ModeSetting(other_mode, 0), bank),
        held_mode,
        gate,
        probe,
    )
    audit = store.audit_account(account.id)
    assert sorted(refusals(outcomes), key=str) == sorted([None, HoldNotPending], key=str), outcomes
    assert audit.consistent and audit.balance == 700, audit


# ------------------------------------------------------------------ the row lock of atomic debits

OPPOSING_THREADS = 8
TRANSFERS_PER_THREAD = 6


def test_atomic_opposing_transfers_never_wait_out_the_lock(store: Store, bank: Bank) -> None:
    """atomic debits lock their row first (to see committed holds); that lock must not
    queue behind the foreign-key checks of other transfers (PostgreSQL: FOR UPDATE did,
    and opposing transfers waited out the lock timeout; FOR NO KEY UPDATE does not)."""
    first = store.open_account("a", "USD", 1000, "locked")
    second = store.open_account("b", "USD", 1000, "locked")
    setting = ModeSetting(LockMode.ATOMIC, 0)
    start = threading.Barrier(OPPOSING_THREADS)
    failures: list[BaseException] = []

    def transfers(index: int) -> None:
        source, target = (first.id, second.id) if index % 2 else (second.id, first.id)
        start.wait()
        for _ in range(TRANSFERS_PER_THREAD):
            try:
                services.transfer(source, target, 1, setting, bank)
            except Exception as error:  # handed to the test thread
                failures.append(error)

    threads = [
        threading.Thread(target=transfers, args=(index,)) for index in range(OPPOSING_THREADS)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(thread.is_alive() for thread in threads)
    assert failures == []
    assert store.audit_bank().consistent
