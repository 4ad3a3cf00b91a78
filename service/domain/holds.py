"""Holds (two-phase money): authorize now, capture or void later (DESIGN §3 "Holds").

A hold reserves part of an account's balance: `available = balance - held`,
where `held` is the sum of the account's pending holds that have not expired.
A hold's status changes once, from `pending` to `captured`, `voided` or
`expired`.

Why expiry needs no sweeper: a hold is expired from its `expires_at` on by
definition, not by a job that marks it. The stores keep `pending` in the row
and every reader applies `status_at(now)`, and `held` is summed at read time
over pending holds with `expires_at > now`; so an expired hold's amount is
available again at its `expires_at` exactly, whether or not anything touched
it, and no client can see a lag. A capture or void decides against the clock
at its write (see `service.modes`), so it cannot land after the expiry in a
safe mode.

Standard library only; what protects a hold's read-modify-write is the lock
mode's business (`service.modes`), not this module's.
"""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass, replace

from service.domain.errors import DomainError

MIN_EXPIRES_IN_S = 1
MAX_EXPIRES_IN_S = 604_800
DEFAULT_EXPIRES_IN_S = 600


class HoldStatus(enum.StrEnum):
    PENDING = "pending"
    CAPTURED = "captured"
    VOIDED = "voided"
    EXPIRED = "expired"


class HoldAction(enum.StrEnum):
    """What an operation does to a hold without a journal entry (a capture is journaled)."""

    PLACE = "hold"
    VOID = "void"

    @property
    def sign(self) -> int:
        """Neither placing nor voiding a hold moves the balance."""
        return 0


@dataclass(frozen=True)
class Hold:
    id: int
    account_id: int
    amount: int
    #: The stored status: `pending` stays stored after `expires_at` (see `status_at`).
    status: HoldStatus
    captured_amount: int | None
    expires_at: dt.datetime
    created_at: dt.datetime
    updated_at: dt.datetime
    #: Set by a void and by nothing else, so a capture written over a void
    #: (only `unlocked` lets that happen) cannot erase the void's trace.
    voided_at: dt.datetime | None = None

    def status_at(self, now: dt.datetime) -> HoldStatus:
        """The status a client sees at `now`: a pending hold past its expiry is expired."""
        if self.status is HoldStatus.PENDING and self.expires_at <= now:
            return HoldStatus.EXPIRED
        return self.status

    def seen_at(self, now: dt.datetime) -> Hold:
        """The hold as shown at `now` (expired holds show `expired`, updated at their expiry)."""
        status = self.status_at(now)
        if status is self.status:
            return self
        return replace(self, status=status, updated_at=self.expires_at)


@dataclass(frozen=True)
class HoldChange:
    """The hold part of an operation: place a new hold, or capture or void an existing one.

    `amount` is the hold's whole amount (immutable once placed): placing adds
    it to `held`, capturing or voiding takes it away again. A capture's
    journal entry carries the captured amount (`Leg.amount`).
    """

    hold_id: int | None
    amount: int
    expires_at: dt.datetime | None = None

    @property
    def reserve(self) -> int:
        """How this change moves `held`: + for a new hold, - for ending one."""
        return self.amount if self.hold_id is None else -self.amount


class HoldNotPending(DomainError):
    """Capture or void of a hold that is already captured, voided or expired."""

    code = "hold_not_pending"

    def __init__(self, hold_id: int, status: HoldStatus) -> None:
        super().__init__(f"hold {hold_id} is {status.value}, not pending; nothing was changed")
        self.hold_id = hold_id
        self.status = status


def check_pending(hold: Hold, now: dt.datetime) -> None:
    """Refuse to end a hold that is not pending at `now` (HoldNotPending names its status)."""
    status = hold.status_at(now)
    if status is not HoldStatus.PENDING:
        raise HoldNotPending(hold.id, status)


def expires_in_error(value: object) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return "must be an integer number of seconds"
    if not MIN_EXPIRES_IN_S <= value <= MAX_EXPIRES_IN_S:
        return f"must be between {MIN_EXPIRES_IN_S} and {MAX_EXPIRES_IN_S}"
    return None


@dataclass(frozen=True)
class HoldCaptures:
    """What the journal says about one hold: its capture entries."""

    count: int = 0
    total: int = 0
    #: Capture entries written at or after the hold's `expires_at`.
    late: int = 0


@dataclass(frozen=True)
class HoldAudit:
    """The hold invariants of one account (or summed over the bank).

    `held` is summed from the pending, unexpired holds (it is not stored, so
    it cannot drift from them); the anomalies are what only a broken mode
    produces: a hold with two outcomes (two captures, or a capture of a hold
    voided or expired), captures above the hold's amount, a capture written
    after the hold expired, and held money above the balance (`available <
    0`, counted in accounts).
    """

    held: int = 0
    two_outcomes: int = 0
    captured_above_amount: int = 0
    captured_after_expiry: int = 0
    overcommitted_accounts: int = 0

    @property
    def anomalies(self) -> int:
        return (
            self.two_outcomes
            + self.captured_above_amount
            + self.captured_after_expiry
            + self.overcommitted_accounts
        )

    def __add__(self, other: HoldAudit) -> HoldAudit:
        return HoldAudit(
            self.held + other.held,
            self.two_outcomes + other.two_outcomes,
            self.captured_above_amount + other.captured_above_amount,
            self.captured_after_expiry + other.captured_after_expiry,
            self.overcommitted_accounts + other.overcommitted_accounts,
        )


def audit_holds(
    balance: int, holds: list[tuple[Hold, HoldCaptures]], now: dt.datetime
) -> HoldAudit:
    """Judge one account's holds against the journal's capture entries (the reference)."""
    held = sum(hold.amount for hold, _ in holds if hold.status_at(now) is HoldStatus.PENDING)
    return HoldAudit(
        held=held,
        two_outcomes=sum(1 for hold, captures in holds if _ended_twice(hold, captures)),
        captured_above_amount=sum(
            1
            for hold, captures in holds
            if captures.total > hold.amount or (hold.captured_amount or 0) > hold.amount
        ),
        captured_after_expiry=sum(1 for _, captures in holds if captures.late > 0),
        overcommitted_accounts=1 if balance - held < 0 else 0,
    )


def _ended_twice(hold: Hold, captures: HoldCaptures) -> bool:
    """Two outcomes: two captures, a capture and a void, or a capture of a hold not captured."""
    endings = captures.count + (1 if hold.voided_at is not None else 0)
    return endings > 1 or (captures.count == 1 and hold.status is not HoldStatus.CAPTURED)
