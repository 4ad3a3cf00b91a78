"""The journal in SQL, as the API reads it: one entry, an account's page, a transfer and its legs.

SQLAlchemy Core, which maps the columns' types; the entries themselves are
written by `sql_money` and `sql_accounts`.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Row, select

from service.domain import NotFound, Transaction, TransactionKind, Transfer
from service.stores.sql_accounts import require_account
from service.tables import transactions, transfers


def get_transaction(connection: Connection, transaction_id: int) -> Transaction:
    row = connection.execute(
        select(transactions).where(transactions.c.id == transaction_id)
    ).first()
    if row is None:
        raise NotFound(f"transaction {transaction_id} does not exist")
    return _transaction(row)


def list_transactions(
    connection: Connection, account_id: int, before: int | None, limit: int
) -> list[Transaction]:
    """Newest first, ids below `before` when given; NotFound for an unknown account."""
    query = select(transactions).where(transactions.c.account_id == account_id)
    if before is not None:
        query = query.where(transactions.c.id < before)
    require_account(connection, account_id)
    rows = connection.execute(query.order_by(transactions.c.id.desc()).limit(limit)).all()
    return [_transaction(row) for row in rows]


def get_transfer(connection: Connection, transfer_id: int) -> Transfer:
    row = connection.execute(select(transfers).where(transfers.c.id == transfer_id)).first()
    if row is None:
        raise NotFound(f"transfer {transfer_id} does not exist")
    legs = connection.execute(
        select(transactions)
        .where(transactions.c.transfer_id == transfer_id)
        .order_by(transactions.c.id)
    ).all()
    return Transfer(
        row.id,
        row.from_account,
        row.to_account,
        row.amount,
        row.lock_mode,
        row.created_at,
        tuple(_transaction(leg) for leg in legs),
    )


def _transaction(row: Row[Any]) -> Transaction:
    return Transaction(
        id=row.id,
        account_id=row.account_id,
        kind=TransactionKind(row.kind),
        amount=row.amount,
        balance_after=row.balance_after,
        transfer_id=row.transfer_id,
        lock_mode=row.lock_mode,
        created_at=row.created_at,
        hold_id=row.hold_id,
    )
