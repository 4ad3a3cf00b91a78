"""The SQLite database's files, watched: a connection serves only the files its path names.

An open SQLite connection holds its files by descriptor, not by name. When
the database is deleted, moved or replaced under a running service, the
connections opened before keep reading and writing the old files -- and a
write acknowledged into a deleted file is lost at the next start. When the
files are made read-only, the connections opened meanwhile are read-only
for good, even once the files are writable again. So:

- a connection never creates the database (`connect`, SQLite's `mode=rw`):
  `bankrace db upgrade` (or `bankrace serve`) does; a missing file is
  StoreUnavailable, not a new empty database beside an orphaned WAL;
- each connection remembers which files it opened (device and inode of the
  database, its -wal and -shm) and whether they were writable;
- before a connection is used (the pool's checkout; the group-commit
  writer's every batch) the path is looked at again: gone, another file, or
  writable again after a read-only open, and the connection is replaced by
  a fresh one -- which fails with StoreUnavailable (503) while the path
  names no database, and serves the files the path names once it does.

Cost: three stat() calls per checkout (about 5 us in all, measured). Not
covered: a file replaced and then put back between two checks; and an old
connection, when closed, may delete the WAL by name (SQLite does so on the
last close), so restore a database either with the service stopped or by
putting the very same files back (docs/faults.md).
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, event
from sqlalchemy import exc as sa_exc

from service.domain import StoreUnavailable

INFO_KEY = "bankrace.sqlite_files"
SIDE_FILE_SUFFIXES = ("-wal", "-shm")
MISSING_DETAIL = (
    "the database file is missing: not migrated (run `bankrace db upgrade`), or deleted"
)

Identity = tuple[int, int] | None


def _identity(path: str) -> Identity:
    try:
        status = os.stat(path)
    except OSError:
        return None
    return status.st_dev, status.st_ino


@dataclass(frozen=True)
class FileSnapshot:
    """Which files a path names (database, -wal, -shm) and whether they can be written."""

    identities: tuple[Identity, ...]
    writable: bool

    @classmethod
    def taken(cls, path: str, *, access: bool = True) -> FileSnapshot:
        """`access=False` skips the writability check (then `writable` is not looked at)."""
        names = (path, *(path + suffix for suffix in SIDE_FILE_SUFFIXES))
        identities = tuple(_identity(name) for name in names)
        writable = not access or all(
            os.access(name, os.W_OK)
            for name, identity in zip(names, identities, strict=True)
            if identity is not None
        )
        return cls(identities, writable)

    def outdated_by(self, now: FileSnapshot) -> bool:
        """A connection opened on `self` must not serve the files as they are `now`."""
        if now.identities[0] is None:
            return True  # the database is gone from its path
        for before, after in zip(self.identities, now.identities, strict=True):
            if before is not None and before != after:
                return True  # deleted or replaced (a file SQLite had not made yet is fine)
        return not self.writable and now.writable  # opened read-only: reopen it writable


def connector(path: str, timeout_seconds: float) -> Callable[[], sqlite3.Connection]:
    """The pool's way to connect: the existing database read-write, never a new one."""
    uri = Path(os.path.abspath(path)).as_uri() + "?mode=rw"
    folder = os.path.dirname(os.path.abspath(path))

    def connect() -> sqlite3.Connection:
        if os.path.isdir(folder) and not os.path.exists(path):
            raise StoreUnavailable(MISSING_DETAIL)
        # Anything else that stops it (no folder, a file where the folder should
        # be, no permission) is the driver's "unable to open database file".
        return sqlite3.connect(uri, uri=True, timeout=timeout_seconds, check_same_thread=False)

    return connect


def watch(engine: Engine, path: str) -> None:
    """Remember each connection's files when it opens; replace it when they changed."""

    @event.listens_for(engine, "connect")
    def remember(_dbapi_connection: sqlite3.Connection, record: Any) -> None:
        record.info[INFO_KEY] = (path, FileSnapshot.taken(path))

    @event.listens_for(engine, "checkout")
    def check(_dbapi_connection: sqlite3.Connection, record: Any, _proxy: Any) -> None:
        if _outdated(record.info):
            # The pool drops this connection and opens a fresh one (or fails).
            raise sa_exc.DisconnectionError("the database files changed under the connection")


def still_current(connection: Connection) -> bool:
    """For a connection kept out of the pool between uses (the group-commit writer)."""
    return not _outdated(connection.info)


def _outdated(info: dict[Any, Any]) -> bool:
    remembered = info.get(INFO_KEY)
    if remembered is None:
        return False
    path, snapshot = remembered
    # Whether the files became writable matters only to a connection opened read-only.
    return bool(snapshot.outdated_by(FileSnapshot.taken(path, access=not snapshot.writable)))
