"""A lock per key (account id) inside one process, every wait bounded.

Used twice: as the in-memory store's row locks, and as the `process-lock`
mode's textbook `threading.Lock` per account. Locks are taken in the order
given; taking them in ascending order everywhere is what makes transfers
deadlock-free, and the bounded wait is what turns the seed's fourth lesson
(a lock acquired twice, or two locks in opposite orders) into a 503 instead
of a hung worker.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from service.domain import LockTimeout


class KeyedLocks:
    def __init__(self, timeout_ms: int) -> None:
        self._timeout_seconds = timeout_ms / 1000
        self._guard = threading.Lock()
        self._locks: dict[int, threading.Lock] = {}

    def _lock_for(self, key: int) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())

    @contextmanager
    def holding(self, keys: Iterable[int]) -> Iterator[None]:
        """Hold every key's lock, acquired in order, all within one deadline."""
        deadline = time.monotonic() + self._timeout_seconds
        held: list[threading.Lock] = []
        try:
            for key in keys:
                lock = self._lock_for(key)
                if not lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
                    raise LockTimeout(
                        f"waited {self._timeout_seconds * 1000:.0f} ms "
                        f"for the lock on account {key}"
                    )
                held.append(lock)
            yield
        finally:
            for lock in reversed(held):
                lock.release()
