"""KeyedLocks: one lock per account, every wait bounded, nothing left held.

Threads are ordered with Events and Barriers, and a waiter is shown waiting
by the lock's own count of its users before anything is released; nothing
sleeps to synchronise. Every wait in these tests has a deadline, so a
regression fails instead of hanging the run.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest

from service import keyed_locks
from service.domain import LockTimeout
from service.keyed_locks import KeyedLocks

SHORT_TIMEOUT_MS = 100
# How long a test waits for a helper thread before declaring it hung.
JOIN_DEADLINE_SECONDS = 10.0
POLL_SECONDS = 0.001


class Holder:
    """A thread that takes some keys and holds them until told to let go."""

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

    def start(self) -> Holder:
        """Start taking the keys, without waiting for them."""
        self._thread.start()
        return self

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        self.release.set()
        self._thread.join(JOIN_DEADLINE_SECONDS)
        assert not self._thread.is_alive()
        assert self.error is None

    def __enter__(self) -> Holder:
        self.start()
        assert self.holding.wait(JOIN_DEADLINE_SECONDS), "the holder never got its locks"
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def users_of(locks: KeyedLocks, key: int) -> int:
    """Threads holding or awaiting `key`'s lock: KeyedLocks' own count, the one sign that a
    thread is inside the lock's acquire (it joins the count just before)."""
    entry = locks._locks.get(key)
    return 0 if entry is None else entry.users


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + JOIN_DEADLINE_SECONDS
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(POLL_SECONDS)  # a poll of the observable state, not a synchronisation


def wait_until_waiting(locks: KeyedLocks, key: int, waiter: Holder) -> None:
    """Poll until `waiter` waits for `key`, held by one other thread: the lock has two users
    and the waiter is alive and not in. Fails at once if it got in or gave up."""
    wait_until(
        lambda: users_of(locks, key) == 2 or waiter.holding.is_set() or not waiter.alive,
        f"a second thread to wait for key {key}",
    )
    assert not waiter.holding.is_set(), f"a second thread got key {key} while another held it"
    assert waiter.alive and waiter.error is None, waiter.error


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
    """A thread seen waiting for a held key gets it as soon as the holder lets go."""
    locks = KeyedLocks(5000)
    with Holder(locks, [1]) as holder:
        waiter = Holder(locks, [1]).start()
        wait_until_waiting(locks, 1, waiter)
        holder.release.set()
        assert waiter.holding.wait(JOIN_DEADLINE_SECONDS), "the waiter never got the key"
    waiter.stop()
    assert locks.tracked_keys() == 0


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


class SteppedClock:
    """service.keyed_locks' clock: the real one, plus the time a test says has passed."""

    def __init__(self) -> None:
        self.skipped_seconds = 0.0

    def monotonic(self) -> float:
        return time.monotonic() + self.skipped_seconds


def test_one_deadline_covers_all_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    """The bound is for the whole acquisition, not per key: once key 1 has used up all the
    time, the held key 2 is given up on at once instead of after a second full timeout."""
    timeout_ms = 2000
    clock = SteppedClock()
    monkeypatch.setattr(keyed_locks, "time", clock)
    locks = KeyedLocks(timeout_ms)
    asked_for_second_key: list[float] = []

    def keys() -> Iterator[int]:
        yield 1
        clock.skipped_seconds += timeout_ms / 1000  # the whole deadline spent on key 1
        asked_for_second_key.append(time.monotonic())
        yield 2

    with Holder(locks, [2]):
        with pytest.raises(LockTimeout, match="account 2"), locks.holding(keys()):
            pytest.fail("entered without key 2")
        second_key_wait_seconds = time.monotonic() - asked_for_second_key[0]
        assert acquirable(locks, [1])
    print(f"gave up on key 2 after {second_key_wait_seconds * 1000:.1f} ms")
    # A per-key bound would wait the full timeout here; a shared deadline does not wait.
    assert second_key_wait_seconds < timeout_ms / 1000 / 2


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
    """The holder leaves while a thread waits: the waiter gets that same lock, so a third
    thread still has to wait for it; once both are done the lock is dropped."""
    locks = KeyedLocks(5000)
    with Holder(locks, [9]) as holder:
        waiter = Holder(locks, [9]).start()
        wait_until_waiting(locks, 9, waiter)
    assert holder.release.is_set()
    assert waiter.holding.wait(JOIN_DEADLINE_SECONDS), "the waiter never got the key"
    third = Holder(locks, [9]).start()
    wait_until_waiting(locks, 9, third)  # a lock dropped under the waiter would let it in
    waiter.stop()
    assert third.holding.wait(JOIN_DEADLINE_SECONDS), "the third thread never got the key"
    third.stop()
    assert locks.tracked_keys() == 0
