"""Money in SQL: read balances, lock rows, write legs and journal them, in one open transaction.

Which `UPDATE` a leg runs says which lock mode wrote it: the plain
`SET balance = :new_balance` a read-modify-write ends with, its `AND version
= :expected_version` (optimistic), `AND fence = :fence` (fenced), or the
guarded `balance + :delta` (atomic). When an UPDATE matches no row,
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
    InsufficientFunds,
    NotFound,
    StaleLock,
    Transaction,
    utc_now,
)
from service.idempotency import Completion
from service.stores import sql_fences, sql_keys
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
                self._cursor.connection.exec_driver_sql(f"SET LOCAL lock_timeout = {remaining_ms}")
            row = self._cursor.row(statements.LOCK_ROW, {"id": account_id})
            if row is None:
                raise NotFound(f"account {account_id} does not exist")
            self._locked[account_id] = BalanceState(account_id, row[0], row[1])

    def read_states(self, account_ids: Sequence[int]) -> dict[int, BalanceState]:
        if all(account_id in self._locked for account_id in account_ids):
            return {account_id: self._locked[account_id] for account_id in account_ids}
        states = {}
        for account_id in account_ids:
            row = self._cursor.row(statements.READ_STATE, {"id": account_id})
            if row is None:
                raise NotFound(f"account {account_id} does not exist")
            states[account_id] = BalanceState(account_id, row[0], row[1])
        return states

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
        entries = tuple(
            self._write_leg(write, lock_mode, transfer_id, now, stamp) for write in writes
        )
        recorded = None
        if transfer is not None and transfer_id is not None:
            recorded = transfer.recorded(transfer_id, lock_mode, now, entries)
        written = Written(entries, recorded)
        sql_keys.complete(self._cursor, completion, written)
        return written

    def _write_leg(
        self, write: LegWrite, lock_mode: str, transfer_id: int | None, now: dt.datetime, stamp: Any
    ) -> Transaction:
        leg = write.leg
        parameters: dict[str, Any] = {"id": leg.account_id, "updated_at": stamp}
        if write.new_balance is None:
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
        entry = {
            "kind": leg.kind.value,
            "amount": leg.amount,
            "transfer_id": transfer_id,
            "lock_mode": lock_mode,
            "created_at": stamp,
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
            leg.kind,
            leg.amount,
            int(balance_after),
            transfer_id,
            lock_mode,
            now,
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
        if write.leg.delta < 0:
            return InsufficientFunds(f"account {account_id} does not cover {write.leg.amount}")
        return BalanceLimitExceeded(f"account {account_id} would pass {MAX_BALANCE_MINOR}")
