"""A plain reference bank for model-based tests, and empty stores to compare it with.

The reference model is deliberately naive -- a dict of accounts, each with
its balance, version and journal -- and shares no code with the service's
rules: it restates DESIGN §1 (amounts, the balance limit, overdrafts, same
account and currency refusals) so that a bug in `service.domain` cannot hide
behind itself. It answers what an operation must do: either the entries it
must journal, or the set of refusals (domain error classes) that are
acceptable when the operation must change nothing.

`StoreSupply` hands out empty stores cheaply: a new in-memory store each
time; for SQLite and PostgreSQL one migrated database per test whose tables
are emptied (ids restarting at 1) between examples.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import create_engine

from service.domain import (
    AccountAudit,
    BalanceLimitExceeded,
    CurrencyMismatch,
    DomainError,
    InsufficientFunds,
    NotFound,
    SameAccount,
    TransactionKind,
)
from service.schema import upgrade
from service.stores.base import Store
from service.stores.memory import MemoryStore
from service.stores.sql import SqlStore
from tests.support.postgres import fresh_database

BALANCE_LIMIT = 2**53 - 1
LOCK_TIMEOUT_MS = 2000
SQL_POOL_SIZE = 8
JOURNAL_PAGE = 500  # list_transactions' page; the tests keep journals shorter

Refusals = frozenset[type[DomainError]]


# --------------------------------------------------------------------------- the model


@dataclass(frozen=True)
class Entry:
    """One journal entry as the model predicts it (ids are the store's business)."""

    account_id: int
    kind: TransactionKind
    amount: int
    balance_after: int
    lock_mode: str
    transfer_id: int | None = None


@dataclass
class ModelAccount:
    id: int
    owner: str
    currency: str
    balance: int = 0
    version: int = 0
    journal: list[Entry] = field(default_factory=list)


@dataclass
class ReferenceBank:
    """What the books must say after a sequence of accepted operations."""

    accounts: dict[int, ModelAccount] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(account.balance for account in self.accounts.values())

    def open(self, account_id: int, owner: str, currency: str, opening: int, mode: str) -> None:
        account = ModelAccount(account_id, owner.strip(), currency, opening)
        if opening > 0:
            account.journal.append(Entry(account_id, TransactionKind.OPEN, opening, opening, mode))
        self.accounts[account_id] = account

    def single_refusals(self, account_id: int, delta: int) -> Refusals:
        """Why a deposit (delta > 0) or withdrawal (< 0) must be refused; empty if it must not."""
        account = self.accounts.get(account_id)
        if account is None:
            return frozenset({NotFound})
        return self._range_refusals(account.balance + delta)

    def transfer_refusals(self, source_id: int, target_id: int, amount: int) -> Refusals:
        """Why a transfer must be refused; when both legs fail, either refusal is acceptable."""
        if source_id == target_id:
            return frozenset({SameAccount})
        source, target = self.accounts.get(source_id), self.accounts.get(target_id)
        if source is None or target is None:
            return frozenset({NotFound})
        if source.currency != target.currency:
            return frozenset({CurrencyMismatch})
        return self._range_refusals(source.balance - amount) | self._range_refusals(
            target.balance + amount
        )

    @staticmethod
    def _range_refusals(new_balance: int) -> Refusals:
        if new_balance < 0:
            return frozenset({InsufficientFunds})
        if new_balance > BALANCE_LIMIT:
            return frozenset({BalanceLimitExceeded})
        return frozenset()

    def apply(
        self,
        account_id: int,
        kind: TransactionKind,
        amount: int,
        mode: str,
        transfer_id: int | None,
    ) -> Entry:
        """Book one accepted leg; the entry it must have journaled."""
        account = self.accounts[account_id]
        signed = (
            -amount
            if kind in (TransactionKind.WITHDRAWAL, TransactionKind.TRANSFER_OUT)
            else amount
        )
        account.balance += signed
        account.version += 1
        entry = Entry(account_id, kind, amount, account.balance, mode, transfer_id)
        account.journal.append(entry)
        return entry

    def unknown_ids(self) -> tuple[int, ...]:
        """Ids no account has: just past the last one, and the largest id the API accepts."""
        last = max(self.accounts, default=0)
        return (last + 1, last + 2, 10**18 - 1)


# --------------------------------------------------------------------------- comparison


def mismatches(store: Store, model: ReferenceBank) -> list[str]:
    """Every way the store's books differ from the model's (empty when they agree).

    Checks each account's balance, version, owner and currency; its audit
    (balance == journal sum, no chain break, never below zero); its journal
    entry by entry and its chain; and the bank-wide audit and total.
    """
    problems: list[str] = []
    for account in model.accounts.values():
        stored = store.get_account(account.id)
        seen = (stored.balance, stored.version, stored.owner, stored.currency)
        wanted = (account.balance, account.version, account.owner, account.currency)
        if seen != wanted:
            problems.append(
                f"account {account.id}: (balance, version, owner, currency) {seen} != {wanted}"
            )
        audit = store.audit_account(account.id)
        expected_audit = AccountAudit(account.id, account.balance, account.balance, 0, 0)
        if audit != expected_audit or not audit.consistent:
            problems.append(f"account {account.id}: audit {audit} != {expected_audit}")
        problems += journal_mismatches(store, account)
    bank = store.audit_bank()
    seen_bank = (bank.accounts, bank.total_balance, bank.total_journal, bank.chain_breaks)
    wanted_bank = (len(model.accounts), model.total, model.total, 0)
    if seen_bank != wanted_bank or not bank.consistent or bank.negative_accounts:
        problems.append(f"bank audit {bank} != (accounts, total, journal, breaks) {wanted_bank}")
    return problems


def journal_mismatches(store: Store, account: ModelAccount) -> list[str]:
    entries = list(reversed(store.list_transactions(account.id, None, JOURNAL_PAGE)))
    problems: list[str] = []
    ids = [entry.id for entry in entries]
    if ids != sorted(set(ids)):
        problems.append(f"account {account.id}: journal ids not strictly ascending: {ids}")
    previous_after = 0
    for entry in entries:
        signed = entry.signed_amount
        if entry.balance_after != previous_after + signed:
            problems.append(f"account {account.id}: chain break at entry {entry.id}")
        previous_after = entry.balance_after
    seen = [
        Entry(e.account_id, e.kind, e.amount, e.balance_after, e.lock_mode, e.transfer_id)
        for e in entries
    ]
    if seen != account.journal:
        problems.append(f"account {account.id}: journal {seen} != model {account.journal}")
    return problems


# --------------------------------------------------------------------------- stores


class StoreSupply:
    """Empty stores for one backend: call `fresh()` for each example."""

    def __init__(self, backend: str, url: str | None) -> None:
        self.backend = backend
        self._url = url
        self._shared: SqlStore | None = None

    @property
    def url(self) -> str | None:
        """The database's URL (None for the in-memory store)."""
        return self._url

    def fresh(self) -> Store:
        if self._url is None:  # nothing to close: the store is only dicts
            return MemoryStore(lock_timeout_ms=LOCK_TIMEOUT_MS)
        if self._shared is None:
            self._shared = SqlStore(
                self._url, lock_timeout_ms=LOCK_TIMEOUT_MS, pool_size=SQL_POOL_SIZE
            )
        self._empty_tables()
        return self._shared

    def _empty_tables(self) -> None:
        assert self._url is not None
        engine = create_engine(self._url)
        try:
            with engine.begin() as connection:
                if self.backend == "postgres":
                    connection.exec_driver_sql(
                        "TRUNCATE holds, transactions, transfers, accounts RESTART IDENTITY"
                    )
                else:  # SQLite: children first (foreign keys); rowids restart at max + 1 = 1
                    for table in ("holds", "transactions", "transfers", "accounts"):
                        connection.exec_driver_sql(f"DELETE FROM {table}")
        finally:
            engine.dispose()

    def close(self) -> None:
        if self._shared is not None:
            self._shared.close()


@contextmanager
def store_supply(backend: str, directory: Path) -> Iterator[StoreSupply]:
    """A supply of empty stores for `backend` (memory, sqlite, postgres), closed afterwards."""
    with ExitStack() as stack:
        if backend == "memory":
            url = None
        elif backend == "sqlite":
            url = f"sqlite:///{directory / 'model.db'}"
            upgrade(url)
        else:
            url = stack.enter_context(fresh_database())
            upgrade(url)
        supply = StoreSupply(backend, url)
        stack.callback(supply.close)
        yield supply
