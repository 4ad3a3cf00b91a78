"""Safe modes exclude each other's writes on every store, also while the mode changes.

A `locked` request holds the account from its read to its write (here with a
300 ms race window); a request served meanwhile in `atomic` or `optimistic`
mode -- because an operator switched the mode -- must wait for it, not slip
its write into the window to be overwritten. The locked request signals the
moment it has read, so the second request provably starts inside the window.

The other way round, a request in a mode that holds no store lock in its gap
(`fenced`, `optimistic`, `atomic`) is held there by the gate of
tests/support/interleaving.py while each other safe mode deposits: the held
one must then land on top (optimistic retries, atomic never read) or be
refused whole (fenced: 409 stale_lock), never overwrite the other.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence

import pytest

from service import services
from service.domain import BalanceState, Hold, LockMode, ModeSetting, StaleLock
from service.idempotency import Completion
from service.keyed_locks import KeyedLocks
from service.redis_locks import RedisLocks
from service.services import Bank, ModeSource
from service.stores.base import LegWrite, LegWriter, Store, TransferSpec, Written
from tests.conftest import TEST_LOCK_TIMEOUT_MS
from tests.support.interleaving import HOLD_MARKER_MS, install_gate, interleave
from tests.support.redis_service import delete_prefix, redis_url, unique_prefix

RACE_WINDOW_MS = 300
REDIS_LEASE_MS = 10_000  # outlives any hold: a refusal here is never an expired lease
JOIN_DEADLINE_SECONDS = 30.0


class SignalAfterRead(LegWriter):
    """The writer a `locked` request works through, telling the test when it has read."""

    def __init__(self, writer: LegWriter, has_read: threading.Event) -> None:
        self._writer = writer
        self._has_read = has_read

    def read_states(self, account_ids: Sequence[int]) -> dict[int, BalanceState]:
        states = self._writer.read_states(account_ids)
        self._has_read.set()
        return states

    def read_hold(self, hold_id: int) -> Hold:
        return self._writer.read_hold(hold_id)

    def write_legs(
        self,
        writes: Sequence[LegWrite],
        lock_mode: str,
        transfer: TransferSpec | None = None,
        completion: Completion | None = None,
    ) -> Written:
        return self._writer.write_legs(writes, lock_mode, transfer, completion)


def signalling_exclusive(store: Store, has_read: threading.Event) -> None:
    """Make the store's exclusive section report its read (instrumentation only)."""
    exclusive = store.exclusive

    def instrumented(account_ids: Sequence[int], work: Callable[[LegWriter], Written]) -> Written:
        return exclusive(account_ids, lambda writer: work(SignalAfterRead(writer, has_read)))

    store.exclusive = instrumented  # type: ignore[method-assign]


@pytest.mark.parametrize("second_mode", [LockMode.ATOMIC, LockMode.OPTIMISTIC, LockMode.FENCED])
def test_a_write_in_another_safe_mode_waits_for_a_locked_request(
    store: Store, redis_bank: Bank, second_mode: LockMode
) -> None:
    """locked deposit in its window + a deposit served in another safe mode: both count."""
    bank = redis_bank
    account = store.open_account("switch", "USD", 100, "locked")
    has_read = threading.Event()
    signalling_exclusive(store, has_read)
    errors: list[BaseException] = []

    def locked_deposit() -> None:
        try:
            services.deposit(account.id, 10, ModeSetting(LockMode.LOCKED, RACE_WINDOW_MS), bank)
        except BaseException as error:  # reported to the test thread
            errors.append(error)

    first = threading.Thread(target=locked_deposit)
    first.start()
    assert has_read.wait(JOIN_DEADLINE_SECONDS), "the locked deposit never read"
    services.deposit(account.id, 5, ModeSetting(second_mode, 0), bank)
    first.join(JOIN_DEADLINE_SECONDS)
    assert not first.is_alive() and errors == []

    audit = store.audit_account(account.id)
    assert (audit.balance, audit.journal_balance, audit.chain_breaks) == (115, 115, 0)
    assert audit.consistent


# A mode that holds no store lock in its gap, and each other safe mode that
# may write the account meanwhile (a worker still serving the mode before
# the switch, or already the one after it).
UNLOCKED_GAP_PAIRS = [
    (held, other)
    for held in (LockMode.FENCED, LockMode.OPTIMISTIC, LockMode.ATOMIC)
    for other in (LockMode.LOCKED, LockMode.OPTIMISTIC, LockMode.ATOMIC, LockMode.FENCED)
    if other is not held
]


@pytest.fixture
def redis_bank(store: Store) -> Iterator[Bank]:
    """A Bank on the test's store with a Redis lock service (its own key prefix)."""
    url, prefix = redis_url(), unique_prefix("mode-switch")
    yield Bank(
        store=store,
        modes=ModeSource(store, allow_unsafe_modes=False),
        process_locks=KeyedLocks(TEST_LOCK_TIMEOUT_MS),
        lock_timeout_ms=TEST_LOCK_TIMEOUT_MS,
        redis_locks=RedisLocks(
            url, lease_ms=REDIS_LEASE_MS, lock_timeout_ms=TEST_LOCK_TIMEOUT_MS, key_prefix=prefix
        ),
    )
    delete_prefix(url, prefix)


@pytest.mark.parametrize(
    ("held_mode", "other_mode"),
    UNLOCKED_GAP_PAIRS,
    ids=[f"{held.value}-then-{other.value}" for held, other in UNLOCKED_GAP_PAIRS],
)
def test_a_deposit_in_another_safe_mode_inside_the_gap_is_never_lost(
    store: Store,
    redis_bank: Bank,
    held_mode: LockMode,
    other_mode: LockMode,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Deposit 100 held between its read and write, deposit 10 in another mode meanwhile:
    both land (1110), or the held one is refused whole (fenced: 409 stale_lock, 1010)."""
    gate = install_gate(monkeypatch)
    account = store.open_account("switch", "USD", 1000, "locked")
    held, other, paused = interleave(
        lambda: services.deposit(
            account.id, 100, ModeSetting(held_mode, HOLD_MARKER_MS), redis_bank
        ),
        lambda: services.deposit(account.id, 10, ModeSetting(other_mode, 0), redis_bank),
        gate,
    )
    assert paused and other.raised is None, other.raised
    # fenced: refused whole (DESIGN §2, 409 stale_lock); optimistic retries from
    # a fresh read; atomic never read.
    expected = 1010 if held_mode is LockMode.FENCED else 1110
    audit = store.audit_account(account.id)
    assert (audit.balance, audit.journal_balance, audit.chain_breaks) == (expected, expected, 0)
    assert audit.consistent
    if held_mode is LockMode.FENCED:
        assert isinstance(held.raised, StaleLock), held
    else:
        assert held.raised is None, held.raised
