"""The bank's records: lock modes, journal entry kinds, accounts, entries, transfers, legs.

Frozen dataclasses and enums, standard library only: what an account and a
journal entry look like, and how a leg moves money (its signed delta).
"""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass

from service.domain.holds import HoldAction, HoldChange


class LockMode(enum.StrEnum):
    """How a balance change protects its read-modify-write (DESIGN §2)."""

    UNLOCKED = "unlocked"
    LOCKED = "locked"
    PROCESS_LOCK = "process-lock"
    OPTIMISTIC = "optimistic"
    ATOMIC = "atomic"
    REDIS_LOCK = "redis-lock"
    FENCED = "fenced"

    @property
    def is_unsafe(self) -> bool:
        return self in UNSAFE_LOCK_MODES

    @property
    def uses_redis(self) -> bool:
        return self in REDIS_LOCK_MODES


UNSAFE_LOCK_MODES = frozenset({LockMode.UNLOCKED, LockMode.PROCESS_LOCK, LockMode.REDIS_LOCK})
# The modes whose lock lives in Redis (BANK_REDIS_URL): only they ever connect to it.
REDIS_LOCK_MODES = frozenset({LockMode.REDIS_LOCK, LockMode.FENCED})


class TransactionKind(enum.StrEnum):
    OPEN = "open"
    DEPOSIT = "deposit"
    WITHDRAWAL = "withdrawal"
    TRANSFER_IN = "transfer_in"
    TRANSFER_OUT = "transfer_out"
    #: A hold's capture: the balance decrease that ends a hold (DESIGN §3 "Holds").
    CAPTURE = "capture"

    @property
    def sign(self) -> int:
        """+1 when the kind adds money to its account, -1 when it takes it."""
        return 1 if self in CREDIT_KINDS else -1


CREDIT_KINDS = frozenset(
    {TransactionKind.OPEN, TransactionKind.DEPOSIT, TransactionKind.TRANSFER_IN}
)


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def rfc3339(moment: dt.datetime) -> str:
    """RFC 3339 in UTC with a `Z`; naive values are UTC by convention (SQLite)."""
    if moment.tzinfo is not None:
        moment = moment.astimezone(dt.UTC).replace(tzinfo=None)
    return moment.isoformat(timespec="microseconds") + "Z"


@dataclass(frozen=True)
class Account:
    id: int
    owner: str
    currency: str
    balance: int
    version: int
    created_at: dt.datetime
    updated_at: dt.datetime
    #: The sum of the pending holds not yet expired, when the account was read.
    held: int = 0

    @property
    def available(self) -> int:
        return self.balance - self.held


@dataclass(frozen=True)
class Transaction:
    id: int
    account_id: int
    kind: TransactionKind
    amount: int
    balance_after: int
    transfer_id: int | None
    lock_mode: str
    created_at: dt.datetime
    #: The hold a capture ended (None for every other kind).
    hold_id: int | None = None

    @property
    def signed_amount(self) -> int:
        return self.kind.sign * self.amount


@dataclass(frozen=True)
class Transfer:
    id: int
    from_account: int
    to_account: int
    amount: int
    lock_mode: str
    created_at: dt.datetime
    legs: tuple[Transaction, ...] = ()


@dataclass(frozen=True)
class Leg:
    """One account's part of an operation: what to journal and how it moves money.

    A leg may also change a hold (`hold`): placing or voiding one is a leg
    that moves no money and is not journaled (its kind a `HoldAction`), but
    writes the account like any other leg, so every lock mode protects it the
    same way; a capture is a journaled `capture` leg that ends its hold.
    """

    account_id: int
    kind: TransactionKind | HoldAction
    amount: int
    hold: HoldChange | None = None

    @property
    def delta(self) -> int:
        return self.kind.sign * self.amount

    @property
    def journal_kind(self) -> TransactionKind | None:
        """The journal entry's kind, or None for a leg that moves no money."""
        return self.kind if isinstance(self.kind, TransactionKind) else None

    @property
    def reserve(self) -> int:
        """How the leg moves the account's `held`."""
        return self.hold.reserve if self.hold is not None else 0

    @property
    def lowers_available(self) -> bool:
        """True when the leg needs the available money to cover it (debits and new holds)."""
        return self.delta - self.reserve < 0


@dataclass(frozen=True)
class BalanceState:
    """What a read-modify-write reads: the balance and the version it had."""

    account_id: int
    balance: int
    version: int
    #: The sum of the pending holds not yet expired at the read.
    held: int = 0


@dataclass(frozen=True)
class ModeSetting:
    lock_mode: LockMode
    race_window_ms: int
