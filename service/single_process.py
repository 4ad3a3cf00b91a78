"""Refuse a second gunicorn worker for a store that lives in one process.

The in-memory store is a Python object: two worker processes would hold two
banks, and a deposit acknowledged by one would be missing from the other.
`bankrace serve` refuses BANK_WORKERS > 1 before it starts gunicorn, but
`gunicorn 'service:create_app()' -w 4` never passes through it, and the app
cannot ask gunicorn for its worker count (nothing in the environment or the
app factory's reach carries it). What a worker can know is that it runs
under gunicorn (the arbiter sets SERVER_SOFTWARE=gunicorn/<version> before
forking) and who its master is (its parent process).

So each worker that builds a single-process store takes an exclusive POSIX
record lock (fcntl.lockf) on one byte of a per-user lock file, the byte at
the offset of its master's pid, and keeps it for its lifetime (one file for
every master, nothing left behind per start). A second live worker of the same master cannot get it
and refuses to load. The kernel drops a lock when its process dies, so a
worker restarted after a crash boots again; a process that builds the store
again (tests, re-created apps) already holds the lock. Outside gunicorn
nothing is locked: one process is one bank.

The refusal is raised as gunicorn's AppImportError, which gunicorn reports
as one line and answers by stopping the master ("App failed to load"),
without a traceback. Not covered: `--preload`, where the app (and the
store) is built once in the master before forking, so no worker builds one;
and a HUP reload, whose new workers boot before the old ones exit, is
refused like a second worker (they would start with an empty bank anyway).

One worker, one generation (`wait_for_the_previous_worker`): `process-lock`
is safe with one worker process, because its locks live in that process.
A HUP reload breaks that: gunicorn forks the new worker and only then
stops the old one, which still answers its requests in flight and on its
kept-alive connections (up to 2 s) while the new one serves new
connections; two processes then hold two sets of locks on one account
(measured: 7 to 10 of about 115 acknowledged deposits lost per reload, 8
clients, 50 ms race window). So when gunicorn runs one worker, each worker
holds a second lock for its lifetime, on its own file, and a new worker
that finds it held (the previous generation is still finishing) loads the
app but waits before it accepts anything, until that worker has exited
(the kernel drops the lock) -- at most the graceful timeout, after which
the master has stopped the old worker. Not covered: a USR2 binary upgrade,
whose second master (another pid) runs its own workers beside the first.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
import time
from pathlib import Path
from typing import IO

from gunicorn.errors import AppImportError

GUNICORN_SOFTWARE_PREFIX = "gunicorn/"
ONE_WORKER_LOCK_NAME = "one-worker"
# How often a waiting new worker tries the previous worker's lock again: the
# kernel has no timed wait for a record lock, and the handover need not be
# quicker than this.
HANDOVER_POLL_SECONDS = 0.05

# The lock files this process holds open, by (pid, store): closing any
# descriptor of a locked file releases the process's lock, so each is opened
# once and never closed.
_held: dict[tuple[int, str], IO[bytes]] = {}


class SecondWorkerRefused(AppImportError):  # type: ignore[misc]
    """A second worker process of one gunicorn master tried to build a one-process store."""


def refuse_a_second_worker(store_name: str) -> None:
    """Raise SecondWorkerRefused unless this is the only gunicorn worker holding `store_name`."""
    if not os.environ.get("SERVER_SOFTWARE", "").startswith(GUNICORN_SOFTWARE_PREFIX):
        return
    if (os.getpid(), store_name) in _held:
        return
    master_pid = os.getppid()
    try:
        lock_file = lock_path(store_name).open("ab")
    except OSError as error:  # fail closed: two banks would lose money silently
        raise SecondWorkerRefused(
            f"bankrace: cannot check that the {store_name} store has one worker ({error}); "
            "set TMPDIR to a writable directory"
        ) from None
    try:
        fcntl.lockf(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, master_pid)
    except OSError:  # EAGAIN or EACCES: another worker of this master holds it
        lock_file.close()
        raise SecondWorkerRefused(
            f"bankrace: the {store_name} store lives in one process, but gunicorn "
            f"(master pid {master_pid}) started a second worker (pid {os.getpid()}): each would "
            "hold its own bank. Run one worker (-w 1, BANK_WORKERS=1) or use a database."
        ) from None
    _held[os.getpid(), store_name] = lock_file


def wait_for_the_previous_worker(timeout_seconds: float) -> float | None:
    """Hold this master's one-worker lock, waiting while a previous worker still holds it.

    Returns the seconds waited, or None if the previous worker still held it
    at the timeout (nothing is held then). Outside gunicorn: 0, nothing held.
    """
    if not os.environ.get("SERVER_SOFTWARE", "").startswith(GUNICORN_SOFTWARE_PREFIX):
        return 0.0
    if (os.getpid(), ONE_WORKER_LOCK_NAME) in _held:
        return 0.0
    master_pid = os.getppid()
    started = time.monotonic()
    lock_file = _lock_file(ONE_WORKER_LOCK_NAME).open("ab")  # OSError: the worker does not boot
    waited_seconds = 0.0
    while not _try_lock(lock_file, master_pid):  # the previous worker is still finishing
        waited_seconds = time.monotonic() - started
        if waited_seconds >= timeout_seconds:
            lock_file.close()
            return None
        time.sleep(HANDOVER_POLL_SECONDS)  # a polling interval under a deadline
    _held[os.getpid(), ONE_WORKER_LOCK_NAME] = lock_file
    return waited_seconds


def _try_lock(lock_file: IO[bytes], offset: int) -> bool:
    try:
        fcntl.lockf(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, offset)
    except OSError:  # EAGAIN or EACCES: another process holds it
        return False
    return True


def lock_path(store_name: str) -> Path:
    """One lock file per user and store, in the temporary directory."""
    return _lock_file(f"{store_name}-store")


def _lock_file(name: str) -> Path:
    return Path(tempfile.gettempdir()) / f"bankrace-{name}-uid{os.getuid()}.lock"
