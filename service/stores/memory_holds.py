"""The in-memory store's holds: the rows, the held money, and each hold's captures.

Used under the store's mutex, like the rest of its dicts. `held` is summed
when read over the account's pending holds that have not expired (never
stored, so nothing has to mark an expired hold, see `service.domain.holds`).
How a capture or void is guarded at its write (`LegWrite.check_hold_*`) is
the lock mode's choice; this module only applies it, checking every
condition before `apply` changes anything.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field, replace

from service.domain import (
    Hold,
    HoldAudit,
    HoldCaptures,
    HoldNotPending,
    HoldStatus,
    NotFound,
    Transaction,
    audit_holds,
)
from service.stores.base import LegWrite


@dataclass
class Holds:
    rows: dict[int, Hold] = field(default_factory=dict)
    by_account: dict[int, list[int]] = field(default_factory=dict)
    captures: dict[int, HoldCaptures] = field(default_factory=dict)

    def get(self, hold_id: int) -> Hold:
        try:
            return self.rows[hold_id]
        except KeyError:
            raise NotFound(f"hold {hold_id} does not exist") from None

    def held(self, account_id: int, now: dt.datetime) -> int:
        return sum(
            hold.amount
            for hold_id in self.by_account.get(account_id, ())
            for hold in (self.rows[hold_id],)
            if hold.status_at(now) is HoldStatus.PENDING
        )

    def page(
        self,
        account_id: int,
        status: HoldStatus | None,
        before: int | None,
        limit: int,
        now: dt.datetime,
    ) -> list[Hold]:
        """Newest first, ids below `before`, with `status` as seen at `now`."""
        seen = (
            self.rows[hold_id].seen_at(now)
            for hold_id in reversed(self.by_account.get(account_id, ()))
            if before is None or hold_id < before
        )
        return [hold for hold in seen if status is None or hold.status is status][:limit]

    def check(self, write: LegWrite, now: dt.datetime) -> None:
        """Refuse (HoldNotPending) a capture or void the write's guards do not allow."""
        change = write.leg.hold
        if change is None or change.hold_id is None:
            return
        hold = self.get(change.hold_id)
        if (write.check_hold_pending and hold.status is not HoldStatus.PENDING) or (
            write.check_hold_expiry and hold.expires_at <= now
        ):
            raise HoldNotPending(hold.id, hold.status_at(now))

    def apply(self, write: LegWrite, now: dt.datetime, entry: Transaction | None) -> Hold | None:
        """Insert the leg's new hold or end the one it names (a capture with its entry)."""
        change = write.leg.hold
        if change is None:
            return None
        if change.hold_id is None:
            if change.expires_at is None:
                raise ValueError("a new hold needs its expiry")
            hold = Hold(
                len(self.rows) + 1,
                write.leg.account_id,
                change.amount,
                HoldStatus.PENDING,
                None,
                change.expires_at,
                now,
                now,
            )
            self.by_account.setdefault(hold.account_id, []).append(hold.id)
        elif entry is not None:
            hold = replace(
                self.get(change.hold_id),
                status=HoldStatus.CAPTURED,
                captured_amount=entry.amount,
                updated_at=now,
            )
            before = self.captures.get(hold.id, HoldCaptures())
            self.captures[hold.id] = HoldCaptures(
                before.count + 1,
                before.total + entry.amount,
                before.late + (1 if entry.created_at >= hold.expires_at else 0),
            )
        else:
            hold = replace(
                self.get(change.hold_id), status=HoldStatus.VOIDED, updated_at=now, voided_at=now
            )
        self.rows[hold.id] = hold
        return hold

    def audit(self, account_id: int, balance: int, now: dt.datetime) -> HoldAudit:
        return audit_holds(
            balance,
            [
                (self.rows[hold_id], self.captures.get(hold_id, HoldCaptures()))
                for hold_id in self.by_account.get(account_id, ())
            ],
            now,
        )
