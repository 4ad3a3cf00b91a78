"""The SQLite store notices when its files are deleted, replaced or read-only under it.

A connection opened earlier keeps the file it opened: deleted from its
folder, that file still takes writes, which are gone at the next start. So
the store answers StoreUnavailable while its path names no file, never
creates an empty database in its place, and serves again, with fresh
connections, once the path names a database file again (docs/faults.md).
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from service.domain import Leg, StoreUnavailable, TransactionKind
from service.schema import upgrade
from service.stores.base import LegWrite
from service.stores.sql import SqlStore

LOCK_TIMEOUT_MS = 1000
SIDE_FILES = ("-wal", "-shm")


def deposit(store: SqlStore, account_id: int, amount: int) -> None:
    store.write_legs([LegWrite(Leg(account_id, TransactionKind.DEPOSIT, amount))], "atomic")


@pytest.fixture
def database(tmp_path: Path) -> Path:
    path = tmp_path / "bank.db"
    upgrade(f"sqlite:///{path}")
    return path


def test_a_deleted_file_is_unavailable_and_a_restored_one_serves(
    database: Path, tmp_path: Path
) -> None:
    """Unlinked: reads and writes raise StoreUnavailable, no new file; linked back: served."""
    store = SqlStore(f"sqlite:///{database}", lock_timeout_ms=LOCK_TIMEOUT_MS, pool_size=2)
    try:
        account = store.open_account("alice", "USD", 10, "atomic").id
        deposit(store, account, 1)
        rescue = tmp_path / "rescue"
        rescue.mkdir()
        names = [database.name, *(database.name + suffix for suffix in SIDE_FILES)]
        for name in names:
            os.link(database.parent / name, rescue / name)
            os.unlink(database.parent / name)
        with pytest.raises(StoreUnavailable):
            deposit(store, account, 2)
        with pytest.raises(StoreUnavailable):
            store.get_account(account)
        with pytest.raises(StoreUnavailable):
            store.check_ready()
        assert not database.exists()
        for name in names:
            os.link(rescue / name, database.parent / name)
        deposit(store, account, 4)
        assert store.get_account(account).balance == 15
    finally:
        store.close()


def test_a_replaced_file_is_served_from_the_new_one(database: Path, tmp_path: Path) -> None:
    """A copy moved over the path (a restore): the store reopens it, not the old file."""
    store = SqlStore(f"sqlite:///{database}", lock_timeout_ms=LOCK_TIMEOUT_MS, pool_size=2)
    try:
        account = store.open_account("alice", "USD", 10, "atomic").id
        copy = tmp_path / "copy.db"
        with sqlite3.connect(database) as source, sqlite3.connect(copy) as target:
            source.backup(target)
        deposit(store, account, 1)  # only in the old file
        for suffix in SIDE_FILES:
            Path(f"{database}{suffix}").unlink()
        os.replace(copy, database)
        deposit(store, account, 2)
        assert store.get_account(account).balance == 12
    finally:
        store.close()


def test_a_missing_file_is_never_created_by_the_store(tmp_path: Path) -> None:
    """The service does not make a database; `bankrace db upgrade` (or serve) does."""
    database = tmp_path / "bank.db"
    store = SqlStore(f"sqlite:///{database}", lock_timeout_ms=LOCK_TIMEOUT_MS, pool_size=2)
    try:
        with pytest.raises(StoreUnavailable, match="not migrated"):
            store.check_ready()
        assert not database.exists()
    finally:
        store.close()
