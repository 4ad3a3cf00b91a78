"""The store interface: what the lock modes and services may ask of storage.

A store offers the *primitives* a read-modify-write is made of -- read a
balance, write legs (absolutely, by version compare-and-swap, or as a
guarded atomic add, or fenced by a lock's token), and hold the store's own
exclusive lock over some accounts -- and leaves the choice of how to combine
them to `service.modes`. That keeps every lock mode in one readable place
and every store honest: a store never decides whether a race is allowed.

Stores know the domain; they know nothing of HTTP or of lock-mode policy.
"""

from __future__ import annotations

import abc
import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from service.domain import (
    Account,
    AccountAudit,
    BalanceState,
    BankAudit,
    Hold,
    HoldStatus,
    Leg,
    ModeSetting,
    StaleLock,
    Transaction,
    Transfer,
)
from service.idempotency import Claim, Completion, KeyRecord, StoredResponse


class VersionConflict(Exception):
    """An optimistic write found the account at another version; nothing was written."""


class RetryableConflict(Exception):
    """The database aborted the transaction (deadlock, serialization); nothing was written."""

    def __init__(self, detail: str, *, deadlock: bool) -> None:
        super().__init__(detail)
        self.deadlock = deadlock


@dataclass(frozen=True)
class LegWrite:
    """How one leg changes its account's stored balance.

    `new_balance` set: write that value (what a read-modify-write computed);
    with `expected_version` the write only happens if nobody wrote since the
    read, else `VersionConflict`. `new_balance` None: add the leg's delta in
    the database itself, refused with InsufficientFunds/BalanceLimitExceeded
    when the result would leave [0, MAX_BALANCE_MINOR]. With `fence` (a
    fencing token that `Store.claim_states` recorded on the account) and the
    `expected_version` that claim read, the write only happens if the
    account still holds that token *and* that version -- no newer token
    claimed it, and no write in any other mode landed since the read (a
    worker still serving `locked`, `optimistic` or `atomic` after a mode
    switch) -- else StaleLock, and nothing of the whole operation is written.
    """

    leg: Leg
    new_balance: int | None = None
    expected_version: int | None = None
    fence: int | None = None
    #: A capture or void: refuse (HoldNotPending) unless the stored hold is still
    #: pending at the write -- what `atomic`, which never read it, relies on.
    check_hold_pending: bool = False
    #: A capture or void: refuse (HoldNotPending, expired) if the hold's
    #: `expires_at` has come by the write's own clock.
    check_hold_expiry: bool = True

    def __post_init__(self) -> None:
        if self.fence is not None and (self.new_balance is None or self.expected_version is None):
            raise ValueError("a fenced write carries the balance and version its claim read")


def written_since_claim(account_id: int, fence: int) -> StaleLock:
    """A fenced write's refusal when its token still holds but another mode wrote meanwhile."""
    return StaleLock(
        f"account {account_id} was written by another request since this request read it "
        "under its lock; nothing was written, retry",
        fence,
    )


@dataclass(frozen=True)
class TransferSpec:
    from_account: int
    to_account: int
    amount: int

    def recorded(
        self,
        transfer_id: int,
        lock_mode: str,
        created_at: dt.datetime,
        legs: tuple[Transaction, ...],
    ) -> Transfer:
        """The transfer as the store recorded it, with its journal entries."""
        return Transfer(
            transfer_id,
            self.from_account,
            self.to_account,
            self.amount,
            lock_mode,
            created_at,
            legs,
        )


@dataclass(frozen=True)
class Written:
    transactions: tuple[Transaction, ...]
    transfer: Transfer | None = None
    #: The hold the operation placed, captured or voided, as written.
    hold: Hold | None = None


class LegWriter(abc.ABC):
    """Reads and writes balances; inside `Store.exclusive` both run under the lock."""

    @abc.abstractmethod
    def read_states(self, account_ids: Sequence[int]) -> dict[int, BalanceState]:
        """Current balance, version and held money of each account; NotFound if one is missing."""

    @abc.abstractmethod
    def read_hold(self, hold_id: int) -> Hold:
        """The hold as stored (status `pending` even past its expiry); NotFound if unknown."""

    @abc.abstractmethod
    def write_legs(
        self,
        writes: Sequence[LegWrite],
        lock_mode: str,
        transfer: TransferSpec | None = None,
        completion: Completion | None = None,
    ) -> Written:
        """Apply every write and journal every leg, all or nothing.

        A leg's hold change is written with it: a new hold is inserted, a
        captured or voided one gets its final status (guarded as its
        `LegWrite` says); the account is written (version + 1) in every case.

        With a `completion`, the idempotency key's response is stored in the
        same transaction (ClaimLost, and nothing written, if the claim no
        longer holds).
        """


class Store(LegWriter):
    """Accounts, the journal, the mode setting, and the exclusive lock."""

    #: True when every worker process shares this store's data.
    shared_across_processes: bool = True

    @abc.abstractmethod
    def exclusive(
        self, account_ids: Sequence[int], work: Callable[[LegWriter], Written]
    ) -> Written:
        """Run `work` holding the store's exclusive lock on the accounts, taken in the given order.

        Every wait is bounded by the lock timeout (LockTimeout). Reads and
        writes through the writer `work` is given happen in one transaction,
        committed (durably) before this returns; if `work` raises, nothing
        it wrote stays. A callback rather than a `with` block, because a
        store may run it on another thread (SQLite's group commit).
        """

    @abc.abstractmethod
    def claim_states(self, fences: Mapping[int, int]) -> dict[int, BalanceState]:
        """`fenced`: record each account's fencing token, and read it; all or nothing.

        A token is recorded only if it is above the one the account holds
        (the account's `fence`); otherwise nothing is recorded and StaleLock
        says a newer lock holder came first. A write fenced with the token
        and the version read here then applies only while the account still
        holds both: a newer holder, or a write in any other mode, in between
        makes it StaleLock.
        """

    @abc.abstractmethod
    def open_account(
        self,
        owner: str,
        currency: str,
        opening_balance: int,
        lock_mode: str,
        completion: Completion | None = None,
    ) -> Account: ...

    @abc.abstractmethod
    def get_account(self, account_id: int) -> Account: ...

    @abc.abstractmethod
    def get_accounts(self, account_ids: Sequence[int]) -> dict[int, Account]:
        """Several accounts in one read; NotFound names the first missing one, in order."""

    @abc.abstractmethod
    def list_accounts(self, after: int, limit: int) -> list[Account]: ...

    @abc.abstractmethod
    def get_transaction(self, transaction_id: int) -> Transaction: ...

    @abc.abstractmethod
    def list_transactions(
        self, account_id: int, before: int | None, limit: int
    ) -> list[Transaction]:
        """Newest first, ids below `before` when given."""

    @abc.abstractmethod
    def get_transfer(self, transfer_id: int) -> Transfer: ...

    @abc.abstractmethod
    def list_holds(
        self, account_id: int, status: HoldStatus | None, before: int | None, limit: int
    ) -> list[Hold]:
        """An account's holds, newest first, ids below `before`; `status` as seen now."""

    @abc.abstractmethod
    def audit_account(self, account_id: int) -> AccountAudit:
        """One account's balance against its journal (NotFound if unknown)."""

    @abc.abstractmethod
    def audit_bank(self) -> BankAudit:
        """Totals over every account, in bounded time and memory at any journal length."""

    @abc.abstractmethod
    def load_mode(self) -> ModeSetting | None: ...

    @abc.abstractmethod
    def save_mode(self, setting: ModeSetting, *, overwrite: bool = True) -> None:
        """Store the shared mode; with overwrite=False only if none is stored yet (atomically)."""

    # ------------------------------------------------------------ idempotency keys

    @abc.abstractmethod
    def claim_key(self, claim: Claim) -> KeyRecord | None:
        """Claim the key for this request (None) or say what another request holds.

        Committed at once, so every worker and replica sees the claim. An
        expired key, or a stale claim of the same request, is taken over.
        """

    @abc.abstractmethod
    def finish_key(self, claim: Claim, response: StoredResponse) -> None:
        """Store a response decided without moving money (a refusal), if the claim holds."""

    @abc.abstractmethod
    def release_key(self, claim: Claim) -> None:
        """Forget this request's in-progress claim: it could not run, a retry may."""

    @abc.abstractmethod
    def purge_keys(self, now: dt.datetime, limit: int) -> int:
        """Delete up to `limit` expired keys; how many went."""

    @abc.abstractmethod
    def check_ready(self) -> None:
        """Raise StoreUnavailable (with a reason) unless the store can serve."""

    def close(self) -> None:
        """Release connections; the default store holds none."""
