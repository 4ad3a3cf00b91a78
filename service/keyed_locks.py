"""A lock per key (account id) inside one process, every wait bounded.

Used twice: as the in-memory store's row locks, and as the `process-lock`
mode's textbook `threading.Lock` per account. Locks are taken in the order
given; taking them in ascending order everywhere is what makes transfers
deadlock-free, and the bounded wait is what turns the seed's fourth lesson
(a lock acquired twice, or two locks in opposite orders) into a 503 instead
of a hung worker.

A lock exists only while some thread holds or awaits it (a reference count
under the guard): asking about a million random account ids leaves nothing
behind, so memory is bounded by the threads, not by the ids clients send.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from service.domain import LockTimeout


class _CountedLock:
    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.users = 0  # threads holding or awaiting it; changed under the guard


class KeyedLocks:
    def __init__(self, timeout_ms: int) -> None:
        self._timeout_seconds = timeout_ms / 1000
        self._guard = threading.Lock()
        self._locks: dict[int, _CountedLock] = {}

    def tracked_keys(self) -> int:
        """How many keys have a lock right now (held or awaited)."""
        with self._guard:
            return len(self._locks)

    def _join(self, key: int) -> _CountedLock:
        with self._guard:
            entry = self._locks.get(key)
            if entry is None:
                entry = self._locks[key] = _CountedLock()
            entry.users += 1
            return entry

    def _leave(self, key: int, entry: _CountedLock) -> None:
        with self._guard:
            entry.users -= 1
            if entry.users == 0:
                del self._locks[key]

    @contextmanager
    def holding(self, keys: Iterable[int]) -> Iterator[None]:
        """Hold every key's lock, acquired in order, all within one deadline."""
        deadline = time.monotonic() + self._timeout_seconds
        joined: list[tuple[int, _CountedLock]] = []
        held: list[threading.Lock] = []
        try:
            for key in keys:
                entry = self._join(key)
                joined.append((key, entry))
                if not entry.lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
                    raise LockTimeout(
                        f"waited {self._timeout_seconds * 1000:.0f} ms "
                        f"for the lock on account {key}"
                    )
                held.append(entry.lock)
            yield
        finally:
            for lock in reversed(held):
                lock.release()
            for key, entry in reversed(joined):
                self._leave(key, entry)
