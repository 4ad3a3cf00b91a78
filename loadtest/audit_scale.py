"""The audits at scale: `GET /audit` over a million journal rows, timed and checked.

    python -m loadtest.audit_scale [--rows 1000000] [--accounts 1000]
                                   [--memory-entries 200000] [--stores sqlite,postgresql,memory]
                                   [--postgres-url URL] [--no-anomalies] [--python-reference]
                                   [--workdir var]

Unlike the rest of loadtest/, which is black-box over HTTP, this measures the
stores themselves (`SqlStore.audit_bank`, what `GET /audit` calls), because
the question is the audit's own cost at a journal length no HTTP load test
reaches in reasonable time.

1. Builds a bank directly in the `accounts` and `transactions` tables of a
   migrated database (SQLite under --workdir; PostgreSQL in a fresh database
   on the server of BANK_TEST_POSTGRES_URL, dropped afterwards): --rows
   journal entries over --accounts accounts, interleaved by id as real
   traffic would be, with every `balance_after` chained, in one INSERT ...
   SELECT from a generated series (`JOURNAL_SQL`). Three anomalies are
   then planted (`Plan.planted_rows`): a drifted balance, a broken chain, and a
   journal that dips below zero.
2. Times `audit_bank()` and `audit_account(id)` on a `SqlStore`, samples the
   process's resident memory meanwhile (peak minus start: SQLite runs inside
   this process, PostgreSQL's work is in the server's), and checks the result
   against the plan, which `service.domain.audit_account` (the pure-Python
   reference) judges account by account.
3. Times writes while an audit runs, against writes without one.
4. The in-memory store: --memory-entries journal entries through
   `open_account` and `write_legs`, one lost update planted; `audit_bank`
   timed (its mutex hold time) and compared with a full Python walk of the
   same journal, and writes timed while audits run back to back.

Prints the configuration and one table; exit 0 when every audit was right, 1
otherwise. No figure is judged: timings are printed, never asserted.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import resource
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, create_engine, text
from sqlalchemy.engine import make_url

from service.domain import (
    AccountAudit,
    AuditTimeout,
    BankAudit,
    Leg,
    Transaction,
    TransactionKind,
    audit_account,
    audit_bank,
)
from service.schema import upgrade
from service.stores.base import LegWrite, Store
from service.stores.memory import MemoryStore
from service.stores.sql import SqlStore

T = TypeVar("T")

DEFAULT_ROWS = 1_000_000
DEFAULT_ACCOUNTS = 1_000
DEFAULT_MEMORY_ENTRIES = 200_000
POSTGRES_URL_VARIABLE = "BANK_TEST_POSTGRES_URL"
STORE_LOCK_TIMEOUT_MS = 5000
STORE_POOL_SIZE = 2
# The plan needs an opening entry plus two more per account (the planted
# overdraft rewrites entries 1 and 2).
MINIMUM_ENTRIES_PER_ACCOUNT = 3
DRIFT_MINOR = 7
CHAIN_SHIFT_MINOR = 3
RSS_SAMPLE_INTERVAL_SECONDS = 0.001
# Writes timed around an audit: a bound on count and on time, whichever comes first.
WRITES_BASELINE_COUNT = 50
WRITES_DURING_AUDIT_MAX = 2000
MEMORY_WRITES_COUNT = 5000
WRITE_PHASE_DEADLINE_SECONDS = 60
MEMORY_ACCOUNTS = 1000
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


# --------------------------------------------------------------------------- the plan

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


# --------------------------------------------------------------------------- building


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


def reference_audit(url: str) -> BankAudit:
    """The whole journal read into Python and judged there: what the SQL store once did."""
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            balances: dict[int, int] = {
                row.id: row.balance
                for row in connection.exec_driver_sql("SELECT id, balance FROM accounts")
            }
            rows = connection.exec_driver_sql(
                "SELECT id, account_id, kind, amount, balance_after FROM transactions"
                " ORDER BY account_id, id"
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
                None,
                LOCK_MODE,
                CREATED_AT,
            )
        )
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


@contextmanager
def postgres_database(server_url: str) -> Iterator[str]:
    """A fresh, migrated database on the server at `server_url`, dropped afterwards."""
    base = make_url(server_url)
    name = f"bankrace_audit_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            url = base.set(database=name).render_as_string(hide_password=False)
            upgrade(url)
            yield url
        finally:
            with admin.connect() as connection:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


# --------------------------------------------------------------------------- measuring


def resident_bytes() -> int:
    """This process's resident set size now (Linux /proc; peak so far elsewhere)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@dataclass
class Measured:
    wall_ms: float = 0.0
    rss_growth_bytes: int = 0


@contextmanager
def measured() -> Iterator[Measured]:
    """Wall time and peak resident-memory growth of the block (sampled every millisecond)."""
    result = Measured()
    start_bytes = resident_bytes()
    peak = [start_bytes]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(RSS_SAMPLE_INTERVAL_SECONDS):
            peak[0] = max(peak[0], resident_bytes())

    sampler = threading.Thread(target=sample, name="rss-sampler", daemon=True)
    sampler.start()
    started = time.perf_counter()
    try:
        yield result
    finally:
        result.wall_ms = (time.perf_counter() - started) * 1000
        done.set()
        sampler.join()
        result.rss_growth_bytes = max(peak[0], resident_bytes()) - start_bytes


@dataclass
class Row:
    store: str
    journal_rows: int
    measurement: str
    wall_ms: float | None
    rss_growth_bytes: int | None
    verdict: str
    correct: bool = True


@dataclass
class WriteWaits:
    store: str
    during_audit: list[float] = field(default_factory=list)
    baseline: list[float] = field(default_factory=list)
    audits: int = 0
    note: str = ""


def timed_call(call: Callable[[], T]) -> tuple[T, float]:
    started = time.perf_counter()
    value = call()
    return value, (time.perf_counter() - started) * 1000


def deposit_one(store: Store, account_id: int) -> float:
    """One atomic deposit of 1; its latency in ms."""
    leg = Leg(account_id, TransactionKind.DEPOSIT, 1)
    return timed_call(lambda: store.write_legs([LegWrite(leg)], LOCK_MODE))[1]


def writes_during(store: Store, account_id: int, audit: Callable[[], object]) -> WriteWaits:
    """Deposits timed with no audit, then while `audit` runs in another thread (bounded)."""
    waits = WriteWaits(store="")
    waits.baseline = [deposit_one(store, account_id) for _ in range(WRITES_BASELINE_COUNT)]
    outcome: list[BaseException] = []

    def run_audit() -> None:
        try:
            audit()
        except BaseException as error:  # reported by the caller, never swallowed
            outcome.append(error)

    auditor = threading.Thread(target=run_audit, name="auditor", daemon=True)
    deadline = time.monotonic() + WRITE_PHASE_DEADLINE_SECONDS
    auditor.start()
    while (
        auditor.is_alive()
        and len(waits.during_audit) < WRITES_DURING_AUDIT_MAX
        and time.monotonic() < deadline
    ):
        waits.during_audit.append(deposit_one(store, account_id))
    auditor.join(WRITE_PHASE_DEADLINE_SECONDS)
    waits.audits = 1
    if outcome:
        raise outcome[0]
    return waits


# --------------------------------------------------------------------------- SQL stores


def measure_sql_store(name: str, url: str, plan: Plan, *, python_reference: bool) -> list[Row]:
    rows: list[Row] = []
    with measured() as building:
        build(url, plan)
    rows.append(Row(name, plan.rows, "build (bulk INSERT ... SELECT)", building.wall_ms, None, ""))
    expected = plan.expected_bank()
    store = SqlStore(url, lock_timeout_ms=STORE_LOCK_TIMEOUT_MS, pool_size=STORE_POOL_SIZE)
    try:
        store.audit_account(1)  # connect and warm the pool outside the measurement
        rows.append(_timed_bank_audit(name, plan.rows, store.audit_bank, expected))
        for account_id in plan.planted_accounts or (1,):
            with measured() as figures:
                answered = store.audit_account(account_id)
            wanted = plan.expected_account(account_id)
            rows.append(
                Row(
                    name,
                    plan.rows,
                    f"audit_account({account_id})",
                    figures.wall_ms,
                    figures.rss_growth_bytes,
                    _account_verdict(answered, wanted),
                    answered == wanted,
                )
            )
        if python_reference:
            rows.append(
                _timed_bank_audit(
                    name,
                    plan.rows,
                    lambda: reference_audit(url),
                    expected,
                    label="whole journal into Python (before)",
                )
            )
    finally:
        store.close()
    return rows


def _timed_bank_audit(
    name: str,
    journal_rows: int,
    audit: Callable[[], BankAudit],
    expected: BankAudit,
    *,
    label: str = "audit_bank (GET /audit)",
) -> Row:
    try:
        with measured() as figures:
            answered = audit()
    except AuditTimeout as error:
        return Row(name, journal_rows, label, None, None, f"503 audit_timeout: {error}", False)
    correct = audit_figures(answered) == audit_figures(expected)
    return Row(
        name,
        journal_rows,
        label,
        figures.wall_ms,
        figures.rss_growth_bytes,
        _bank_verdict(answered, expected),
        correct,
    )


def _bank_verdict(answered: BankAudit, expected: BankAudit) -> str:
    found = (
        f"{answered.inconsistent_accounts} inconsistent, {answered.chain_breaks} chain breaks, "
        f"{answered.negative_accounts} negative, drift {answered.drift}"
    )
    if audit_figures(answered) == audit_figures(expected):
        return f"right: {found}"
    wanted = dict(zip(AUDITED_FIELDS, audit_figures(expected), strict=True))
    return f"WRONG: {answered} expected {wanted}"


def _account_verdict(answered: AccountAudit, expected: AccountAudit) -> str:
    found = (
        f"drift {answered.drift}, {answered.chain_breaks} chain breaks, "
        f"lowest {answered.lowest_journal_balance}"
    )
    return f"right: {found}" if answered == expected else f"WRONG: {answered} != {expected}"


def sql_write_waits(name: str, url: str, plan: Plan) -> tuple[WriteWaits, Row]:
    """Writes while a bank audit runs; the audit itself must still see a consistent snapshot."""
    store = SqlStore(url, lock_timeout_ms=STORE_LOCK_TIMEOUT_MS, pool_size=STORE_POOL_SIZE)
    answers: list[BankAudit] = []
    try:
        waits = writes_during(store, 2, lambda: answers.append(store.audit_bank()))
    finally:
        store.close()
    waits.store = name
    expected = plan.expected_bank()
    # The concurrent deposits are clean: whatever the snapshot saw, the anomalies
    # and the drift are exactly the planted ones.
    (answer,) = answers
    unchanged = (answer.inconsistent_accounts, answer.chain_breaks, answer.drift) == (
        expected.inconsistent_accounts,
        expected.chain_breaks,
        expected.drift,
    )
    verdict = (
        f"{'right' if unchanged else 'WRONG'}: {answer.inconsistent_accounts} inconsistent, "
        f"{answer.chain_breaks} chain breaks, drift {answer.drift} with "
        f"{len(waits.during_audit)} deposits committed meanwhile"
    )
    row = Row(name, plan.rows, "audit_bank during writes", None, None, verdict, unchanged)
    return waits, row


# --------------------------------------------------------------------------- memory store


def populate_memory(entries: int, accounts: int) -> tuple[MemoryStore, int]:
    """`entries` journal entries through the store's own writes; one lost update planted.

    Returns the store and the planted drift (minus the lost deposit).
    """
    store = MemoryStore(lock_timeout_ms=STORE_LOCK_TIMEOUT_MS)
    for number in range(accounts):
        store.open_account(f"audit-scale-{number}", "USD", 1000, LOCK_MODE)
    # A lost update, as `unlocked` makes one: two deposits read the same
    # balance and the second overwrites the first.
    victim = 1
    before = store.read_states([victim])[victim].balance
    for amount in (5, 11):
        leg = Leg(victim, TransactionKind.DEPOSIT, amount)
        store.write_legs([LegWrite(leg, new_balance=before + amount)], "unlocked")
    for number in range(entries - accounts - 2):
        leg = Leg(number % accounts + 1, TransactionKind.DEPOSIT, 1 + number % 50)
        store.write_legs([LegWrite(leg)], LOCK_MODE)
    return store, -5


def memory_walk(store: MemoryStore, accounts: int) -> BankAudit:
    """The whole journal walked in Python: what the in-memory audit did before, under its mutex."""
    return audit_bank(
        audit_account(
            account_id,
            store.get_account(account_id).balance,
            reversed(store.list_transactions(account_id, None, sys.maxsize)),
        )
        for account_id in range(1, accounts + 1)
    )


def measure_memory_store(entries: int) -> tuple[list[Row], WriteWaits]:
    accounts = min(MEMORY_ACCOUNTS, entries // 2)
    with measured() as filling:
        store, drift = populate_memory(entries, accounts)
    rows = [Row("memory", entries, "build (open_account + write_legs)", filling.wall_ms, None, "")]
    walked, walk_ms = timed_call(lambda: memory_walk(store, accounts))
    with measured() as figures:
        answered = store.audit_bank()
    correct = audit_figures(answered) == audit_figures(walked) and answered.drift == drift
    rows.append(
        Row(
            "memory",
            entries,
            "audit_bank (GET /audit, mutex held)",
            figures.wall_ms,
            figures.rss_growth_bytes,
            _bank_verdict(answered, walked),
            correct,
        )
    )
    rows.append(Row("memory", entries, "full walk in Python (before)", walk_ms, None, ""))
    return rows, memory_write_waits(store)


def memory_write_waits(store: MemoryStore) -> WriteWaits:
    """Deposits timed alone, then while another thread runs audits back to back."""
    waits = WriteWaits(store="memory")
    waits.baseline = [deposit_one(store, 2) for _ in range(MEMORY_WRITES_COUNT)]
    stop = threading.Event()
    audits = [0]

    def audit_continuously() -> None:
        while not stop.is_set():
            store.audit_bank()
            audits[0] += 1

    auditor = threading.Thread(target=audit_continuously, name="auditor", daemon=True)
    auditor.start()
    try:
        waits.during_audit = [deposit_one(store, 2) for _ in range(MEMORY_WRITES_COUNT)]
    finally:
        stop.set()
        auditor.join()
    waits.audits = audits[0]
    waits.note = (
        f"audits back to back in another thread; the two threads share the GIL "
        f"(switch interval {sys.getswitchinterval() * 1000:.0f} ms)"
    )
    return waits


# --------------------------------------------------------------------------- report


def mebibytes(size: int | None) -> str:
    return "" if size is None else f"{size / 2**20:.1f}"


def milliseconds(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:,.3f}" if value < 10 else f"{value:,.0f}"


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def report(rows: Sequence[Row], waits: Sequence[WriteWaits]) -> str:
    lines = [
        "| store | journal rows | measurement | wall ms | RSS growth MiB | result |",
        "|---|---:|---|---:|---:|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row.store} | {row.journal_rows:,} | {row.measurement} | "
            f"{milliseconds(row.wall_ms)} | {mebibytes(row.rss_growth_bytes)} | {row.verdict} |"
        )
    lines += [
        "",
        "Writes (atomic deposits of 1) while an audit runs, against the same writes alone:",
        "",
        "| store | writes during audit | audits | median ms | p99 ms | max ms "
        "| alone: median ms | alone: max ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for wait in waits:
        during = wait.during_audit or [float("nan")]
        lines.append(
            f"| {wait.store} | {len(wait.during_audit):,} | {wait.audits:,} | "
            f"{statistics.median(during):.3f} | {percentile(during, 0.99):.3f} | "
            f"{max(during):.3f} | {statistics.median(wait.baseline):.3f} | "
            f"{max(wait.baseline):.3f} |"
        )
    lines += [f"{wait.store}: {wait.note}" for wait in waits if wait.note]
    return "\n".join(lines)


def configuration(arguments: argparse.Namespace, postgres_url: str | None) -> str:
    postgres = "not measured"
    if postgres_url:
        postgres = make_url(postgres_url).render_as_string(hide_password=True)
    return "\n".join(
        [
            f"journal rows {arguments.rows:,} over {arguments.accounts:,} accounts "
            f"(anomalies planted: {'yes' if not arguments.no_anomalies else 'no'}); "
            f"in-memory store {arguments.memory_entries:,} entries",
            f"SqlStore(lock_timeout_ms={STORE_LOCK_TIMEOUT_MS}, pool_size={STORE_POOL_SIZE}); "
            f"SQLite {sqlite3.sqlite_version} under {arguments.workdir}; PostgreSQL {postgres}",
            f"Python {platform.python_version()}, {os.cpu_count()} CPUs, {platform.machine()}; "
            "RSS growth = peak resident memory of this process during the call minus before "
            "(PostgreSQL's own memory is the server's)",
        ]
    )


# --------------------------------------------------------------------------- command


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.audit_scale", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--rows", type=int, default=DEFAULT_ROWS)
    parser.add_argument("--accounts", type=int, default=DEFAULT_ACCOUNTS)
    parser.add_argument("--memory-entries", type=int, default=DEFAULT_MEMORY_ENTRIES)
    parser.add_argument(
        "--stores",
        default="sqlite,postgresql,memory",
        help="comma-separated: sqlite, postgresql (when a server is named), memory",
    )
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get(POSTGRES_URL_VARIABLE),
        help=f"PostgreSQL server for a fresh database (default ${POSTGRES_URL_VARIABLE})",
    )
    parser.add_argument("--no-anomalies", action="store_true", help="build consistent books")
    parser.add_argument(
        "--python-reference",
        action="store_true",
        help="also time the whole journal read into Python and judged there (the old audit)",
    )
    parser.add_argument("--workdir", type=Path, default=Path("var"), help="SQLite goes here")
    arguments = parser.parse_args(argv)
    arguments.stores = [store.strip() for store in arguments.stores.split(",") if store.strip()]
    unknown = set(arguments.stores) - {"sqlite", "postgresql", "memory"}
    if unknown:
        parser.error(f"unknown stores: {', '.join(sorted(unknown))}")
    return arguments


def main(argv: Sequence[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    plan = Plan(arguments.rows, arguments.accounts, anomalies=not arguments.no_anomalies)
    postgres_url = arguments.postgres_url if "postgresql" in arguments.stores else None
    print(configuration(arguments, postgres_url), flush=True)
    rows: list[Row] = []
    waits: list[WriteWaits] = []
    databases: list[tuple[str, Callable[[], Any]]] = []
    if "sqlite" in arguments.stores:
        databases.append(("sqlite", lambda: sqlite_database(arguments.workdir)))
    if postgres_url:
        databases.append(("postgresql", lambda: postgres_database(postgres_url)))
    for name, database in databases:
        with database() as url:
            rows += measure_sql_store(name, url, plan, python_reference=arguments.python_reference)
            wait, row = sql_write_waits(name, url, plan)
            rows.append(row)
            waits.append(wait)
        print(f"{name}: done", file=sys.stderr, flush=True)
    if "memory" in arguments.stores:
        memory_rows, memory_waits = measure_memory_store(arguments.memory_entries)
        rows += memory_rows
        waits.append(memory_waits)
    print(report(rows, waits))
    return 0 if all(row.correct for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
