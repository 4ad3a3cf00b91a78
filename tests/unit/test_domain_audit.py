"""Journal entries and how an audit judges them: one account's books, the bank's totals."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.domain import (
    MAX_AMOUNT_MINOR,
    MAX_BALANCE_MINOR,
    AccountAudit,
    BalanceLimitExceeded,
    InsufficientFunds,
    Leg,
    Transaction,
    TransactionKind,
    audit_account,
    audit_bank,
    check_new_balance,
)

MOMENT = dt.datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=dt.UTC)
OPEN = TransactionKind.OPEN
DEPOSIT = TransactionKind.DEPOSIT
WITHDRAWAL = TransactionKind.WITHDRAWAL
TRANSFER_IN = TransactionKind.TRANSFER_IN
TRANSFER_OUT = TransactionKind.TRANSFER_OUT


def journal(*entries: tuple[TransactionKind, int, int]) -> list[Transaction]:
    """Journal entries (kind, amount, balance_after) with ids in order."""
    return [
        Transaction(index, 1, kind, amount, after, None, "locked", MOMENT)
        for index, (kind, amount, after) in enumerate(entries, start=1)
    ]


@pytest.mark.parametrize(
    ("kind", "sign"),
    [(OPEN, 1), (DEPOSIT, 1), (TRANSFER_IN, 1), (WITHDRAWAL, -1), (TRANSFER_OUT, -1)],
)
def test_kinds_know_which_way_money_moves(kind: TransactionKind, sign: int) -> None:
    """Deposits, openings and incoming transfers add; withdrawals and outgoing transfers take."""
    assert kind.sign == sign
    assert Leg(1, kind, 25).delta == sign * 25
    assert journal((kind, 25, 0))[0].signed_amount == sign * 25


# --------------------------------------------------------------------------- account audit


def test_audit_of_a_clean_journal() -> None:
    """A chained journal that sums to the balance is consistent."""
    entries = journal(
        (OPEN, 100, 100),
        (DEPOSIT, 50, 150),
        (WITHDRAWAL, 30, 120),
        (TRANSFER_IN, 10, 130),
        (TRANSFER_OUT, 130, 0),
        (DEPOSIT, 5, 5),
    )
    audit = audit_account(1, 5, entries)
    assert audit == AccountAudit(1, 5, 5, 0, 0)
    assert (audit.drift, audit.consistent, audit.went_negative) == (0, True, False)


def test_audit_of_an_empty_journal() -> None:
    """No entries and a zero balance is consistent; a non-zero balance without entries drifts."""
    assert audit_account(1, 0, []).consistent is True
    unexplained = audit_account(1, 5, [])
    assert (unexplained.drift, unexplained.consistent) == (5, False)


def test_audit_sees_a_lost_update_as_drift_and_chain_break() -> None:
    """Two deposits from the same read: the stored balance misses one; drift and one break."""
    entries = journal((OPEN, 100, 100), (DEPOSIT, 10, 110), (DEPOSIT, 20, 120))
    audit = audit_account(1, 120, entries)
    assert (audit.journal_balance, audit.drift, audit.chain_breaks) == (130, -10, 1)
    assert audit.consistent is False
    assert audit.went_negative is False


def test_audit_sees_lost_updates_that_cancel_out_in_the_sum() -> None:
    """A lost deposit and a lost withdrawal of one amount: no drift, but two chain breaks."""
    entries = journal(
        (OPEN, 100, 100),
        (DEPOSIT, 10, 110),  # read 100
        (WITHDRAWAL, 10, 90),  # also read 100: the deposit is lost
        (WITHDRAWAL, 10, 80),  # read 90
        (DEPOSIT, 10, 100),  # also read 90: the withdrawal is lost
    )
    audit = audit_account(1, 100, entries)
    assert (audit.journal_balance, audit.drift) == (100, 0)
    assert audit.chain_breaks == 2
    assert audit.consistent is False


def test_audit_sees_a_journal_dipping_below_zero() -> None:
    """An overdraft the journal acknowledged is inconsistent even if sum and chain look fine."""
    entries = journal((OPEN, 10, 10), (WITHDRAWAL, 20, -10), (DEPOSIT, 20, 10))
    audit = audit_account(1, 10, entries)
    assert (audit.drift, audit.chain_breaks, audit.lowest_journal_balance) == (0, 0, -10)
    assert audit.went_negative is True
    assert audit.consistent is False


def test_audit_sees_two_withdrawals_of_the_last_money() -> None:
    """Two withdrawals of the whole balance from one read: drift, a break and a negative journal."""
    entries = journal((OPEN, 10, 10), (WITHDRAWAL, 10, 0), (WITHDRAWAL, 10, 0))
    audit = audit_account(1, 0, entries)
    assert (audit.journal_balance, audit.drift, audit.chain_breaks) == (-10, 10, 1)
    assert (audit.lowest_journal_balance, audit.went_negative, audit.consistent) == (
        -10,
        True,
        False,
    )


def test_audit_sees_a_negative_stored_balance() -> None:
    """A negative stored balance is inconsistent even when the journal agrees with it."""
    entries = journal((WITHDRAWAL, 5, -5))
    audit = audit_account(1, -5, entries)
    assert audit.drift == 0
    assert (audit.went_negative, audit.consistent) == (True, False)


def test_audit_sees_a_chain_break_in_the_first_entry() -> None:
    """The chain starts at zero: a first entry claiming another starting point breaks it."""
    audit = audit_account(1, 150, journal((DEPOSIT, 50, 150)))
    assert audit.chain_breaks == 1
    assert audit.drift == 100
    assert audit.consistent is False


# --------------------------------------------------------------------------- bank audit


def test_bank_audit_of_no_accounts() -> None:
    """An empty bank is consistent with every total zero."""
    bank = audit_bank([])
    assert (bank.accounts, bank.total_balance, bank.total_journal, bank.drift) == (0, 0, 0, 0)
    assert bank.consistent is True


def test_bank_audit_sums_and_counts() -> None:
    """The bank audit counts inconsistent and negative accounts and sums balances and drift."""
    clean = audit_account(1, 120, journal((OPEN, 100, 100), (DEPOSIT, 20, 120)))
    drifted = audit_account(
        2, 120, journal((OPEN, 100, 100), (DEPOSIT, 10, 110), (DEPOSIT, 20, 120))
    )
    overdrawn = audit_account(
        3, 10, journal((OPEN, 10, 10), (WITHDRAWAL, 20, -10), (DEPOSIT, 20, 10))
    )
    bank = audit_bank([clean, drifted, overdrawn])
    assert (bank.accounts, bank.inconsistent_accounts, bank.negative_accounts) == (3, 2, 1)
    assert (bank.chain_breaks, bank.total_balance, bank.total_journal) == (1, 250, 260)
    assert bank.drift == -10
    assert bank.consistent is False
    assert bank.per_account == (clean, drifted, overdrawn)


def test_bank_audit_is_inconsistent_when_only_chains_break() -> None:
    """Cancelling lost updates leave the bank drift at 0, yet the bank is not consistent."""
    cancelled = audit_account(
        1,
        100,
        journal(
            (OPEN, 100, 100),
            (DEPOSIT, 10, 110),
            (WITHDRAWAL, 10, 90),
            (WITHDRAWAL, 10, 80),
            (DEPOSIT, 10, 100),
        ),
    )
    bank = audit_bank([cancelled, audit_account(2, 0, [])])
    assert (bank.drift, bank.chain_breaks, bank.inconsistent_accounts) == (0, 2, 1)
    assert bank.consistent is False


def test_bank_audit_of_clean_accounts_is_consistent() -> None:
    """Clean accounts make a consistent bank."""
    audits = [audit_account(i, 5, journal((OPEN, 5, 5))) for i in range(1, 4)]
    bank = audit_bank(iter(audits))
    assert (bank.accounts, bank.total_balance, bank.consistent) == (3, 15, True)


# --------------------------------------------------------------------------- serial histories

operations = st.lists(
    st.tuples(
        st.sampled_from([DEPOSIT, WITHDRAWAL, TRANSFER_IN, TRANSFER_OUT]),
        st.integers(min_value=1, max_value=MAX_AMOUNT_MINOR),
    ),
    max_size=30,
)


def serial_history(
    opening: int, steps: Sequence[tuple[TransactionKind, int]]
) -> tuple[int, list[Transaction]]:
    """Apply operations one at a time, as a locked service would; refusals journal nothing."""
    entries: list[tuple[TransactionKind, int, int]] = []
    balance = 0
    if opening:
        balance = opening
        entries.append((OPEN, opening, opening))
    for kind, amount in steps:
        try:
            balance = check_new_balance(balance, kind.sign * amount, 1)
        except (InsufficientFunds, BalanceLimitExceeded):
            continue
        entries.append((kind, amount, balance))
    return balance, journal(*entries)


@given(st.integers(min_value=0, max_value=MAX_BALANCE_MINOR), operations)
def test_audit_of_any_serial_history_is_consistent(
    opening: int, steps: list[tuple[TransactionKind, int]]
) -> None:
    """Whatever operations run one after another, the audit finds nothing wrong."""
    balance, entries = serial_history(opening, steps)
    audit = audit_account(1, balance, entries)
    assert audit == AccountAudit(1, balance, balance, 0, 0)
    assert 0 <= balance <= MAX_BALANCE_MINOR
    assert audit.consistent is True


@given(
    st.integers(min_value=0, max_value=MAX_BALANCE_MINOR),
    operations,
    st.integers(min_value=-MAX_AMOUNT_MINOR, max_value=MAX_AMOUNT_MINOR).filter(bool),
)
def test_audit_sees_any_stored_balance_that_is_off(
    opening: int, steps: list[tuple[TransactionKind, int]], error: int
) -> None:
    """Any serial history with a wrong stored balance shows exactly that drift."""
    balance, entries = serial_history(opening, steps)
    audit = audit_account(1, balance + error, entries)
    assert audit.drift == error
    assert audit.consistent is False
