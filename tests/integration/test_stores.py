"""The store primitives behave the same on the in-memory store, SQLite and PostgreSQL."""

from __future__ import annotations

import threading

import pytest

from service.domain import (
    MAX_BALANCE_MINOR,
    AuditTimeout,
    BalanceLimitExceeded,
    InsufficientFunds,
    Leg,
    LockMode,
    LockTimeout,
    ModeSetting,
    NotFound,
    TransactionKind,
)
from service.stores import sql_audit
from service.stores.base import LegWrite, LegWriter, Store, TransferSpec, VersionConflict, Written
from tests.conftest import SQL_BACKENDS


def deposit_leg(account_id: int, amount: int) -> Leg:
    return Leg(account_id, TransactionKind.DEPOSIT, amount)


def journal_length(store: Store, account_id: int) -> int:
    return len(store.list_transactions(account_id, None, 500))


def test_open_account_journals_the_opening_balance(store: Store) -> None:
    """An account opened with money gets an `open` entry; one opened empty gets none."""
    rich = store.open_account("alice", "USD", 100, "locked")
    poor = store.open_account("bob", "EUR", 0, "locked")
    assert (rich.balance, rich.version, poor.currency) == (100, 0, "EUR")
    [opening] = store.list_transactions(rich.id, None, 10)
    assert (opening.kind, opening.amount, opening.balance_after) == (TransactionKind.OPEN, 100, 100)
    assert store.list_transactions(poor.id, None, 10) == []


def test_unknown_ids_raise_not_found(store: Store) -> None:
    """Every read and write of a missing account, transfer or transaction is NotFound."""
    for probe in (
        lambda: store.get_account(999),
        lambda: store.get_transaction(999),
        lambda: store.get_transfer(999),
        lambda: store.read_states([999]),
        lambda: store.list_transactions(999, None, 10),
        lambda: store.audit_account(999),
        lambda: store.write_legs([LegWrite(deposit_leg(999, 1))], "atomic"),
    ):
        with pytest.raises(NotFound):
            probe()


def test_absolute_write_sets_balance_bumps_version_and_journals(store: Store) -> None:
    """A read-modify-write's write stores the computed balance and the journal entry."""
    account = store.open_account("a", "USD", 10, "locked")
    written = store.write_legs([LegWrite(deposit_leg(account.id, 5), new_balance=15)], "locked")
    assert written.transactions[0].balance_after == 15
    state = store.read_states([account.id])[account.id]
    assert (state.balance, state.version) == (15, 1)


def test_version_mismatch_writes_nothing(store: Store) -> None:
    """Optimistic compare-and-swap: a stale version raises VersionConflict and changes nothing."""
    account = store.open_account("a", "USD", 10, "locked")
    store.write_legs([LegWrite(deposit_leg(account.id, 1), new_balance=11)], "optimistic")
    stale = LegWrite(deposit_leg(account.id, 5), new_balance=15, expected_version=0)
    with pytest.raises(VersionConflict):
        store.write_legs([stale], "optimistic")
    assert store.get_account(account.id).balance == 11
    assert journal_length(store, account.id) == 2


@pytest.mark.parametrize(
    ("opening", "kind", "amount", "refusal"),
    [
        (10, TransactionKind.WITHDRAWAL, 11, InsufficientFunds),
        (MAX_BALANCE_MINOR, TransactionKind.DEPOSIT, 1, BalanceLimitExceeded),
    ],
)
def test_guarded_add_refuses_leaving_the_range(
    store: Store, opening: int, kind: TransactionKind, amount: int, refusal: type[Exception]
) -> None:
    """The atomic mode's guarded add refuses overdrafts and overflows, writing nothing."""
    account = store.open_account("a", "USD", opening, "locked")
    with pytest.raises(refusal):
        store.write_legs([LegWrite(Leg(account.id, kind, amount))], "atomic")
    assert store.get_account(account.id).balance == opening
    assert journal_length(store, account.id) == 1


def test_transfer_is_all_or_nothing(store: Store) -> None:
    """A transfer whose second leg is refused leaves both accounts and the journal untouched."""
    source = store.open_account("a", "USD", 100, "locked")
    target = store.open_account("b", "USD", MAX_BALANCE_MINOR, "locked")
    legs = [
        LegWrite(Leg(source.id, TransactionKind.TRANSFER_OUT, 10)),
        LegWrite(Leg(target.id, TransactionKind.TRANSFER_IN, 10)),
    ]
    with pytest.raises(BalanceLimitExceeded):
        store.write_legs(legs, "atomic", TransferSpec(source.id, target.id, 10))
    assert store.get_account(source.id).balance == 100
    assert journal_length(store, source.id) == 1
    with pytest.raises(NotFound):
        store.get_transfer(1)


def test_transfer_records_both_legs(store: Store) -> None:
    """A transfer is stored with its two legs, which point back at it."""
    source = store.open_account("a", "USD", 100, "locked")
    target = store.open_account("b", "USD", 0, "locked")
    legs = [
        LegWrite(Leg(source.id, TransactionKind.TRANSFER_OUT, 30)),
        LegWrite(Leg(target.id, TransactionKind.TRANSFER_IN, 30)),
    ]
    written = store.write_legs(legs, "atomic", TransferSpec(source.id, target.id, 30))
    assert written.transfer is not None
    stored = store.get_transfer(written.transfer.id)
    assert [leg.balance_after for leg in stored.legs] == [70, 30]
    assert {leg.transfer_id for leg in stored.legs} == {stored.id}
    bank = store.audit_bank()
    assert bank.consistent
    assert (bank.accounts, bank.total_balance, bank.total_journal) == (2, 100, 100)


def test_exclusive_lock_excludes_a_second_holder(store: Store) -> None:
    """While one holder has the exclusive lock, another's wait ends in LockTimeout."""
    account = store.open_account("a", "USD", 0, "locked")
    holding = threading.Event()
    release = threading.Event()
    outcome: list[BaseException] = []

    def hold(writer: LegWriter) -> Written:
        holding.set()
        release.wait(timeout=30)
        return Written(())

    def holder() -> None:
        store.exclusive([account.id], hold)

    def contender() -> None:
        try:
            store.exclusive([account.id], lambda writer: Written(()))
        except LockTimeout as error:
            outcome.append(error)

    first = threading.Thread(target=holder)
    first.start()
    assert holding.wait(timeout=30)
    second = threading.Thread(target=contender)
    second.start()
    second.join(timeout=30)
    release.set()
    first.join(timeout=30)
    assert len(outcome) == 1


def test_exclusive_section_commits_its_writes(store: Store) -> None:
    """Reads and writes inside the exclusive section are one committed transaction."""
    account = store.open_account("a", "USD", 5, "locked")

    def deposit_five(section: LegWriter) -> Written:
        state = section.read_states([account.id])[account.id]
        return section.write_legs(
            [LegWrite(deposit_leg(account.id, 5), new_balance=state.balance + 5)], "locked"
        )

    store.exclusive([account.id], deposit_five)
    assert store.get_account(account.id).balance == 10


def test_audit_sees_a_lost_update(store: Store) -> None:
    """A write computed from a stale read leaves drift and a chain break in the audit."""
    account = store.open_account("a", "USD", 0, "locked")
    # Two deposits of 5 both read balance 0: the second write overwrites the first.
    store.write_legs([LegWrite(deposit_leg(account.id, 5), new_balance=5)], "unlocked")
    store.write_legs([LegWrite(deposit_leg(account.id, 5), new_balance=5)], "unlocked")
    audit = store.audit_account(account.id)
    assert (audit.balance, audit.journal_balance, audit.drift) == (5, 10, -5)
    assert audit.chain_breaks == 1 and not audit.consistent


def test_mode_setting_round_trips(store: Store) -> None:
    """The shared mode setting reads back what was saved."""
    store.save_mode(ModeSetting(LockMode.ATOMIC, 42))
    assert store.load_mode() == ModeSetting(LockMode.ATOMIC, 42)


def test_pagination_is_by_cursor(store: Store) -> None:
    """Accounts page ascending after a cursor; the journal pages newest first before one."""
    ids = [store.open_account(f"owner {n}", "USD", 1, "locked").id for n in range(5)]
    assert [account.id for account in store.list_accounts(ids[1], 2)] == ids[2:4]
    for _ in range(3):
        store.write_legs([LegWrite(deposit_leg(ids[0], 1))], "atomic")
    newest = store.list_transactions(ids[0], None, 2)
    assert newest[0].id > newest[1].id
    older = store.list_transactions(ids[0], newest[-1].id, 10)
    assert all(entry.id < newest[-1].id for entry in older) and len(older) == 2


def test_seeding_the_mode_never_overwrites_a_stored_one(store: Store) -> None:
    """A worker's start-up seed (overwrite=False) leaves a PUT /mode in place; serve overwrites."""
    store.save_mode(ModeSetting(LockMode.ATOMIC, 3), overwrite=False)
    store.save_mode(ModeSetting(LockMode.LOCKED, 0), overwrite=False)
    assert store.load_mode() == ModeSetting(LockMode.ATOMIC, 3)
    store.save_mode(ModeSetting(LockMode.OPTIMISTIC, 9))
    assert store.load_mode() == ModeSetting(LockMode.OPTIMISTIC, 9)


@pytest.mark.parametrize("backend", SQL_BACKENDS, indirect=True)
def test_an_audit_past_its_time_bound_is_cancelled_as_audit_timeout(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bank audit is cancelled at AUDIT_TIMEOUT_MS: AuditTimeout, not a lock timeout."""
    for _ in range(200):
        account = store.open_account("a", "USD", 1, "locked")
        store.write_legs([LegWrite(deposit_leg(account.id, 1))], "atomic")
    monkeypatch.setattr(sql_audit, "AUDIT_TIMEOUT_MS", 1)
    monkeypatch.setattr(sql_audit, "SQLITE_PROGRESS_STEPS", 1)
    with pytest.raises(AuditTimeout):
        store.audit_bank()
    monkeypatch.setattr(sql_audit, "AUDIT_TIMEOUT_MS", 20_000)
    assert store.audit_bank().consistent  # the connection is usable again
