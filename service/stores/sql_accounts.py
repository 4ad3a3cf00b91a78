"""Accounts in SQL: open one (and journal its opening balance), read one or a page.

Opening runs on the write path's driver cursor; the reads for the API use
SQLAlchemy Core, which maps the columns' types.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, Row, Select, select

from service.domain import Account, NotFound, TransactionKind, utc_now
from service.idempotency import Completion
from service.stores import sql_holds, sql_keys
from service.stores import sql_statements as statements
from service.stores.sql_cursor import DriverCursor
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


def _with_held() -> Select[Any]:
    """The accounts with `held` summed in the same statement (one snapshot)."""
    return select(accounts, sql_holds.held_column(utc_now()))


def get_account(connection: Connection, account_id: int) -> Account:
    row = connection.execute(_with_held().where(accounts.c.id == account_id)).first()
    if row is None:
        raise NotFound(f"account {account_id} does not exist")
    return _account(row)


def get_accounts(connection: Connection, account_ids: Sequence[int]) -> dict[int, Account]:
    rows = connection.execute(_with_held().where(accounts.c.id.in_(list(account_ids)))).all()
    found = {row.id: _account(row) for row in rows}
    for account_id in account_ids:
        if account_id not in found:
            raise NotFound(f"account {account_id} does not exist")
    return {account_id: found[account_id] for account_id in account_ids}


def list_accounts(connection: Connection, after: int, limit: int) -> list[Account]:
    rows = connection.execute(
        _with_held().where(accounts.c.id > after).order_by(accounts.c.id).limit(limit)
    ).all()
    return [_account(row) for row in rows]


def require_account(connection: Connection, account_id: int) -> None:
    """NotFound unless the account exists."""
    if connection.execute(select(accounts.c.id).where(accounts.c.id == account_id)).first() is None:
        raise NotFound(f"account {account_id} does not exist")


def _account(row: Row[Any]) -> Account:
    return Account(
        id=row.id,
        owner=row.owner,
        currency=row.currency,
        balance=row.balance,
        version=row.version,
        created_at=row.created_at,
        updated_at=row.updated_at,
        held=int(row.held),
    )
