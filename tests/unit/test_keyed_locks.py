"""KeyedLocks: one lock per account, every wait bounded, nothing left held.

Threads are ordered with Events and Barriers; nothing sleeps to synchronise.
Every wait in these tests has a deadline, so a regression fails instead of
hanging the run.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest

from service.domain import LockTimeout
from service.keyed_locks import KeyedLocks

SHORT_TIMEOUT_MS = 100
# How long a test waits for a helper thread before declaring it hung.
JOIN_DEADLINE_SECONDS = 10.0


class Holder:
    """A thread that holds some keys until told to let go."""

    def __init__(self, locks: KeyedLocks, keys: list[int]) -> None:
        self.holding = threading.Event()
        self.release = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(locks, keys), daemon=True)

    def _run(self, locks: KeyedLocks, keys: list[int]) -> None:
        try:
            with locks.holding(keys):
                self.holding.set()
                self.release.wait(JOIN_DEADLINE_SECONDS)
        except BaseException as error:  # reported to the test thread
            self.error = error

    def __enter__(self) -> Holder:
        self._thread.start()
        assert self.holding.wait(JOIN_DEADLINE_SECONDS), "the holder never got its locks"
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release.set()
        self._thread.join(JOIN_DEADLINE_SECONDS)
        assert not self._thread.is_alive()
        assert self.error is None


def run_in_thread(target: Callable[[], None]) -> Callable[[], BaseException | None]:
    """Start `target`; return a join function giving the exception it raised, if any."""
    outcome: list[BaseException | None] = [None]

    def wrapper() -> None:
        try:
            target()
        except BaseException as error:  # reported to the test thread
            outcome[0] = error

    thread = threading.Thread(target=wrapper, daemon=True)
    thread.start()

    def join() -> BaseException | None:
        thread.join(JOIN_DEADLINE_SECONDS)
        assert not thread.is_alive(), "a thread hung on a lock"
        return outcome[0]

    return join


def acquirable(locks: KeyedLocks, keys: list[int]) -> bool:
    """Whether another thread can take these keys right now (within the short timeout)."""
    result: list[bool] = []

    def attempt() -> None:
        try:
            with locks.holding(keys):
                result.append(True)
        except LockTimeout:
            result.append(False)

    assert run_in_thread(attempt)() is None
    return result == [True]


def test_free_keys_are_taken_at_once() -> None:
    """Keys nobody holds are acquired and the block runs."""
    locks = KeyedLocks(SHORT_TIMEOUT_MS)
    entered = False
    with locks.holding([1, 2, 3]):
        entered = True
    assert entered


def test_held_lock_makes_a_second_acquirer_time_out() -> None:
    """While one thread holds a key, another's wait for it ends in LockTimeout after the bound."""
    locks = KeyedLocks(SHORT_TIMEOUT_MS)
    with Holder(locks, [7]):
        started = time.monotonic()
        with pytest.raises(LockTimeout, match="account 7"), locks.holding([7]):
            pytest.fail("entered a block whose lock another thread holds")
        waited = time.monotonic() - started
    assert waited >= SHORT_TIMEOUT_MS / 1000 * 0.9
    assert waited < JOIN_DEADLINE_SECONDS


def test_waiter_gets_the_lock_once_it_is_released() -> None:
    """A waiter within its bound proceeds as soon as the holder lets go."""
    locks = KeyedLocks(5000)
    entered = threading.Event()

    def wait_for_key() -> None:
        with locks.holding([1]):
            entered.set()

    with Holder(locks, [1]) as holder:
        join = run_in_thread(wait_for_key)
        assert not entered.is_set()
        holder.release.set()
    assert join() is None
    assert entered.is_set()


def test_the_same_thread_taking_a_key_twice_times_out_instead_of_hanging() -> None:
    """A lock is not re-entrant: taking it twice is the seed's self-deadlock, bounded to a 503."""
    locks = KeyedLocks(SHORT_TIMEOUT_MS)
    with pytest.raises(LockTimeout), locks.holding([1]), locks.holding([1]):
        pytest.fail("a key was held twice at once")
    assert acquirable(locks, [1])


def test_opposite_orders_end_in_lock_timeout_not_a_hang() -> None:
    """Two threads taking keys 1,2 and 2,1 deadlock; the bounded wait turns it into LockTimeout."""
    locks = KeyedLocks(SHORT_TIMEOUT_MS * 3)
    both_hold_their_first = threading.Barrier(2, timeout=JOIN_DEADLINE_SECONDS)

    def ordered(first: int, second: int) -> Iterator[int]:
        yield first
        both_hold_their_first.wait()  # each now holds its first key and wants the other's
        yield second

    def transfer(first: int, second: int) -> Callable[[], None]:
        def run() -> None:
            with locks.holding(ordered(first, second)):
                pass

        return run

    joins = [run_in_thread(transfer(1, 2)), run_in_thread(transfer(2, 1))]
    outcomes = [join() for join in joins]
    assert any(isinstance(outcome, LockTimeout) for outcome in outcomes), outcomes
    assert all(outcome is None or isinstance(outcome, LockTimeout) for outcome in outcomes)
    assert acquirable(locks, [1, 2])


def test_same_order_never_deadlocks() -> None:
    """Threads that all take keys in ascending order all finish (the sorted-order fix)."""
    locks = KeyedLocks(5000)
    start = threading.Barrier(4, timeout=JOIN_DEADLINE_SECONDS)
    counter = [0]

    def worker() -> None:
        start.wait()
        for _ in range(200):
            with locks.holding([1, 2]):
                counter[0] += 1

    joins = [run_in_thread(worker) for _ in range(4)]
    assert [join() for join in joins] == [None] * 4
    assert counter[0] == 800


def test_locks_are_released_after_an_exception() -> None:
    """An exception inside the block releases every key it held."""
    locks = KeyedLocks(SHORT_TIMEOUT_MS)
    with pytest.raises(RuntimeError, match="boom"), locks.holding([1, 2]):
        raise RuntimeError("boom")
    assert acquirable(locks, [1])
    assert acquirable(locks, [2])


def test_keys_taken_before_a_timeout_are_released() -> None:
    """When the second key times out, the first one (already taken) is released too."""
    locks = KeyedLocks(SHORT_TIMEOUT_MS)
    with Holder(locks, [2]):
        with pytest.raises(LockTimeout, match="account 2"), locks.holding([1, 2]):
            pytest.fail("entered without key 2")
        assert acquirable(locks, [1])
        assert not acquirable(locks, [2])


def test_different_keys_do_not_block_each_other() -> None:
    """Holding one account's key leaves every other account free."""
    locks = KeyedLocks(SHORT_TIMEOUT_MS)
    with Holder(locks, [1]):
        assert acquirable(locks, [2, 3])
        assert not acquirable(locks, [3, 1])


def test_one_deadline_covers_all_keys() -> None:
    """The bound is for the whole acquisition, not per key: time spent on key 1 counts for key 2."""
    timeout_ms = 400
    spent_before_second_key_seconds = 0.3
    locks = KeyedLocks(timeout_ms)

    def keys() -> Iterator[int]:
        yield 1
        # Use up most of the deadline between the two keys (consuming time, not waiting
        # for another thread); a per-key bound would then wait a full timeout more.
        threading.Event().wait(spent_before_second_key_seconds)
        yield 2

    with Holder(locks, [2]):
        started = time.monotonic()
        with pytest.raises(LockTimeout), locks.holding(keys()):
            pytest.fail("entered without key 2")
        waited = time.monotonic() - started
    assert waited >= timeout_ms / 1000 * 0.9
    assert waited < spent_before_second_key_seconds + timeout_ms / 1000 * 0.75


def test_keys_nobody_holds_or_awaits_leave_no_lock_behind() -> None:
    """Locks are kept only while held or awaited: random account ids cannot grow memory."""
    locks = KeyedLocks(SHORT_TIMEOUT_MS)
    for key in range(0, 50_000, 7):
        with locks.holding([key, key + 1]):
            pass
    with pytest.raises(LockTimeout), locks.holding([3]), locks.holding([3]):
        pytest.fail("a key was held twice at once")
    assert locks.tracked_keys() == 0


def test_a_waiter_keeps_the_lock_it_waits_for_alive() -> None:
    """While one thread holds a key and another waits, both share one lock; then it is dropped."""
    locks = KeyedLocks(5000)
    entered = threading.Event()

    def wait_for_key() -> None:
        with locks.holding([9]):
            entered.set()

    with Holder(locks, [9]) as holder:
        join = run_in_thread(wait_for_key)
        assert locks.tracked_keys() == 1
        holder.release.set()
    assert join() is None
    assert entered.is_set()
    assert locks.tracked_keys() == 0
