"""The SQL store's account reads: one statement on the driver's cursor, outside any transaction.

They answer what SQLAlchemy Core's mapping answered (held money, timestamps,
NotFound), leave no SQLite read snapshot open behind them, and on
PostgreSQL give their connection back to the pool out of autocommit --
whatever the read met -- so the write transactions after them stay atomic.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from sqlalchemy import create_engine, insert, select

from service.domain import (
    Account,
    LockTimeout,
    NotFound,
    StoreUnavailable,
    utc_now,
)
from service.stores import sql_accounts
from service.stores import sql_statements as statements
from service.stores.sql import SqlStore
from service.tables import accounts, holds
from tests.conftest import SQL_BACKENDS, TEST_LOCK_TIMEOUT_MS
from tests.integration import test_stores as stores_tests

on_sql = pytest.mark.parametrize("backend", SQL_BACKENDS, indirect=True)


@pytest.fixture
def sql_store(database_url: str) -> Iterator[SqlStore]:
    built = SqlStore(database_url, lock_timeout_ms=TEST_LOCK_TIMEOUT_MS, pool_size=1)
    yield built
    built.close()


def add_hold(
    database_url: str, account_id: int, amount: int, status: str, expires_in_s: int
) -> int:
    now = utc_now()
    engine = create_engine(database_url)
    with engine.begin() as connection:
        inserted = connection.execute(
            insert(holds).values(
                account_id=account_id,
                amount=amount,
                status=status,
                captured_amount=amount if status == "captured" else None,
                expires_at=now + dt.timedelta(seconds=expires_in_s),
                created_at=now,
                updated_at=now,
            )
        )
    engine.dispose()
    key = inserted.inserted_primary_key
    assert key is not None
    return int(key[0])


def core_accounts(database_url: str, held: dict[int, int]) -> dict[int, Account]:
    """The accounts as SQLAlchemy Core maps them, with the held money given."""
    engine = create_engine(database_url)
    with engine.connect() as connection:
        rows = connection.execute(select(accounts).order_by(accounts.c.id)).all()
    engine.dispose()
    return {
        row.id: Account(
            row.id,
            row.owner,
            row.currency,
            row.balance,
            row.version,
            row.created_at,
            row.updated_at,
            held.get(row.id, 0),
        )
        for row in rows
    }


@on_sql
def test_reads_answer_what_core_maps(sql_store: SqlStore, database_url: str) -> None:
    """held counts the pending holds not yet expired; timestamps come back as Core gives them."""
    first = sql_store.open_account("alice", "USD", 100, "locked")
    second = sql_store.open_account("bob", "EUR", 50, "locked")
    empty = sql_store.open_account("carol", "USD", 0, "locked")
    add_hold(database_url, first.id, 30, "pending", 60)
    add_hold(database_url, first.id, 5, "pending", 60)
    add_hold(database_url, first.id, 7, "pending", -1)  # expired: not held
    add_hold(database_url, first.id, 11, "captured", 60)
    add_hold(database_url, second.id, 9, "voided", 60)
    expected = core_accounts(database_url, {first.id: 35})

    got = sql_store.get_account(first.id)
    assert got == expected[first.id]
    assert (got.held, got.available) == (35, 65)
    assert type(got.created_at) is type(expected[first.id].created_at)
    assert got.created_at.tzinfo == expected[first.id].created_at.tzinfo
    asked = (empty.id, first.id, second.id)
    assert sql_store.get_accounts(asked) == {
        account_id: expected[account_id] for account_id in asked
    }
    assert list(sql_store.get_accounts(asked)) == list(asked)
    assert sql_store.list_accounts(0, 2) == [expected[first.id], expected[second.id]]
    assert sql_store.list_accounts(second.id, 10) == [expected[empty.id]]
    states = sql_store.read_states((second.id, first.id))
    assert list(states) == [second.id, first.id]
    assert (states[first.id].balance, states[first.id].version, states[first.id].held) == (
        100,
        0,
        35,
    )


@on_sql
def test_a_hold_reads_as_core_maps_it(sql_store: SqlStore, database_url: str) -> None:
    """Every column, timestamps aware in UTC, the same alone, in a page and in a transaction."""
    account = sql_store.open_account("alice", "USD", 100, "locked")
    pending = add_hold(database_url, account.id, 30, "pending", 60)
    captured = add_hold(database_url, account.id, 11, "captured", 60)
    engine = create_engine(database_url)
    with engine.connect() as connection:
        rows = {row.id: row for row in connection.execute(select(holds)).all()}
    engine.dispose()
    for hold_id in (pending, captured):
        row = rows[hold_id]
        hold = sql_store.read_hold(hold_id)
        assert (hold.id, hold.account_id, hold.amount, hold.status.value) == (
            row.id,
            row.account_id,
            row.amount,
            row.status,
        )
        assert hold.captured_amount == row.captured_amount
        assert hold.voided_at is None
        for moment, stored in (
            (hold.expires_at, row.expires_at),
            (hold.created_at, row.created_at),
            (hold.updated_at, row.updated_at),
        ):
            assert moment.utcoffset() == dt.timedelta(0)
            assert moment.replace(tzinfo=None) == stored.replace(tzinfo=None)
    page = sql_store.list_holds(account.id, None, None, 10)
    assert page == [sql_store.read_hold(captured), sql_store.read_hold(pending)]
    with pytest.raises(NotFound, match="hold 999 "):
        sql_store.read_hold(999)


@on_sql
def test_missing_accounts_are_not_found_naming_the_first(sql_store: SqlStore) -> None:
    known = sql_store.open_account("alice", "USD", 100, "locked")
    with pytest.raises(NotFound, match="account 998 "):
        sql_store.get_accounts((known.id, 998, 999))
    with pytest.raises(NotFound, match="account 997 "):
        sql_store.read_states((997, known.id))
    with pytest.raises(NotFound, match="account 996 "):
        sql_store.get_account(996)


@on_sql
def test_a_failed_read_leaves_writes_atomic(
    sql_store: SqlStore, monkeypatch: pytest.MonkeyPatch, backend: str
) -> None:
    """Whatever a read raises, its connection goes back to the pool as it came (not autocommit)."""
    account = sql_store.open_account("a", "USD", 100, "locked")
    refusal = (
        psycopg.errors.QueryCanceled("canceling statement due to lock timeout")
        if backend == "postgres"
        else sqlite3.OperationalError("database is locked")
    )
    rows = sql_accounts.Reader.rows

    def failing(reader: sql_accounts.Reader, sql: str, parameters: dict[str, Any]) -> Any:
        rows(reader, sql, parameters)  # the statement ran: the connection is in use
        raise refusal

    monkeypatch.setattr(sql_accounts.Reader, "rows", failing)
    with pytest.raises(LockTimeout):
        sql_store.get_account(account.id)
    monkeypatch.undo()
    stores_tests.test_transfer_is_all_or_nothing(sql_store)  # nothing half-written


@pytest.mark.parametrize(
    "backend", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)
def test_a_read_whose_connection_dies_is_unavailable_and_the_next_one_serves(
    sql_store: SqlStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    account = sql_store.open_account("a", "USD", 100, "locked")
    monkeypatch.setattr(statements, "READ_ACCOUNT", "SELECT pg_terminate_backend(pg_backend_pid())")
    with pytest.raises(StoreUnavailable):
        sql_store.get_account(account.id)
    monkeypatch.undo()
    assert sql_store.get_account(account.id).balance == 100
    stores_tests.test_transfer_is_all_or_nothing(sql_store)  # nothing half-written


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_a_read_leaves_no_sqlite_snapshot_open(sql_store: SqlStore, database_url: str) -> None:
    """A checkpoint that must wait for every reader finds none once the reads returned."""
    account = sql_store.open_account("a", "USD", 100, "locked")
    path = database_url.removeprefix("sqlite:///")
    probe = sqlite3.connect(path, timeout=0, isolation_level=None)
    reader = sqlite3.connect(path, isolation_level=None)

    def checkpoint_busy() -> bool:
        return bool(probe.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0])

    try:
        # The probe sees a snapshot left open over frames of the WAL.
        reader.execute("BEGIN")
        reader.execute("SELECT balance FROM accounts").fetchall()
        assert checkpoint_busy()
        reader.execute("COMMIT")

        sql_store.open_account("b", "USD", 100, "locked")  # new frames, not checkpointed
        sql_store.get_account(account.id)
        sql_store.get_accounts((account.id,))
        sql_store.list_accounts(0, 10)
        sql_store.read_states((account.id,))
        assert not checkpoint_busy()
    finally:
        probe.close()
        reader.close()
