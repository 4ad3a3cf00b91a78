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
   SELECT from a generated series (`audit_scale_bank.JOURNAL_SQL`). Three anomalies are
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

The bank (its plan, its bulk build, its reference audit) is
`audit_scale_bank`; the measuring tools and the table, `audit_scale_timing`;
this module runs the measurements on each store.
"""

from __future__ import annotations

import argparse
import os
import platform
import sqlite3
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from loadtest.audit_scale_bank import (
    AUDITED_FIELDS,
    LOCK_MODE,
    Plan,
    audit_figures,
    build,
    postgres_database,
    reference_audit,
    sqlite_database,
)
from loadtest.audit_scale_timing import (
    Row,
    WriteWaits,
    deposit_one,
    measured,
    report,
    timed_call,
    writes_during,
)
from service.domain import (
    AccountAudit,
    AuditTimeout,
    BankAudit,
    Leg,
    TransactionKind,
    audit_account,
    audit_bank,
)
from service.stores.base import LegWrite
from service.stores.memory import MemoryStore
from service.stores.sql import SqlStore

DEFAULT_ROWS = 1_000_000
DEFAULT_ACCOUNTS = 1_000
DEFAULT_MEMORY_ENTRIES = 200_000
POSTGRES_URL_VARIABLE = "BANK_TEST_POSTGRES_URL"
STORE_LOCK_TIMEOUT_MS = 5000
STORE_POOL_SIZE = 2
MEMORY_WRITES_COUNT = 5000
MEMORY_ACCOUNTS = 1000


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
