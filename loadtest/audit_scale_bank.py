"""The bank `loadtest.audit_scale` audits: planned in Python, built in SQL, judged in Python.

`Plan` says which journal entries each account has, which three anomalies
are planted (a drifted balance, a broken chain, a journal that dips below
zero) and what a right audit says of them (`service.domain.audit_account`,
the pure-Python reference, account by account). `build` writes the plan
into a migrated database with one INSERT ... SELECT from a generated series
(`JOURNAL_SQL`, the same rule as `Plan.base_entry`), then plants the
anomalies. `sqlite_database` and `postgres_database` give it a database of
its own, removed afterwards.
"""

from __future__ import annotations

import datetime as dt
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, create_engine, text

from loadtest.throwaway_postgres import throwaway_postgres
from service.domain import (
    AccountAudit,
    BankAudit,
    Transaction,
    TransactionKind,
    audit_account,
    audit_bank,
)
from service.schema import upgrade

# The plan needs an opening entry plus two more per account (the planted
# overdraft rewrites entries 1 and 2).
MINIMUM_ENTRIES_PER_ACCOUNT = 3
DRIFT_MINOR = 7
CHAIN_SHIFT_MINOR = 3
CREATED_AT = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
LOCK_MODE = "atomic"
AUDITED_FIELDS = (
    "accounts",
    "inconsistent_accounts",
    "negative_accounts",
    "chain_breaks",
    "total_balance",
    "total_journal",
)


# Kind and amount of entry k of an account (the rule of `Plan.base_entry`), and every
# balance_after chained by a running sum, for the rows of a CTE `series(r)`.
JOURNAL_SQL = """
INSERT INTO transactions
    (id, account_id, kind, amount, balance_after, transfer_id, lock_mode, created_at)
SELECT id, account_id, kind, amount,
       SUM(CASE WHEN kind IN ('withdrawal', 'transfer_out') THEN -amount ELSE amount END)
           OVER (PARTITION BY account_id ORDER BY id ROWS UNBOUNDED PRECEDING),
       NULL, :lock_mode, :created_at
FROM (
    SELECT id, account_id,
           CASE WHEN k = 0 THEN 'open'
                WHEN k % 2 = 1 AND p % 4 = 0 THEN 'transfer_in'
                WHEN k % 2 = 1 THEN 'deposit'
                WHEN p % 4 = 0 THEN 'transfer_out'
                ELSE 'withdrawal' END AS kind,
           CASE WHEN k = 0 THEN 1000 + (account_id * 37) % 1000
                WHEN k % 2 = 1 THEN 10 + (account_id * 31 + p * 17) % 100
                ELSE 9 + (account_id * 31 + p * 17) % 100 - p % 5 END AS amount
    FROM (
        SELECT r AS id, (r - 1) % :accounts + 1 AS account_id, (r - 1) / :accounts AS k,
               ((r - 1) / :accounts + 1) / 2 AS p
        FROM series
    ) AS numbered
) AS planned
"""


@dataclass(frozen=True)
class Plan:
    """The bank to build: which entries, which anomalies, and what their audit must say.

    Row `id` r belongs to account (r - 1) % accounts + 1 as its entry number
    k = (r - 1) // accounts. Entry 0 opens the account; odd entries pay in,
    even ones take out a little less than the one before, so a clean account
    never dips below zero. `JOURNAL_SQL` and `base_entry` are the same rule in
    SQL and in Python.
    """

    rows: int
    accounts: int
    anomalies: bool = True

    def __post_init__(self) -> None:
        if self.accounts < 3 or self.rows < MINIMUM_ENTRIES_PER_ACCOUNT * self.accounts:
            raise ValueError(
                f"need at least 3 accounts and {MINIMUM_ENTRIES_PER_ACCOUNT} rows per account "
                f"(rows {self.rows}, accounts {self.accounts})"
            )

    # The planted accounts: spread over the bank, one anomaly each.
    @property
    def drifted_account(self) -> int:
        return 1

    @property
    def broken_chain_account(self) -> int:
        return self.accounts // 2

    @property
    def overdrawn_account(self) -> int:
        return self.accounts

    @property
    def planted_accounts(self) -> tuple[int, ...]:
        if not self.anomalies:
            return ()
        return (self.drifted_account, self.broken_chain_account, self.overdrawn_account)

    def entry_count(self, account_id: int) -> int:
        return self.rows // self.accounts + (1 if account_id <= self.rows % self.accounts else 0)

    def row_id(self, account_id: int, entry: int) -> int:
        return entry * self.accounts + account_id

    def base_entry(self, account_id: int, entry: int) -> tuple[TransactionKind, int]:
        """Kind and amount of an unplanted entry (the rule of JOURNAL_SQL)."""
        pair = (entry + 1) // 2
        if entry == 0:
            return TransactionKind.OPEN, 1000 + (account_id * 37) % 1000
        step = (account_id * 31 + pair * 17) % 100
        if entry % 2 == 1:
            kind = TransactionKind.TRANSFER_IN if pair % 4 == 0 else TransactionKind.DEPOSIT
            return kind, 10 + step
        kind = TransactionKind.TRANSFER_OUT if pair % 4 == 0 else TransactionKind.WITHDRAWAL
        return kind, 9 + step - pair % 5

    def journal(self, account_id: int, *, planted: bool = True) -> list[Transaction]:
        """The account's entries in id order, `balance_after` chained, anomalies applied."""
        moves = [self.base_entry(account_id, k) for k in range(self.entry_count(account_id))]
        if planted and self.anomalies and account_id == self.overdrawn_account:
            # An overdraft acknowledged, then covered: entry 1 takes one more than the
            # opening balance, entry 2 pays it back with the pair's net, so the journal
            # dips to -1 and then runs on exactly as before (no break, no drift).
            opening, paid_in, taken_out = moves[0][1], moves[1][1], moves[2][1]
            moves[1] = (TransactionKind.WITHDRAWAL, opening + 1)
            moves[2] = (TransactionKind.DEPOSIT, opening + 1 + paid_in - taken_out)
        entries, running = [], 0
        for k, (kind, amount) in enumerate(moves):
            running += kind.sign * amount
            entries.append(
                Transaction(
                    self.row_id(account_id, k),
                    account_id,
                    kind,
                    amount,
                    running,
                    None,
                    LOCK_MODE,
                    CREATED_AT,
                )
            )
        if planted and self.anomalies and account_id == self.broken_chain_account:
            # One balance_after written wrong in the middle: it and the next entry break.
            middle = len(entries) // 2
            shifted = entries[middle].balance_after + CHAIN_SHIFT_MINOR
            entries[middle] = _with_balance_after(entries[middle], shifted)
        return entries

    def stored_balance(self, account_id: int, journal: Sequence[Transaction]) -> int:
        """The account row's balance: the last entry's, less a lost update on the drifted one."""
        balance = journal[-1].balance_after
        if self.anomalies and account_id == self.drifted_account:
            balance -= DRIFT_MINOR
        return balance

    def expected_account(self, account_id: int) -> AccountAudit:
        """The pure-Python reference's judgement of one planned account."""
        journal = self.journal(account_id)
        return audit_account(account_id, self.stored_balance(account_id, journal), journal)

    def expected_bank(self) -> BankAudit:
        """The reference's judgement of the bank, one account's journal in memory at a time."""
        return audit_bank(
            self.expected_account(account_id) for account_id in range(1, self.accounts + 1)
        )

    def planted_rows(self) -> list[Transaction]:
        """The entries that differ from JOURNAL_SQL's rule: rewritten after the bulk insert."""
        return [
            entry
            for account_id in self.planted_accounts
            for entry, base in zip(
                self.journal(account_id), self.journal(account_id, planted=False), strict=True
            )
            if entry != base
        ]


def _with_balance_after(entry: Transaction, balance_after: int) -> Transaction:
    return Transaction(
        entry.id,
        entry.account_id,
        entry.kind,
        entry.amount,
        balance_after,
        entry.transfer_id,
        entry.lock_mode,
        entry.created_at,
    )


def audit_figures(audit: BankAudit) -> tuple[int, ...]:
    """The fields a store's bank audit answers (per-account detail aside)."""
    return tuple(getattr(audit, name) for name in AUDITED_FIELDS)


# --------------------------------------------------------------------------- building in SQL


def build(url: str, plan: Plan) -> None:
    """Fill the migrated, empty database at `url` with the plan (see the module docstring)."""
    engine = create_engine(url)
    is_sqlite = engine.dialect.name == "sqlite"
    stamp: Any = CREATED_AT.strftime("%Y-%m-%d %H:%M:%S.%f") if is_sqlite else CREATED_AT
    try:
        with engine.begin() as connection:
            if is_sqlite:  # a throwaway build: no fsync per page
                connection.exec_driver_sql("PRAGMA synchronous=OFF")
            _insert_accounts(connection, plan, stamp, is_sqlite)
            connection.execute(
                text(_with_series(JOURNAL_SQL, ":rows", is_sqlite)),
                {
                    "rows": plan.rows,
                    "accounts": plan.accounts,
                    "lock_mode": LOCK_MODE,
                    "created_at": stamp,
                },
            )
            _settle_accounts(connection)
            _plant(connection, plan)
            if not is_sqlite:  # explicit ids left the sequences behind
                for table in ("accounts", "transactions"):
                    connection.exec_driver_sql(
                        f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "  # nosec B608  # table: a literal above
                        f"(SELECT MAX(id) FROM {table}))"
                    )
            connection.exec_driver_sql("ANALYZE")
    finally:
        engine.dispose()


def _with_series(sql: str, length: str, is_sqlite: bool) -> str:
    """`sql` preceded by a CTE `series(r)` counting 1..length (SQLite has no generate_series)."""
    if is_sqlite:
        series = (
            f"WITH RECURSIVE series(r) AS (SELECT 1 UNION ALL SELECT r + 1 FROM series "  # nosec B608  # length: a bind name
            f"WHERE r < {length})"
        )
    else:
        series = f"WITH series AS (SELECT generate_series(1, {length}) AS r)"
    return f"{series}\n{sql}"


def _insert_accounts(connection: Connection, plan: Plan, stamp: Any, is_sqlite: bool) -> None:
    sql = """
INSERT INTO accounts (id, owner, currency, balance, version, created_at, updated_at)
SELECT r, 'audit-scale-' || r, 'USD', 0, 0, :created_at, :created_at FROM series
"""
    connection.execute(
        text(_with_series(sql, ":accounts", is_sqlite)),
        {"accounts": plan.accounts, "created_at": stamp},
    )


def _settle_accounts(connection: Connection) -> None:
    """Each account's balance is its last entry's `balance_after`, its version the entries - 1."""
    connection.exec_driver_sql(
        """
UPDATE accounts SET
    balance = (SELECT t.balance_after FROM transactions AS t
               WHERE t.account_id = accounts.id ORDER BY t.id DESC LIMIT 1),
    version = (SELECT COUNT(*) FROM transactions AS t WHERE t.account_id = accounts.id) - 1
"""
    )


def _plant(connection: Connection, plan: Plan) -> None:
    for entry in plan.planted_rows():
        connection.execute(
            text(
                "UPDATE transactions SET kind = :kind, amount = :amount, "
                "balance_after = :balance_after WHERE id = :id"
            ),
            {
                "kind": entry.kind.value,
                "amount": entry.amount,
                "balance_after": entry.balance_after,
                "id": entry.id,
            },
        )
    for account_id in plan.planted_accounts:
        connection.execute(
            text("UPDATE accounts SET balance = :balance WHERE id = :id"),
            {
                "balance": plan.stored_balance(account_id, plan.journal(account_id)),
                "id": account_id,
            },
        )


def database_books(url: str) -> tuple[dict[int, int], dict[int, list[Transaction]]]:
    """Every account's stored balance and journal (id order), read straight from the tables."""
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            balances = {
                row.id: row.balance
                for row in connection.exec_driver_sql("SELECT id, balance FROM accounts")
            }
            rows = connection.exec_driver_sql(
                "SELECT id, account_id, kind, amount, balance_after, transfer_id, lock_mode,"
                " created_at FROM transactions ORDER BY account_id, id"
            ).all()
    finally:
        engine.dispose()
    journals: dict[int, list[Transaction]] = {account_id: [] for account_id in balances}
    for row in rows:
        journals[row.account_id].append(
            Transaction(
                row.id,
                row.account_id,
                TransactionKind(row.kind),
                row.amount,
                row.balance_after,
                row.transfer_id,
                row.lock_mode,
                row.created_at,
            )
        )
    return balances, journals


def reference_audit(url: str) -> BankAudit:
    """The whole journal read into Python and judged there: what the SQL store once did."""
    balances, journals = database_books(url)
    return audit_bank(
        audit_account(account_id, balances[account_id], journals[account_id])
        for account_id in sorted(balances)
    )


# --------------------------------------------------------------------------- databases


@contextmanager
def sqlite_database(workdir: Path) -> Iterator[str]:
    """A migrated SQLite file in a folder of its own under `workdir`, removed afterwards."""
    workdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="audit-scale-", dir=workdir) as folder:
        url = f"sqlite:///{Path(folder) / 'audit.db'}"
        upgrade(url)
        yield url


def postgres_database(server_url: str) -> AbstractContextManager[str]:
    """A fresh, migrated database on the server at `server_url`, dropped afterwards."""
    return throwaway_postgres(server_url, "bankrace_audit", upgrade)
