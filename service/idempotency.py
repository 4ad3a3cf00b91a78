"""Idempotency keys: what a retried POST may be answered, and what must be stored.

Follows the IETF httpapi draft "The Idempotency-Key HTTP Header Field" (-07)
and Stripe's behaviour (DESIGN §3):

- The first request with a key *claims* it, in a transaction of its own, so
  that every worker and replica sees the key as in progress at once.
- The response of the operation is stored **in the same transaction as the
  money movement** (`Completion`, run by the store inside that transaction):
  no crash leaves money moved without its key recorded, or the reverse. The
  write only commits if this request still owns the claim.
- A repeat with the same key and the same request (method, path and body as
  parsed JSON) is answered the stored response and executes nothing. The
  same key with another request is refused (422); a repeat while the first
  still runs gets 409 with Retry-After.
- A business refusal decided by executing (insufficient funds, an unknown
  account, ...) is stored and replayed; a request refused before execution
  (validation) or that could not run (503, a bug) leaves no key behind.
- A claim whose request died with its process is taken over once its lease
  (`claim_lease`: 3 lock timeouts + 2 race windows + 5 s) has passed; keys are
  kept `BANK_IDEMPOTENCY_TTL_HOURS`.

Scope: a key belongs to a `Claim.scope`. With client tokens (BANK_API_TOKENS)
the API makes each client a scope of its own, a digest of its token
(service/api/auth.py `idempotency_scope`), as Stripe scopes keys to the
account: one client's key never replays, refuses or blocks another's.
Without client tokens there is one scope (`DEFAULT_SCOPE`). The stores
know a scope only as an opaque string of at most 64 characters.

Standard library only: the stores and the API depend on this module.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from service.domain import DomainError

KEY_HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
KEY_PATTERN = re.compile(r"[\x20-\x7e]{1,255}")
DEFAULT_TTL_HOURS = 24
MAX_TTL_HOURS = 24 * 365
# A claim is its request's for longer than that request can run: its waits are
# each bounded by the lock timeout (the claim's own write, the lock, the group
# commit), it sleeps its race window at most twice (optimistic retries stay
# within the lock timeout), plus a margin. Only then may a retry take it over.
CLAIM_LEASE_LOCK_TIMEOUTS = 3
CLAIM_LEASE_RACE_WINDOWS = 2
CLAIM_LEASE_MARGIN_SECONDS = 5


def claim_lease(lock_timeout_ms: int, race_window_ms: int) -> dt.timedelta:
    return dt.timedelta(
        milliseconds=CLAIM_LEASE_LOCK_TIMEOUTS * lock_timeout_ms
        + CLAIM_LEASE_RACE_WINDOWS * race_window_ms,
        seconds=CLAIM_LEASE_MARGIN_SECONDS,
    )


IN_PROGRESS_RETRY_AFTER_SECONDS = 1
# Headers of a response that are part of what is replayed.
STORED_HEADERS = ("Location", "X-Lock-Mode")
DEFAULT_SCOPE = ""


class InvalidIdempotencyKey(DomainError):
    code = "invalid_idempotency_key"


class IdempotencyKeyReused(DomainError):
    code = "idempotency_key_reused"


class IdempotencyInProgress(DomainError):
    code = "idempotency_in_progress"
    retry_after_seconds = IN_PROGRESS_RETRY_AFTER_SECONDS


def checked_key(value: str) -> str:
    if not KEY_PATTERN.fullmatch(value):
        raise InvalidIdempotencyKey(f"{KEY_HEADER} must be 1 to 255 printable ASCII characters")
    return value


def fingerprint(method: str, path: str, body: Mapping[str, Any]) -> str:
    """The request's identity: key order and white space in the body do not matter."""
    canonical = json.dumps(
        [method.upper(), path, body], sort_keys=True, separators=(",", ":"), ensure_ascii=True
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class StoredResponse:
    status: int
    body: str
    content_type: str
    headers: dict[str, str] = field(default_factory=dict)

    def headers_json(self) -> str:
        return json.dumps({"content_type": self.content_type, **self.headers}, sort_keys=True)

    @classmethod
    def from_columns(cls, status: int, body: str, headers_json: str) -> StoredResponse:
        headers = json.loads(headers_json)
        content_type = headers.pop("content_type")
        return cls(status, body, content_type, headers)


@dataclass(frozen=True)
class Claim:
    """This request's hold on a key (`owner` is unique to the attempt)."""

    scope: str
    key: str
    fingerprint: str
    owner: str
    now: dt.datetime
    ttl: dt.timedelta
    lease: dt.timedelta = dt.timedelta(seconds=60)

    @property
    def expires_at(self) -> dt.datetime:
        return self.now + self.ttl

    @property
    def stale_before(self) -> dt.datetime:
        """Claims older than this belong to requests that died."""
        return self.now - self.lease


@dataclass(frozen=True)
class KeyRecord:
    """What the store holds for a key another request claimed first."""

    fingerprint: str
    response: StoredResponse | None  # None while in progress


@dataclass(frozen=True)
class Completion:
    """Store the response in the transaction that moves the money, if the claim still holds.

    `respond` turns the operation's result into the response; it must be
    pure (no request context): a store may call it on its writer thread.
    """

    claim: Claim
    respond: Callable[[Any], StoredResponse]


class ClaimLost(IdempotencyInProgress):
    """The claim was taken over (this request ran past the lease); nothing was written."""

    def __init__(
        self,
        detail: str = "another attempt with this Idempotency-Key took it over; nothing was written",
    ) -> None:
        super().__init__(detail)
