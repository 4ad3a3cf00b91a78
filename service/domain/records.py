"""The bank's records: lock modes, journal entry kinds, accounts, entries, transfers, legs.

Frozen dataclasses and enums, standard library only: what an account and a
journal entry look like, and how a leg moves money (its signed delta).
"""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass


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

    @property
    def sign(self) -> int:
        """+1 when the kind adds money to its account, -1 when it takes it."""
        return -1 if self in (TransactionKind.WITHDRAWAL, TransactionKind.TRANSFER_OUT) else 1


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
    """One account's part of an operation: what to journal and how it moves money."""

    account_id: int
    kind: TransactionKind
    amount: int

    @property
    def delta(self) -> int:
        return self.kind.sign * self.amount


@dataclass(frozen=True)
class BalanceState:
    """What a read-modify-write reads: the balance and the version it had."""

    account_id: int
    balance: int
    version: int


@dataclass(frozen=True)
class ModeSetting:
    lock_mode: LockMode
    race_window_ms: int
