"""The domain's refusals: each a client caused or can retry, never a bug.

Each error carries the stable `code` of DESIGN §3; the API maps codes to
statuses and problem documents. Standard library only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


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
