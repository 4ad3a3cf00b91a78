"""One SQLite writer at a time across processes, waiting in the kernel.

SQLite's own lock is polled: a writer that finds it taken sleeps in the busy
handler (1, 2, 5, 10 ... 100 ms) and looks again, so two gunicorn workers'
group-commit writers take turns badly -- one sleeps while the other has long
finished, and tail latency grows to seconds (measured: p99 1.8 s with two
workers against 0.12 s with one). An exclusive `flock` on a file beside the
database queues the writers in the kernel instead: the waiter is woken the
moment the holder lets go. SQLite's lock is still taken (BEGIN IMMEDIATE)
inside it, so writers that do not use this lock (a migration, `bankrace
serve` storing the mode) stay excluded as before.

The kernel releases the lock of a process that dies, so a killed worker
never blocks the others. `close()` never pulls the descriptor from under a
holder (a writer still busy when the store closes): the last holder closes
it as it lets go. A holder that is paused (SIGSTOP) blocks them; the
requests waiting behind it time out at their own deadline with a 503.
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

LOCK_FILE_SUFFIX = "-writer.lock"


class WriterLock:
    def __init__(self, database_path: str) -> None:
        self._path = database_path + LOCK_FILE_SUFFIX
        self._descriptor: int | None = None
        # Guards the descriptor's life: close() must not close it under a
        # holder. That would drop the lock while the holder still writes, and
        # the holder's unlock would then hit a closed -- or reused -- number.
        self._guard = threading.Lock()
        self._holders = 0
        self._closing = False

    def _file(self) -> int:
        # Opened on first use, in the worker (after gunicorn forks): a lock
        # file descriptor shared across a fork would be one lock for both.
        if self._descriptor is None:
            self._descriptor = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
        return self._descriptor

    @contextmanager
    def held(self) -> Iterator[None]:
        with self._guard:
            descriptor = self._file()
            self._holders += 1
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)  # blocks without the GIL
            try:
                yield
            finally:
                fcntl.flock(descriptor, fcntl.LOCK_UN)
        finally:
            with self._guard:
                self._holders -= 1
                if self._closing and self._holders == 0:
                    self._close_descriptor()

    def close(self) -> None:
        """Close the descriptor now, or when the last holder lets go of the lock."""
        with self._guard:
            if self._holders:
                self._closing = True
            else:
                self._close_descriptor()

    def _close_descriptor(self) -> None:
        if self._descriptor is not None:
            os.close(self._descriptor)
            self._descriptor = None
        self._closing = False
