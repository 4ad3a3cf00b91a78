"""The audits as single SQL statements: the database does the arithmetic.

One statement per audit, so it reads one consistent snapshot on both
databases without a long transaction, and memory stays bounded: the journal
is scanned once in `(account_id, id)` order (the index) by window functions,
never loaded into Python. The checks are those of `service.domain.audit_account`
(the reference the tests compare against): the journal sum, chain breaks
(an entry whose `balance_after` is not the previous one plus or minus its
amount), and the lowest running balance.

A bank-wide audit of millions of rows takes seconds; it is bounded by
AUDIT_TIMEOUT_MS (PostgreSQL `statement_timeout`, an SQLite progress handler)
and a timeout answers 503 `audit_timeout`, not a lock timeout.

Totals are summed in two halves (quotient and remainder by 2**32) so that
SQLite's 64-bit SUM cannot overflow however many accounts hold the maximum
balance; Python puts the halves back together exactly.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection
from sqlalchemy import exc as sa_exc

from service.domain import AccountAudit, AuditTimeout, BankAudit, NotFound
from service.stores.sql_errors import QUERY_CANCELED, sqlstate

AUDIT_TIMEOUT_MS = 20_000
# How many SQLite virtual-machine steps pass between two looks at the clock.
SQLITE_PROGRESS_STEPS = 10_000
HALF = 2**32

_AUDITED = """
WITH entries AS (
    SELECT account_id, signed_amount,
           balance_after - COALESCE(LAG(balance_after) OVER journal_order, 0) - signed_amount
               AS chain_gap,
           SUM(signed_amount) OVER journal_order AS running_balance
    FROM (
        SELECT id, account_id, balance_after,
               CASE WHEN kind IN ('withdrawal', 'transfer_out', 'capture') THEN -amount
                    ELSE amount END
                   AS signed_amount
        FROM transactions {journal_filter}
    ) AS journal
    WINDOW journal_order AS (
        PARTITION BY account_id ORDER BY id ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW
    )
),
books AS (
    SELECT account_id,
           -- PostgreSQL sums BIGINT as NUMERIC: back to an integer, so the
           -- halves below are integer divisions on both databases.
           CAST(SUM(signed_amount) AS BIGINT) AS journal_balance,
           SUM(CASE WHEN chain_gap <> 0 THEN 1 ELSE 0 END) AS chain_breaks,
           MIN(running_balance) AS lowest_running
    FROM entries GROUP BY account_id
),
audited AS (
    SELECT accounts.id AS account_id,
           accounts.balance AS balance,
           COALESCE(books.journal_balance, 0) AS journal_balance,
           COALESCE(books.chain_breaks, 0) AS chain_breaks,
           CASE WHEN books.lowest_running < 0 THEN books.lowest_running ELSE 0 END
               AS lowest_journal_balance
    FROM accounts LEFT JOIN books ON books.account_id = accounts.id {account_filter}
)
"""

ACCOUNT_AUDIT_SQL = (
    _AUDITED.format(
        journal_filter="WHERE account_id = :account_id",
        account_filter="WHERE accounts.id = :account_id",
    )
    + "SELECT account_id, balance, journal_balance, chain_breaks, lowest_journal_balance"  # nosec B608  # constants only
    " FROM audited"
)

BANK_AUDIT_SQL = (
    _AUDITED.format(journal_filter="", account_filter="")
    + f"""
SELECT COUNT(*) AS accounts,
       SUM(CASE WHEN balance <> journal_balance OR chain_breaks > 0
                  OR lowest_journal_balance < 0 OR balance < 0 THEN 1 ELSE 0 END)
           AS inconsistent_accounts,
       SUM(CASE WHEN lowest_journal_balance < 0 OR balance < 0 THEN 1 ELSE 0 END)
           AS negative_accounts,
       SUM(chain_breaks) AS chain_breaks,
       SUM(balance / {HALF}) AS balance_high, SUM(balance % {HALF}) AS balance_low,
       SUM(journal_balance / {HALF}) AS journal_high, SUM(journal_balance % {HALF}) AS journal_low
FROM audited
"""  # nosec B608  # constants: the filters above and HALF
)


def audit_account(connection: Connection, account_id: int, *, named: Any) -> AccountAudit:
    with bounded(connection):
        row = connection.exec_driver_sql(
            named(ACCOUNT_AUDIT_SQL), {"account_id": account_id}
        ).first()
    if row is None:
        raise NotFound(f"account {account_id} does not exist")
    return AccountAudit(
        row.account_id,
        int(row.balance),
        int(row.journal_balance),
        int(row.chain_breaks),
        int(row.lowest_journal_balance),
    )


def audit_bank(connection: Connection, *, named: Any) -> BankAudit:
    with bounded(connection):
        row = connection.exec_driver_sql(named(BANK_AUDIT_SQL), {}).one()

    def whole(value: Any) -> int:
        return int(value or 0)

    return BankAudit(
        accounts=whole(row.accounts),
        inconsistent_accounts=whole(row.inconsistent_accounts),
        negative_accounts=whole(row.negative_accounts),
        chain_breaks=whole(row.chain_breaks),
        total_balance=whole(row.balance_high) * HALF + whole(row.balance_low),
        total_journal=whole(row.journal_high) * HALF + whole(row.journal_low),
    )


@contextmanager
def bounded(connection: Connection) -> Iterator[None]:
    """Cancel the audit statement after AUDIT_TIMEOUT_MS, on either database."""
    driver_connection = connection.connection.driver_connection
    if not isinstance(driver_connection, sqlite3.Connection):
        driver_connection = None
    if driver_connection is not None:
        deadline = time.monotonic() + AUDIT_TIMEOUT_MS / 1000
        driver_connection.set_progress_handler(
            lambda: int(time.monotonic() > deadline), SQLITE_PROGRESS_STEPS
        )
    else:
        connection.exec_driver_sql(f"SET LOCAL statement_timeout = {AUDIT_TIMEOUT_MS}")
    try:
        yield
    except sa_exc.DBAPIError as error:
        if sqlstate(error) == QUERY_CANCELED or "interrupted" in str(error.orig).lower():
            raise AuditTimeout(
                f"the audit ran past {AUDIT_TIMEOUT_MS} ms and was cancelled; retry later"
            ) from error
        raise
    finally:
        if driver_connection is not None:
            driver_connection.set_progress_handler(None, 0)
