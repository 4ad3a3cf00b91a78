"""The audit-at-scale harness builds the bank it plans, and the database's audits judge it exactly.

The builder (loadtest/audit_scale_bank.py) writes the journal with one INSERT ... SELECT and
plants three anomalies; here it runs at 20,011 rows (not a multiple of the 200 accounts)
on SQLite and PostgreSQL. The rows are read back and judged by the pure-Python reference
(`service.domain.audit_account`); `SqlStore.audit_bank` and `audit_account`, computed by
the database, must agree with it and with the planted anomalies to the unit. No timings.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from loadtest import audit_scale
from loadtest.audit_scale_bank import Plan, audit_figures, build, database_books
from service.domain import AccountAudit, BankAudit, Transaction, audit_account
from service.domain import audit_bank as reference_bank_audit
from service.stores.sql import SqlStore
from tests.conftest import SQL_BACKENDS, TEST_LOCK_TIMEOUT_MS

ROWS = 20_011
ACCOUNTS = 200
CLEAN_ACCOUNT = 7

pytestmark = pytest.mark.parametrize("backend", SQL_BACKENDS, indirect=True)


def reference_audits(url: str) -> dict[int, AccountAudit]:
    balances, journals = database_books(url)
    return {
        account_id: audit_account(account_id, balances[account_id], journals[account_id])
        for account_id in sorted(balances)
    }


def store_of(url: str) -> SqlStore:
    return SqlStore(url, lock_timeout_ms=TEST_LOCK_TIMEOUT_MS, pool_size=2)


def test_builder_writes_exactly_the_planned_rows(database_url: str) -> None:
    """Every row the bulk INSERT ... SELECT wrote, and every balance, is the plan's, in id order."""
    plan = Plan(ROWS, ACCOUNTS)
    build(database_url, plan)
    balances, journals = database_books(database_url)
    assert sum(len(journal) for journal in journals.values()) == ROWS
    assert sorted(balances) == list(range(1, ACCOUNTS + 1))

    def essentials(journal: list[Transaction]) -> list[tuple[object, ...]]:
        return [(e.id, e.kind, e.amount, e.balance_after) for e in journal]

    for account_id in range(1, ACCOUNTS + 1):
        planned = plan.journal(account_id)
        assert essentials(journals[account_id]) == essentials(planned), account_id
        assert balances[account_id] == plan.stored_balance(account_id, planned), account_id


def test_bank_audit_counts_exactly_the_planted_anomalies(database_url: str) -> None:
    """audit_bank = the Python reference over the same rows: 3 inconsistent, 2 breaks, drift -7."""
    plan = Plan(ROWS, ACCOUNTS)
    build(database_url, plan)
    reference: BankAudit = reference_bank_audit(reference_audits(database_url).values())
    store = store_of(database_url)
    try:
        answered = store.audit_bank()
    finally:
        store.close()
    assert audit_figures(answered) == audit_figures(reference)
    assert audit_figures(answered) == audit_figures(plan.expected_bank())
    assert (answered.accounts, answered.inconsistent_accounts) == (ACCOUNTS, 3)
    assert (answered.chain_breaks, answered.negative_accounts, answered.drift) == (2, 1, -7)
    assert not answered.consistent


def test_account_audits_name_each_anomaly(database_url: str) -> None:
    """audit_account of each planted account (and a clean one) = the Python reference's verdict."""
    plan = Plan(ROWS, ACCOUNTS)
    build(database_url, plan)
    reference = reference_audits(database_url)
    store = store_of(database_url)
    try:
        answered = {
            account_id: store.audit_account(account_id)
            for account_id in (*plan.planted_accounts, CLEAN_ACCOUNT)
        }
    finally:
        store.close()
    assert answered == {account_id: reference[account_id] for account_id in answered}
    drifted = answered[plan.drifted_account]
    broken = answered[plan.broken_chain_account]
    overdrawn = answered[plan.overdrawn_account]
    assert (drifted.drift, drifted.chain_breaks, drifted.lowest_journal_balance) == (-7, 0, 0)
    assert (broken.drift, broken.chain_breaks, broken.lowest_journal_balance) == (0, 2, 0)
    assert (overdrawn.drift, overdrawn.chain_breaks, overdrawn.lowest_journal_balance) == (0, 0, -1)
    assert overdrawn.balance >= 0 and overdrawn.went_negative
    assert not any(answered[account].consistent for account in plan.planted_accounts)
    assert answered[CLEAN_ACCOUNT].consistent


def test_books_built_without_anomalies_audit_clean(database_url: str) -> None:
    """With no anomaly planted the same books audit consistent: no false alarm at scale."""
    plan = Plan(ROWS, ACCOUNTS, anomalies=False)
    build(database_url, plan)
    store = store_of(database_url)
    try:
        answered = store.audit_bank()
    finally:
        store.close()
    reference = reference_bank_audit(reference_audits(database_url).values())
    assert audit_figures(answered) == audit_figures(reference)
    assert answered.consistent and answered.chain_breaks == answered.negative_accounts == 0
    assert answered.total_balance == sum(
        plan.stored_balance(account_id, plan.journal(account_id))
        for account_id in range(1, ACCOUNTS + 1)
    )


def test_harness_reports_every_audit_right(
    backend: str, database_url: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """`python -m loadtest.audit_scale` at a small size exits 0 with every audit judged right."""
    arguments = ["--rows", "3000", "--accounts", "100", "--memory-entries", "3000"]
    arguments += ["--workdir", str(tmp_path), "--python-reference"]
    if backend == "sqlite":
        arguments += ["--stores", "sqlite,memory"]
    else:
        # Any database of the server will do: the harness creates (and drops) its own.
        arguments += ["--stores", "postgresql", "--postgres-url", database_url]
    assert audit_scale.main(arguments) == 0
    printed = capsys.readouterr().out
    assert "WRONG" not in printed and "audit_timeout" not in printed
    # audit_bank and the whole journal judged in Python, on the SQL store measured.
    assert printed.count("| right: 3 inconsistent, 2 chain breaks, 1 negative, drift -7 |") == 2
    if backend == "sqlite":
        assert "| right: 1 inconsistent, 1 chain breaks, 0 negative, drift -5 |" in printed
