"""Safe modes exclude each other's writes on every store, also while the mode changes.

A `locked` request holds the account from its read to its write (here with a
300 ms race window); a request served meanwhile in `atomic` or `optimistic`
mode -- because an operator switched the mode -- must wait for it, not slip
its write into the window to be overwritten. The locked request signals the
moment it has read, so the second request provably starts inside the window.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

import pytest

from service import services
from service.domain import BalanceState, LockMode, ModeSetting
from service.idempotency import Completion
from service.keyed_locks import KeyedLocks
from service.services import Bank, ModeSource
from service.stores.base import LegWrite, LegWriter, Store, TransferSpec, Written
from tests.conftest import TEST_LOCK_TIMEOUT_MS

RACE_WINDOW_MS = 300
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


@pytest.mark.parametrize("second_mode", [LockMode.ATOMIC, LockMode.OPTIMISTIC])
def test_a_write_in_another_safe_mode_waits_for_a_locked_request(
    store: Store, second_mode: LockMode
) -> None:
    """locked deposit in its window + a deposit served in another safe mode: both count."""
    bank = Bank(
        store=store,
        modes=ModeSource(store, allow_unsafe_modes=False),
        process_locks=KeyedLocks(TEST_LOCK_TIMEOUT_MS),
        lock_timeout_ms=TEST_LOCK_TIMEOUT_MS,
    )
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
