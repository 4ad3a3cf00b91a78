"""Holds in SQL: the held money, reading, inserting and ending holds, in one open transaction.

`held` is never stored: it is summed when read, over the account's rows with
`status = 'pending' AND expires_at > :now` (the index
`ix_holds_account_id_status_expires_at`), so an expired hold stops counting
at its `expires_at` without any job marking it -- nothing can lag.

Which `UPDATE holds` ends a hold says which lock mode wrote it (see
`service.modes`): `unlocked` writes the read's verdict as is; the other
read-modify-write modes add `AND expires_at > :now` (the clock moves under
any lock); `atomic`, which read nothing, also adds `AND status =
'pending'`, so of two racing captures only one matches the row (PostgreSQL
re-checks the condition on the newest row version after the first commits).

The account's own write (`sql_money`) comes with every hold change, so a
transaction that changes an account's holds holds that account's row lock
until it commits.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import Connection, select

from service.domain import (
    Hold,
    HoldAudit,
    HoldChange,
    HoldNotPending,
    HoldStatus,
    NotFound,
    utc_now,
)
from service.stores.base import LegWrite
from service.stores.sql_accounts import Reader, as_given, stored_moment
from service.stores.sql_cursor import DriverCursor, SqlDialect
from service.tables import holds

HELD = (
    "SELECT COALESCE(SUM(amount), 0) FROM holds"
    " WHERE account_id = :id AND status = 'pending' AND expires_at > :now"
)

INSERT_HOLD = (
    "INSERT INTO holds (account_id, amount, status, captured_amount, expires_at, created_at,"
    " updated_at) VALUES (:account_id, :amount, 'pending', NULL, :expires_at, :now, :now)"
    " RETURNING id"
)

# Each ending writes only its own columns: a capture written over a void
# (`unlocked`) leaves `voided_at`, a void over a capture leaves
# `captured_amount` and the journal's entry, so the audit sees both outcomes.
_CAPTURE_HOLD = (
    "UPDATE holds SET status = 'captured', captured_amount = :captured_amount,"
    " updated_at = :now WHERE id = :id"
)
_VOID_HOLD = (
    "UPDATE holds SET status = 'voided', voided_at = :now, updated_at = :now WHERE id = :id"
)
UNEXPIRED = " AND expires_at > :now"
STILL_PENDING = " AND status = 'pending'"


def end_hold_statement(*, capture: bool, check_expiry: bool, check_pending: bool) -> str:
    """The UPDATE that gives a hold its final status, guarded as the lock mode needs."""
    return (
        (_CAPTURE_HOLD if capture else _VOID_HOLD)
        + (UNEXPIRED if check_expiry else "")
        + (STILL_PENDING if check_pending else "")
    )


def held(cursor: DriverCursor, account_id: int, now: dt.datetime) -> int:
    return int(cursor.value(HELD, {"id": account_id, "now": cursor.dialect.timestamp(now)}))


READ_HOLD = (
    "SELECT id, account_id, amount, status, captured_amount, expires_at, created_at,"
    " updated_at, voided_at FROM holds WHERE id = :id"
)


def read_hold(connection: Connection, hold_id: int) -> Hold:
    """A hold, read inside an open transaction (the write path's), on the driver's cursor."""
    dialect = SqlDialect(is_postgresql=connection.dialect.name != "sqlite")
    return read_hold_on(DriverCursor(connection, dialect), hold_id)


def read_hold_on(cursor: DriverCursor, hold_id: int) -> Hold:
    row = cursor.row(READ_HOLD, {"id": hold_id})
    return _found(row, hold_id, stored_moment(cursor.dialect))


def read_hold_alone(reader: Reader, hold_id: int) -> Hold:
    """A hold, read outside any transaction: one statement (`SqlStore._read`)."""
    rows = reader.rows(READ_HOLD, {"id": hold_id})
    return _found(rows[0] if rows else None, hold_id, reader.moment)


def _found(row: tuple[Any, ...] | None, hold_id: int, moment: Callable[[Any], dt.datetime]) -> Hold:
    if row is None:
        raise NotFound(f"hold {hold_id} does not exist")
    return hold_from_values(row, moment)


def list_holds(
    connection: Connection,
    account_id: int,
    status: HoldStatus | None,
    before: int | None,
    limit: int,
    now: dt.datetime,
) -> list[Hold]:
    """Newest first; `status` as seen at `now` (expired: stored pending, past expiry)."""
    query = select(holds).where(holds.c.account_id == account_id)
    if before is not None:
        query = query.where(holds.c.id < before)
    if status is HoldStatus.PENDING:
        query = query.where(holds.c.status == "pending", holds.c.expires_at > now)
    elif status is HoldStatus.EXPIRED:
        query = query.where(holds.c.status == "pending", holds.c.expires_at <= now)
    elif status is not None:
        query = query.where(holds.c.status == status.value)
    rows = connection.execute(query.order_by(holds.c.id.desc()).limit(limit)).all()
    return [hold_from_values(row, as_given).seen_at(now) for row in rows]


def write_hold(
    cursor: DriverCursor, write: LegWrite, captured_amount: int | None, now: dt.datetime
) -> Hold | None:
    """Insert the leg's new hold or end the one it names; None if the leg changes no hold."""
    change = write.leg.hold
    if change is None:
        return None
    stamp = cursor.dialect.timestamp(now)
    if change.hold_id is None:
        return _insert(cursor, write.leg.account_id, change, now, stamp)
    sql = end_hold_statement(
        capture=captured_amount is not None,
        check_expiry=write.check_hold_expiry,
        check_pending=write.check_hold_pending,
    )
    parameters: dict[str, Any] = {"id": change.hold_id, "now": stamp}
    if captured_amount is not None:
        parameters["captured_amount"] = captured_amount
    if cursor.row_count(sql, parameters) != 1:
        stored = read_hold_on(cursor, change.hold_id)
        raise HoldNotPending(stored.id, stored.status_at(now))
    return read_hold_on(cursor, change.hold_id)


def _insert(
    cursor: DriverCursor, account_id: int, change: HoldChange, now: dt.datetime, stamp: Any
) -> Hold:
    if change.expires_at is None:
        raise ValueError("a new hold needs its expiry")
    hold_id = cursor.value(
        INSERT_HOLD,
        {
            "account_id": account_id,
            "amount": change.amount,
            "expires_at": cursor.dialect.timestamp(change.expires_at),
            "now": stamp,
        },
    )
    return Hold(
        int(hold_id),
        account_id,
        change.amount,
        HoldStatus.PENDING,
        None,
        change.expires_at,
        now,
        now,
    )


def hold_from_values(values: Sequence[Any], moment: Callable[[Any], dt.datetime]) -> Hold:
    """A hold from its columns in the table's order (`READ_HOLD`, or Core's `select(holds)`)."""
    (
        hold_id,
        account_id,
        amount,
        status,
        captured_amount,
        expires_at,
        created_at,
        updated_at,
        voided_at,
    ) = values
    return Hold(
        id=hold_id,
        account_id=account_id,
        amount=amount,
        status=HoldStatus(status),
        captured_amount=captured_amount,
        expires_at=_aware(moment(expires_at)),
        created_at=_aware(moment(created_at)),
        updated_at=_aware(moment(updated_at)),
        voided_at=None if voided_at is None else _aware(moment(voided_at)),
    )


def _aware(moment: dt.datetime) -> dt.datetime:
    """SQLite gives naive datetimes back; they are UTC by convention."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=dt.UTC)


# The hold invariants, judged by the database (see `service.domain.audit_holds`,
# the reference): each hold joined to the journal's capture entries for it.
_HOLD_OUTCOMES = """
WITH outcomes AS (
    SELECT holds.id, holds.amount, holds.status, holds.captured_amount, holds.voided_at,
           COUNT(transactions.id) AS captures,
           COALESCE(SUM(transactions.amount), 0) AS captured_total,
           SUM(CASE WHEN transactions.created_at >= holds.expires_at THEN 1 ELSE 0 END) AS late
    FROM holds LEFT JOIN transactions ON transactions.hold_id = holds.id
    {filter}
    GROUP BY holds.id, holds.amount, holds.status, holds.captured_amount, holds.voided_at
)
SELECT COALESCE(SUM(CASE WHEN captures + (CASE WHEN voided_at IS NULL THEN 0 ELSE 1 END) > 1
                              OR (captures = 1 AND status <> 'captured')
                         THEN 1 ELSE 0 END), 0) AS two_outcomes,
       COALESCE(SUM(CASE WHEN captured_total > amount
                              OR COALESCE(captured_amount, 0) > amount
                         THEN 1 ELSE 0 END), 0) AS captured_above_amount,
       COALESCE(SUM(CASE WHEN late > 0 THEN 1 ELSE 0 END), 0) AS captured_after_expiry
FROM outcomes
"""
ACCOUNT_HOLD_OUTCOMES = _HOLD_OUTCOMES.format(filter="WHERE holds.account_id = :account_id")
BANK_HOLD_OUTCOMES = _HOLD_OUTCOMES.format(filter="")
BANK_HELD = (
    "SELECT COALESCE(SUM(held), 0), COALESCE(SUM(CASE WHEN balance < held THEN 1 ELSE 0 END), 0)"
    " FROM (SELECT accounts.balance AS balance, (SELECT COALESCE(SUM(amount), 0) FROM holds"
    " WHERE holds.account_id = accounts.id AND status = 'pending' AND expires_at > :now) AS held"
    " FROM accounts) AS accounts_held"
)


def audit_account_holds(
    connection: Connection, account_id: int, balance: int, *, named: Any
) -> HoldAudit:
    now = utc_now()
    held_now = int(
        connection.exec_driver_sql(
            named(HELD), {"id": account_id, "now": _timestamp(connection, now)}
        ).scalar_one()
    )
    row = connection.exec_driver_sql(named(ACCOUNT_HOLD_OUTCOMES), {"account_id": account_id}).one()
    return HoldAudit(
        held=held_now,
        two_outcomes=int(row.two_outcomes),
        captured_above_amount=int(row.captured_above_amount),
        captured_after_expiry=int(row.captured_after_expiry),
        overcommitted_accounts=1 if balance < held_now else 0,
    )


def audit_bank_holds(connection: Connection, *, named: Any) -> HoldAudit:
    held_row = connection.exec_driver_sql(
        named(BANK_HELD), {"now": _timestamp(connection, utc_now())}
    ).one()
    row = connection.exec_driver_sql(named(BANK_HOLD_OUTCOMES), {}).one()
    return HoldAudit(
        held=int(held_row[0]),
        two_outcomes=int(row.two_outcomes),
        captured_above_amount=int(row.captured_above_amount),
        captured_after_expiry=int(row.captured_after_expiry),
        overcommitted_accounts=int(held_row[1]),
    )


def _timestamp(connection: Connection, moment: dt.datetime) -> Any:
    return SqlDialect(is_postgresql=connection.dialect.name != "sqlite").timestamp(moment)
