"""Money in SQL: read balances, lock rows, write legs and journal them, in one open transaction.

Which `UPDATE` a leg runs says which lock mode wrote it: the plain
`SET balance = :new_balance` a read-modify-write ends with, its `AND version
= :expected_version` (optimistic), `AND fence = :fence` (fenced), or the
guarded `balance + :delta` (atomic; against the available money,
`ADD_TO_AVAILABLE`, when the leg lowers it). A leg's hold change is written
by `sql_holds` in the same transaction. When an UPDATE matches no row,
`_missed_write` finds the refusal to raise. PostgreSQL journals the leg in
the same statement (`sql_statements.JOURNALED`); SQLite inserts the entry
after it.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Sequence
from typing import Any

from service.domain import (
    MAX_BALANCE_MINOR,
    BalanceLimitExceeded,
    BalanceState,
    Hold,
    HoldChange,
    InsufficientFunds,
    NotFound,
    StaleLock,
    Transaction,
    TransactionKind,
    utc_now,
)
from service.idempotency import Completion
from service.stores import sql_fences, sql_holds, sql_keys
from service.stores import sql_statements as statements
from service.stores.base import (
    LegWrite,
    LegWriter,
    TransferSpec,
    VersionConflict,
    Written,
    written_since_claim,
)
from service.stores.sql_cursor import DriverCursor

# PostgreSQL: `SET LOCAL lock_timeout` as one statement taking a parameter
# (on the driver's cursor, prepared once, not through SQLAlchemy).
SET_LOCK_TIMEOUT = "SELECT set_config('lock_timeout', :ms, true)"


class SqlLegWriter(LegWriter):
    """Reads and writes balances inside one open transaction, in driver SQL."""

    def __init__(self, cursor: DriverCursor) -> None:
        self._cursor = cursor
        self._locked: dict[int, BalanceState] = {}

    def lock_rows(self, account_ids: Sequence[int], deadline: float) -> None:
        """SELECT ... FOR UPDATE one row at a time, in the order given, within one deadline.

        The locking read also reads the balance, so `read_states` under the
        lock costs no second round trip.
        """
        for position, account_id in enumerate(account_ids):
            if position > 0:  # the connection's lock_timeout bounds the first wait
                remaining_ms = max(1, int((deadline - time.monotonic()) * 1000))
                self._cursor.row(SET_LOCK_TIMEOUT, {"ms": str(remaining_ms)})
            row = self._cursor.row(statements.LOCK_ROW, {"id": account_id})
            if row is None:
                raise NotFound(f"account {account_id} does not exist")
            # Summed after the lock, in a statement of its own: its snapshot
            # then holds every hold committed by an earlier lock holder.
            held = sql_holds.held(self._cursor, account_id, utc_now())
            self._locked[account_id] = BalanceState(account_id, row[0], row[1], held)

    def read_states(self, account_ids: Sequence[int]) -> dict[int, BalanceState]:
        if all(account_id in self._locked for account_id in account_ids):
            return {account_id: self._locked[account_id] for account_id in account_ids}
        states = {}
        now = self._cursor.dialect.timestamp(utc_now())
        for account_id in account_ids:
            row = self._cursor.row(statements.READ_STATE_AND_HELD, {"id": account_id, "now": now})
            if row is None:
                raise NotFound(f"account {account_id} does not exist")
            states[account_id] = BalanceState(account_id, row[0], row[1], int(row[2]))
        return states

    def read_hold(self, hold_id: int) -> Hold:
        return sql_holds.read_hold(self._cursor.connection, hold_id)

    def write_legs(
        self,
        writes: Sequence[LegWrite],
        lock_mode: str,
        transfer: TransferSpec | None = None,
        completion: Completion | None = None,
    ) -> Written:
        now = utc_now()
        stamp = self._cursor.dialect.timestamp(now)
        transfer_id = None
        if transfer is not None:
            transfer_id = self._cursor.value(
                statements.INSERT_TRANSFER,
                {
                    "from_account": transfer.from_account,
                    "to_account": transfer.to_account,
                    "amount": transfer.amount,
                    "lock_mode": lock_mode,
                    "created_at": stamp,
                },
            )
        if self._cursor.dialect.is_postgresql:
            # Whoever changes a hold first queues on its account's row, as every
            # balance write does: two modes racing on one hold (workers serve
            # the old mode for a moment after a switch) then wait for each
            # other in one order, instead of each taking one row and
            # deadlocking on the other's.
            for write in writes:
                if write.leg.hold is not None:
                    self._cursor.row(statements.LOCK_ROW_FOR_WRITE, {"id": write.leg.account_id})
        entries = []
        hold = None
        for write in writes:
            # A capture or void ends its hold before the account is written:
            # the loser of two racing `atomic` captures stops at the hold row.
            if write.leg.hold is not None and write.leg.hold.hold_id is not None:
                captured = write.leg.amount if write.leg.journal_kind is not None else None
                hold = sql_holds.write_hold(self._cursor, write, captured, now)
            entry = self._write_leg(write, lock_mode, transfer_id, now, stamp)
            if entry is not None:
                entries.append(entry)
            if write.leg.hold is not None and write.leg.hold.hold_id is None:
                hold = sql_holds.write_hold(self._cursor, write, None, now)
        recorded = None
        if transfer is not None and transfer_id is not None:
            recorded = transfer.recorded(transfer_id, lock_mode, now, tuple(entries))
        written = Written(tuple(entries), recorded, hold)
        sql_keys.complete(self._cursor, completion, written)
        return written

    def _write_leg(
        self, write: LegWrite, lock_mode: str, transfer_id: int | None, now: dt.datetime, stamp: Any
    ) -> Transaction | None:
        """Write the leg's account; its journal entry, or None for a leg that moves no money."""
        leg = write.leg
        parameters: dict[str, Any] = {"id": leg.account_id, "updated_at": stamp}
        if write.new_balance is None and leg.lowers_available:
            # see ADD_TO_AVAILABLE (a hold's leg took the lock in write_legs)
            if self._cursor.dialect.is_postgresql and leg.hold is None:
                self._cursor.row(statements.LOCK_ROW_FOR_WRITE, {"id": leg.account_id})
            sql = statements.ADD_TO_AVAILABLE
            parameters.update(
                delta=leg.delta, max_balance=MAX_BALANCE_MINOR, reserve=leg.reserve, now=stamp
            )
        elif write.new_balance is None:
            sql = statements.ADD_TO_BALANCE
            parameters.update(delta=leg.delta, max_balance=MAX_BALANCE_MINOR)
        elif write.fence is not None:
            sql = statements.SET_BALANCE_IF_FENCE
            parameters.update(
                new_balance=write.new_balance,
                fence=write.fence,
                expected_version=write.expected_version,
            )
        elif write.expected_version is None:
            sql = statements.SET_BALANCE
            parameters.update(new_balance=write.new_balance)
        else:
            sql = statements.SET_BALANCE_IF_VERSION
            parameters.update(
                new_balance=write.new_balance, expected_version=write.expected_version
            )
        kind = leg.journal_kind
        if kind is None:  # a hold placed or voided: the account is written, not journaled
            if self._cursor.value(sql, parameters) is None:
                raise self._missed_write(write)
            return None
        entry = {
            "kind": kind.value,
            "amount": leg.amount,
            "transfer_id": transfer_id,
            "lock_mode": lock_mode,
            "created_at": stamp,
            "hold_id": _captured_hold(leg.hold, kind),
        }
        if self._cursor.dialect.is_postgresql:  # one round trip for the balance and its entry
            row = self._cursor.row(statements.JOURNALED[sql], {**parameters, **entry})
            if row is None:
                raise self._missed_write(write)
            entry_id, balance_after = row
        else:
            balance_after = self._cursor.value(sql, parameters)
            if balance_after is None:
                raise self._missed_write(write)
            entry_id = self._cursor.value(
                statements.INSERT_TRANSACTION,
                {"account_id": leg.account_id, "balance_after": balance_after, **entry},
            )
        return Transaction(
            entry_id,
            leg.account_id,
            kind,
            leg.amount,
            int(balance_after),
            transfer_id,
            lock_mode,
            now,
            entry["hold_id"],
        )

    def _missed_write(self, write: LegWrite) -> Exception:
        """Why an UPDATE matched no row: the refusal to raise."""
        account_id = write.leg.account_id
        if write.fence is not None:
            refusal = sql_fences.stale_or_missing(self._cursor, account_id)
            if isinstance(refusal, StaleLock) and refusal.newer_token == write.fence:
                return written_since_claim(account_id, write.fence)  # the version moved
            return refusal
        if self._cursor.row(statements.READ_STATE, {"id": account_id}) is None:
            return NotFound(f"account {account_id} does not exist")
        if write.expected_version is not None:
            return VersionConflict(
                f"account {account_id} moved past version {write.expected_version}"
            )
        if write.leg.delta < 0 or write.leg.lowers_available:
            return InsufficientFunds(
                f"account {account_id} has not {write.leg.amount} available"
                " (its balance less its pending holds)"
            )
        return BalanceLimitExceeded(f"account {account_id} would pass {MAX_BALANCE_MINOR}")


def _captured_hold(change: HoldChange | None, kind: TransactionKind) -> int | None:
    """The hold a `capture` entry ends: the audit counts captures per hold."""
    if kind is TransactionKind.CAPTURE and change is not None:
        return change.hold_id
    return None
