"""The bank's domain: accounts, the journal, money rules and domain errors.

Standard library only. This module must not know about HTTP, SQL, Flask or
threads: it says what a valid amount is, what an account and a journal entry
look like, how an operation changes balances, and how an audit judges a
journal. The stores and the API depend on it, never the other way round.
"""

from __future__ import annotations

import datetime as dt
import enum
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

MIN_AMOUNT_MINOR = 1
MAX_AMOUNT_MINOR = 1_000_000_000_000
# Balances stay exactly representable as a JavaScript number.
MAX_BALANCE_MINOR = 2**53 - 1
OWNER_MAX_LENGTH = 200
DEFAULT_CURRENCY = "USD"
MAX_RACE_WINDOW_MS = 5000
CURRENCY_PATTERN = re.compile(r"[A-Z]{3}")
CONTROL_CATEGORIES = frozenset({"Zl", "Zp"})
ORDINARY_WHITESPACE = " \t\n\r\x0b\x0c"


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


# --------------------------------------------------------------------------- errors


class DomainError(Exception):
    """A refusal the client caused or can retry; never a bug.

    `code` is the stable slug of DESIGN §3; the API maps it to a status.
    """

    code = "domain_error"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class NotFound(DomainError):
    code = "not_found"


class InsufficientFunds(DomainError):
    code = "insufficient_funds"


class BalanceLimitExceeded(DomainError):
    code = "balance_limit_exceeded"


class SameAccount(DomainError):
    code = "same_account"


class CurrencyMismatch(DomainError):
    code = "currency_mismatch"


class StaleLock(DomainError):
    """`fenced`: this request's lock lease ran out and a newer holder took the account.

    Its write was refused by the store (the fencing token is older than the
    account's), so nothing changed; retrying takes a fresh lock.
    """

    code = "stale_lock"

    def __init__(self, detail: str, newer_token: int = 0) -> None:
        super().__init__(detail)
        #: The token the account holds: the newer holder's (or, if the lock
        #: service lost its counter, one it must count past).
        self.newer_token = newer_token

    @classmethod
    def on_account(cls, account_id: int, newer_token: int) -> StaleLock:
        return cls(
            f"this request's lock on account {account_id} expired and a newer lock holder "
            "took the account; nothing was written, retry",
            newer_token,
        )


class UnsafeModeRefused(DomainError):
    code = "forbidden"


class Unavailable(DomainError):
    """The operation could not run now; nothing changed; retrying may work."""

    code = "unavailable"
    retry_after_seconds = 1


class LockTimeout(Unavailable):
    code = "lock_timeout"


class WriteConflict(Unavailable):
    code = "write_conflict"


class AuditTimeout(Unavailable):
    """An audit ran past its time bound and was cancelled (it reads; it changed nothing)."""

    code = "audit_timeout"
    retry_after_seconds = 30


class StoreUnavailable(Unavailable):
    code = "store_unavailable"
    retry_after_seconds = 5


class OutcomeUnknown(StoreUnavailable):
    """A write's COMMIT failed on the way: unlike every other 503, it MAY have been applied.

    A StoreUnavailable still (everything that handles a 503 handles it), with
    its own code so a client need not parse the detail: repeat the request
    with the same Idempotency-Key to learn its outcome.
    """

    code = "outcome_unknown"


@dataclass(frozen=True)
class FieldError:
    field: str
    message: str


class ValidationFailed(DomainError):
    code = "validation_error"

    def __init__(self, errors: Sequence[FieldError]) -> None:
        super().__init__("; ".join(f"{error.field}: {error.message}" for error in errors))
        self.errors = tuple(errors)


# --------------------------------------------------------------------------- rules


def integer_error(value: object, minimum: int, maximum: int) -> str | None:
    """Why `value` is not a JSON integer in [minimum, maximum], or None.

    bool is an int subclass in Python, so it is excluded by name; floats are
    refused even when whole (1e3), since money never travels as a binary
    fraction.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        return "must be an integer number of minor units"
    if value < minimum:
        return f"must be at least {minimum}"
    if value > maximum:
        return f"must be at most {maximum}"
    return None


def amount_error(value: object) -> str | None:
    return integer_error(value, MIN_AMOUNT_MINOR, MAX_AMOUNT_MINOR)


def opening_balance_error(value: object) -> str | None:
    return integer_error(value, 0, MAX_BALANCE_MINOR)


def owner_error(value: object) -> str | None:
    if not isinstance(value, str):
        return "must be a string"
    trimmed = value.strip()
    if not trimmed:
        return "must not be empty"
    if len(trimmed) > OWNER_MAX_LENGTH:
        return f"must be at most {OWNER_MAX_LENGTH} characters"
    # Ordinary edge whitespace is trimmed; str.strip() would also eat the
    # separators \x1c-\x1f, which must be refused, not silently dropped. Line
    # and paragraph separators (Zl, Zp) break a name across lines like \n.
    if any(
        unicodedata.category(character).startswith("C")
        or unicodedata.category(character) in CONTROL_CATEGORIES
        for character in value.strip(ORDINARY_WHITESPACE)
    ):
        return "must not contain control characters"
    return None


def currency_error(value: object) -> str | None:
    if not isinstance(value, str) or not CURRENCY_PATTERN.fullmatch(value):
        return "must be three uppercase letters (ISO 4217 style)"
    return None


def race_window_error(value: object) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return "must be an integer number of milliseconds"
    if not 0 <= value <= MAX_RACE_WINDOW_MS:
        return f"must be between 0 and {MAX_RACE_WINDOW_MS}"
    return None


def lock_mode_error(value: object) -> str | None:
    if not isinstance(value, str) or value not in {mode.value for mode in LockMode}:
        return "must be one of " + ", ".join(mode.value for mode in LockMode)
    return None


def check_new_balance(balance: int, delta: int, account_id: int) -> int:
    """The balance after applying `delta`, or the domain refusal."""
    new_balance = balance + delta
    if new_balance < 0:
        raise InsufficientFunds(
            f"account {account_id} holds {balance}, which does not cover {-delta}"
        )
    if new_balance > MAX_BALANCE_MINOR:
        raise BalanceLimitExceeded(
            f"account {account_id} would hold {new_balance}, over the limit {MAX_BALANCE_MINOR}"
        )
    return new_balance


# --------------------------------------------------------------------------- records


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


# --------------------------------------------------------------------------- audit


@dataclass(frozen=True)
class AccountAudit:
    account_id: int
    balance: int
    journal_balance: int
    chain_breaks: int
    lowest_journal_balance: int

    @property
    def drift(self) -> int:
        return self.balance - self.journal_balance

    @property
    def consistent(self) -> bool:
        return (
            self.drift == 0
            and self.chain_breaks == 0
            and self.lowest_journal_balance >= 0
            and self.balance >= 0
        )

    @property
    def went_negative(self) -> bool:
        return self.balance < 0 or self.lowest_journal_balance < 0


def audit_account(account_id: int, balance: int, journal: Iterable[Transaction]) -> AccountAudit:
    """Judge one account's journal (in id order) against its stored balance.

    The journal sum is what the balance should be if no update was lost; the
    chain (each `balance_after` = previous `balance_after` ± amount) catches
    anomalies that cancel out in a sum; a journal sum that dips below zero is
    an acknowledged overdraft even when the stored balance looks fine.
    """
    running = 0
    lowest = 0
    breaks = 0
    previous_after = 0
    for entry in journal:
        running += entry.signed_amount
        lowest = min(lowest, running)
        if entry.balance_after != previous_after + entry.signed_amount:
            breaks += 1
        previous_after = entry.balance_after
    return AccountAudit(account_id, balance, running, breaks, lowest)


@dataclass(frozen=True)
class BankAudit:
    accounts: int
    inconsistent_accounts: int
    negative_accounts: int
    chain_breaks: int
    total_balance: int
    total_journal: int
    per_account: tuple[AccountAudit, ...] = field(default=(), repr=False)

    @property
    def drift(self) -> int:
        return self.total_balance - self.total_journal

    @property
    def consistent(self) -> bool:
        return self.inconsistent_accounts == 0 and self.drift == 0


def audit_bank(audits: Iterable[AccountAudit]) -> BankAudit:
    collected = tuple(audits)
    return BankAudit(
        accounts=len(collected),
        inconsistent_accounts=sum(1 for audit in collected if not audit.consistent),
        negative_accounts=sum(1 for audit in collected if audit.went_negative),
        chain_breaks=sum(audit.chain_breaks for audit in collected),
        total_balance=sum(audit.balance for audit in collected),
        total_journal=sum(audit.journal_balance for audit in collected),
        per_account=collected,
    )
