"""The in-memory store: plain dicts in one process.

One short internal mutex keeps the dicts themselves intact (each primitive
holds it for microseconds, never across a race window). The per-account
locks are this store's "database row locks", and they behave like
PostgreSQL's: `exclusive` holds them across a read-modify-write (SELECT ...
FOR UPDATE), and every write takes them too (an UPDATE locks its row), so a
write in any mode waits for a `locked` request that holds the account
instead of slipping into its race window -- also while the mode changes.

The audit is kept up to date with every journal entry (`memory_books`), so
`GET /audit` is O(1) under the mutex at any journal length instead of a walk
over the whole journal. Idempotency keys live in a dict (`memory_keys`), holds
in `memory_holds`.

Data lives only as long as the process, so this store refuses to be shared
by several worker processes (see `service.cli`).
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import TypeVar

from service.domain import (
    Account,
    AccountAudit,
    BalanceState,
    BankAudit,
    Hold,
    HoldAudit,
    HoldStatus,
    ModeSetting,
    NotFound,
    StaleLock,
    Transaction,
    TransactionKind,
    Transfer,
    check_new_balance,
    utc_now,
)
from service.idempotency import Claim, Completion, KeyRecord, StoredResponse
from service.keyed_locks import KeyedLocks
from service.stores import memory_keys
from service.stores.base import (
    LegWrite,
    LegWriter,
    Store,
    TransferSpec,
    VersionConflict,
    Written,
    written_since_claim,
)
from service.stores.memory_books import BankTotals, Books
from service.stores.memory_holds import Holds

Row = TypeVar("Row")


class _HoldingLocks(LegWriter):
    """The store seen from inside `exclusive`: its row locks are already held."""

    def __init__(self, store: MemoryStore) -> None:
        self._store = store

    def read_states(self, account_ids: Sequence[int]) -> dict[int, BalanceState]:
        return self._store.read_states(account_ids)

    def read_hold(self, hold_id: int) -> Hold:
        return self._store.read_hold(hold_id)

    def write_legs(
        self,
        writes: Sequence[LegWrite],
        lock_mode: str,
        transfer: TransferSpec | None = None,
        completion: Completion | None = None,
    ) -> Written:
        return self._store.write_legs_holding_locks(writes, lock_mode, transfer, completion)


class MemoryStore(Store):
    shared_across_processes = False

    def __init__(self, lock_timeout_ms: int) -> None:
        self._mutex = threading.Lock()
        self._accounts: dict[int, Account] = {}
        self._transactions: dict[int, Transaction] = {}
        self._journal_by_account: dict[int, list[int]] = {}
        self._transfers: dict[int, Transfer] = {}
        self._row_locks = KeyedLocks(lock_timeout_ms)
        self._mode: ModeSetting | None = None
        self._books: dict[int, Books] = {}
        self._totals = BankTotals()
        self._keys: memory_keys.Keys = {}
        #: `fenced`: the newest fencing token that claimed each account (0: none yet).
        self._fences: dict[int, int] = {}
        self._holds = Holds()

    # ------------------------------------------------------------------ balances

    def read_states(self, account_ids: Sequence[int]) -> dict[int, BalanceState]:
        with self._mutex:
            return {account_id: self._state(account_id, utc_now()) for account_id in account_ids}

    def _state(self, account_id: int, now: dt.datetime) -> BalanceState:
        account = self._require(account_id)
        held = self._holds.held(account_id, now)
        return BalanceState(account_id, account.balance, account.version, held)

    def read_hold(self, hold_id: int) -> Hold:
        with self._mutex:
            return self._holds.get(hold_id)

    def list_holds(
        self, account_id: int, status: HoldStatus | None, before: int | None, limit: int
    ) -> list[Hold]:
        with self._mutex:
            self._require(account_id)
            return self._holds.page(account_id, status, before, limit, utc_now())

    def claim_states(self, fences: Mapping[int, int]) -> dict[int, BalanceState]:
        account_ids = sorted(fences)
        with self._mutex:  # NotFound before any lock is taken
            for account_id in account_ids:
                self._require(account_id)
        # Recording a token writes the account, so it takes the row locks like an UPDATE.
        with self._row_locks.holding(account_ids), self._mutex:
            for account_id in account_ids:
                if self._fences.get(account_id, 0) >= fences[account_id]:
                    raise StaleLock.on_account(account_id, self._fences[account_id])
            self._fences.update(fences)
            now = utc_now()
            return {account_id: self._state(account_id, now) for account_id in account_ids}

    def write_legs(
        self,
        writes: Sequence[LegWrite],
        lock_mode: str,
        transfer: TransferSpec | None = None,
        completion: Completion | None = None,
    ) -> Written:
        # Like an UPDATE, a write takes its rows' locks (in the order given,
        # which is the lock order): it waits for whoever holds them.
        with self._row_locks.holding([write.leg.account_id for write in writes]):
            return self.write_legs_holding_locks(writes, lock_mode, transfer, completion)

    def write_legs_holding_locks(
        self,
        writes: Sequence[LegWrite],
        lock_mode: str,
        transfer: TransferSpec | None,
        completion: Completion | None = None,
    ) -> Written:
        """`write_legs` for a caller that already holds the accounts' row locks."""
        now = utc_now()
        with self._mutex:
            # Check every condition before changing anything: all or nothing.
            memory_keys.check_completion(self._keys, completion)
            # The hold first: ending a hold that is no longer pending is refused
            # as such, whatever the balance (as the SQL store's order does).
            for write in writes:
                self._holds.check(write, now)
            new_balances = [self._new_balance(write, now) for write in writes]
            transfer_id = len(self._transfers) + 1 if transfer else None
            entries = []
            hold = None
            for write, new_balance in zip(writes, new_balances, strict=True):
                account = self._accounts[write.leg.account_id]
                self._totals.total_balance += new_balance - account.balance
                self._accounts[account.id] = replace(
                    account, balance=new_balance, version=account.version + 1, updated_at=now
                )
                entry = None
                kind = write.leg.journal_kind
                if kind is not None:  # a hold placed or voided moves no money: no entry
                    entry = self._append(
                        write.leg.account_id,
                        kind,
                        write.leg.amount,
                        new_balance,
                        transfer_id,
                        lock_mode,
                        now,
                        write.leg.hold.hold_id if write.leg.hold is not None else None,
                    )
                    entries.append(entry)
                hold = self._holds.apply(write, now, entry) or hold
            recorded = None
            if transfer is not None and transfer_id is not None:
                recorded = transfer.recorded(transfer_id, lock_mode, now, tuple(entries))
                self._transfers[transfer_id] = recorded
            written = Written(tuple(entries), recorded, hold)
            memory_keys.complete(self._keys, completion, written)
            return written

    def _new_balance(self, write: LegWrite, now: dt.datetime) -> int:
        account = self._require(write.leg.account_id)
        if write.fence is not None:  # fenced: the token and the version it read, or StaleLock
            if self._fences.get(account.id, 0) != write.fence:
                raise StaleLock.on_account(account.id, self._fences.get(account.id, 0))
            if account.version != write.expected_version:
                raise written_since_claim(account.id, write.fence)
        elif write.expected_version is not None and account.version != write.expected_version:
            raise VersionConflict(
                f"account {account.id} moved past version {write.expected_version}"
            )
        if write.new_balance is not None:
            return write.new_balance
        # atomic: the guard is the available money, as the SQL store's ADD_TO_AVAILABLE.
        held = self._holds.held(account.id, now)
        return check_new_balance(
            account.balance, write.leg.delta, account.id, held, write.leg.reserve
        )

    def exclusive(
        self, account_ids: Sequence[int], work: Callable[[LegWriter], Written]
    ) -> Written:
        self.read_states(account_ids)  # NotFound before any lock is taken
        with self._row_locks.holding(account_ids):
            # The locks are held: writes inside must not take them again
            # (a lock acquired twice is the seed's self-deadlock).
            return work(_HoldingLocks(self))

    # ------------------------------------------------------------------ accounts

    def open_account(
        self,
        owner: str,
        currency: str,
        opening_balance: int,
        lock_mode: str,
        completion: Completion | None = None,
    ) -> Account:
        now = utc_now()
        with self._mutex:
            memory_keys.check_completion(self._keys, completion)
            account = Account(
                id=len(self._accounts) + 1,
                owner=owner,
                currency=currency,
                balance=opening_balance,
                version=0,
                created_at=now,
                updated_at=now,
            )
            self._accounts[account.id] = account
            self._journal_by_account[account.id] = []
            self._books[account.id] = Books()
            self._totals.total_balance += opening_balance
            if opening_balance > 0:
                self._append(
                    account.id,
                    TransactionKind.OPEN,
                    opening_balance,
                    opening_balance,
                    None,
                    lock_mode,
                    now,
                )
            memory_keys.complete(self._keys, completion, account)
            return account

    def get_account(self, account_id: int) -> Account:
        with self._mutex:
            return self._with_held(self._require(account_id), utc_now())

    def get_accounts(self, account_ids: Sequence[int]) -> dict[int, Account]:
        now = utc_now()
        with self._mutex:
            return {
                account_id: self._with_held(self._require(account_id), now)
                for account_id in account_ids
            }

    def list_accounts(self, after: int, limit: int) -> list[Account]:
        now = utc_now()
        with self._mutex:
            ids = sorted(account_id for account_id in self._accounts if account_id > after)
            return [self._with_held(self._accounts[account_id], now) for account_id in ids[:limit]]

    def _with_held(self, account: Account, now: dt.datetime) -> Account:
        return replace(account, held=self._holds.held(account.id, now))

    # ------------------------------------------------------------------ journal

    def get_transaction(self, transaction_id: int) -> Transaction:
        with self._mutex:
            return _found(self._transactions, transaction_id, "transaction")

    def list_transactions(
        self, account_id: int, before: int | None, limit: int
    ) -> list[Transaction]:
        with self._mutex:
            self._require(account_id)
            ids = self._journal_by_account[account_id]
            newest_first = [i for i in reversed(ids) if before is None or i < before]
            return [self._transactions[i] for i in newest_first[:limit]]

    def get_transfer(self, transfer_id: int) -> Transfer:
        with self._mutex:
            return _found(self._transfers, transfer_id, "transfer")

    def audit_account(self, account_id: int) -> AccountAudit:
        now = utc_now()
        with self._mutex:
            account = self._require(account_id)
            audit = self._books[account.id].audit(account)
            return replace(audit, holds=self._holds.audit(account.id, account.balance, now))

    def audit_bank(self) -> BankAudit:
        # The holds are judged by a walk over the accounts that have any (the
        # journal's totals stay O(1)): holds are few next to journal entries.
        now = utc_now()
        with self._mutex:
            holds = sum(
                (
                    self._holds.audit(account_id, self._accounts[account_id].balance, now)
                    for account_id in self._holds.by_account
                ),
                HoldAudit(),
            )
            return replace(self._totals.audit(len(self._accounts)), holds=holds)

    # ------------------------------------------------------------------ idempotency keys

    def claim_key(self, claim: Claim) -> KeyRecord | None:
        with self._mutex:
            return memory_keys.claim_key(self._keys, claim)

    def finish_key(self, claim: Claim, response: StoredResponse) -> None:
        with self._mutex:
            memory_keys.finish_key(self._keys, claim, response)

    def release_key(self, claim: Claim) -> None:
        with self._mutex:
            memory_keys.release_key(self._keys, claim)

    def purge_keys(self, now: dt.datetime, limit: int) -> int:
        with self._mutex:
            return memory_keys.purge_keys(self._keys, now, limit)

    # ------------------------------------------------------------------ settings

    def load_mode(self) -> ModeSetting | None:
        return self._mode

    def save_mode(self, setting: ModeSetting, *, overwrite: bool = True) -> None:
        with self._mutex:
            if overwrite or self._mode is None:
                self._mode = setting

    def check_ready(self) -> None:
        return None

    # ------------------------------------------------------------------ internals

    def _require(self, account_id: int) -> Account:
        return _found(self._accounts, account_id, "account")

    def _append(
        self,
        account_id: int,
        kind: TransactionKind,
        amount: int,
        balance_after: int,
        transfer_id: int | None,
        lock_mode: str,
        now: dt.datetime,
        hold_id: int | None = None,
    ) -> Transaction:
        entry = Transaction(
            id=len(self._transactions) + 1,
            account_id=account_id,
            kind=kind,
            amount=amount,
            balance_after=balance_after,
            transfer_id=transfer_id,
            lock_mode=lock_mode,
            created_at=now,
            hold_id=hold_id,
        )
        self._transactions[entry.id] = entry
        self._journal_by_account[account_id].append(entry.id)
        self._totals.post(self._books[account_id], entry, self._accounts[account_id])
        return entry


def _found(rows: dict[int, Row], row_id: int, what: str) -> Row:
    try:
        return rows[row_id]
    except KeyError:
        raise NotFound(f"{what} {row_id} does not exist") from None
