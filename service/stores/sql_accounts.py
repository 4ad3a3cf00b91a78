"""Accounts in SQL: open one (and journal its opening balance), read one or a page.

Opening runs on the write path's driver cursor; the reads run one statement
each on the driver's cursor outside any transaction (`Reader`), with the
held money summed in the same statement (`sql_statements.ACCOUNTS_WITH_HELD`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import Connection, select

from service.domain import Account, BalanceState, NotFound, TransactionKind, utc_now
from service.idempotency import Completion
from service.stores import sql_keys
from service.stores import sql_statements as statements
from service.stores.sql_cursor import DriverCursor, SqlDialect
from service.tables import accounts


def open_account(
    cursor: DriverCursor,
    owner: str,
    currency: str,
    opening_balance: int,
    lock_mode: str,
    completion: Completion | None = None,
) -> Account:
    now = utc_now()
    stamp = cursor.dialect.timestamp(now)
    account_id = cursor.value(
        statements.INSERT_ACCOUNT,
        {
            "owner": owner,
            "currency": currency,
            "balance": opening_balance,
            "created_at": stamp,
        },
    )
    if opening_balance > 0:
        cursor.row(
            statements.INSERT_TRANSACTION,
            {
                "account_id": account_id,
                "kind": TransactionKind.OPEN.value,
                "amount": opening_balance,
                "balance_after": opening_balance,
                "transfer_id": None,
                "lock_mode": lock_mode,
                "created_at": stamp,
                "hold_id": None,
            },
        )
    account = Account(account_id, owner, currency, opening_balance, 0, now, now)
    sql_keys.complete(cursor, completion, account)
    return account


# psycopg: the read cursors kept with a pooled connection, at most this many
# (a cursor builds its adaptation context anew whenever its statement changes).
KEPT_READ_CURSORS = 32


class Reader:
    """Read statements on the driver's cursors, outside any transaction (`SqlStore._read`).

    A single statement is its own snapshot on both databases, so the reads
    here need no BEGIN and no COMMIT; every row is fetched at once, so no
    statement stays open behind a read (on SQLite an open statement would
    keep its read snapshot). On PostgreSQL each statement keeps a cursor of
    its own with the pooled connection (`kept`), as the write path does.
    Rows come back as the driver gives them; `moment` maps a timestamp as
    SQLAlchemy's DateTime does: SQLite stores text and gives back a naive
    datetime (UTC by convention), psycopg the aware datetime as it is.
    """

    def __init__(self, driver: Any, dialect: SqlDialect, kept: dict[str, Any] | None) -> None:
        self._driver = driver
        self._kept = kept
        self._cursor: Any = None
        self.dialect = dialect
        self.moment = stored_moment(dialect)

    def rows(self, sql: str, parameters: dict[str, Any]) -> list[tuple[Any, ...]]:
        statement = self.dialect.sql(sql)
        cursor = self._cursor_for(statement)
        cursor.execute(statement, parameters)
        rows: list[tuple[Any, ...]] = cursor.fetchall()
        return rows

    def _cursor_for(self, statement: str) -> Any:
        if self._kept is not None and statement in self._kept:
            return self._kept[statement]
        cursor = self._driver.cursor()
        if self._kept is not None and len(self._kept) < KEPT_READ_CURSORS:
            self._kept[statement] = cursor
        elif self._cursor is None:
            self._cursor = cursor
        return cursor

    def close(self) -> None:
        """Close the cursor not kept (each read uses one at most)."""
        if self._cursor is not None:
            self._cursor.close()

    def now(self) -> Any:
        """The present as a parameter (the held money counts the holds not yet expired)."""
        return self.dialect.timestamp(utc_now())


def stored_moment(dialect: SqlDialect) -> Callable[[Any], dt.datetime]:
    """A driver's timestamp as SQLAlchemy's DateTime maps it (SQLite: naive, UTC by convention)."""
    return as_given if dialect.is_postgresql else dt.datetime.fromisoformat


def as_given(moment: dt.datetime) -> dt.datetime:
    return moment


def get_account(reader: Reader, account_id: int) -> Account:
    rows = reader.rows(statements.READ_ACCOUNT, {"id": account_id, "now": reader.now()})
    if not rows:
        raise NotFound(f"account {account_id} does not exist")
    return _account(reader, rows[0])


def get_accounts(reader: Reader, account_ids: Sequence[int]) -> dict[int, Account]:
    """The accounts in the order asked, from one statement (one snapshot).

    NotFound names the first unknown id.
    """
    parameters: dict[str, Any] = {"now": reader.now()}
    for position, account_id in enumerate(account_ids):
        parameters[statements.id_parameter(position)] = account_id
    rows = reader.rows(statements.read_accounts(len(account_ids)), parameters)
    found = {row[0]: row for row in rows}
    for account_id in account_ids:
        if account_id not in found:
            raise NotFound(f"account {account_id} does not exist")
    return {account_id: _account(reader, found[account_id]) for account_id in account_ids}


def read_states(reader: Reader, account_ids: Sequence[int]) -> dict[int, BalanceState]:
    """What a read-modify-write outside a lock reads: balance, version and held, one snapshot."""
    return {
        account.id: BalanceState(account.id, account.balance, account.version, account.held)
        for account in get_accounts(reader, account_ids).values()
    }


def list_accounts(reader: Reader, after: int, limit: int) -> list[Account]:
    rows = reader.rows(
        statements.LIST_ACCOUNTS, {"after": after, "limit": limit, "now": reader.now()}
    )
    return [_account(reader, row) for row in rows]


def require_account(connection: Connection, account_id: int) -> None:
    """NotFound unless the account exists."""
    if connection.execute(select(accounts.c.id).where(accounts.c.id == account_id)).first() is None:
        raise NotFound(f"account {account_id} does not exist")


def _account(reader: Reader, row: tuple[Any, ...]) -> Account:
    account_id, owner, currency, balance, version, created_at, updated_at, held = row
    return Account(
        id=account_id,
        owner=owner,
        currency=currency,
        balance=balance,
        version=version,
        created_at=reader.moment(created_at),
        updated_at=reader.moment(updated_at),
        held=int(held),
    )
