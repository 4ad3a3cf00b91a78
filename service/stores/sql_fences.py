"""`fenced` in SQL: a lock's fencing token recorded on its accounts, and why a fence refused.

Only this mode touches the `fence` column. A claim records the token only
if it is newer than the account's (`CLAIM_FENCE`); the fenced write itself
(`SET_BALANCE_IF_FENCE`) is one of the money writes of `sql_money`, which
asks `stale_or_missing` why it matched no row.
"""

from __future__ import annotations

from collections.abc import Mapping

from service.domain import BalanceState, NotFound, StaleLock, utc_now
from service.stores import sql_holds
from service.stores import sql_statements as statements
from service.stores.sql_cursor import DriverCursor


def claim_states(cursor: DriverCursor, fences: Mapping[int, int]) -> dict[int, BalanceState]:
    """Record each account's token and read its state, or refuse (StaleLock, NotFound)."""
    states = {}
    for account_id in sorted(fences):  # the row locks' order: ascending ids
        row = cursor.row(statements.CLAIM_FENCE, {"id": account_id, "fence": fences[account_id]})
        if row is None:
            raise stale_or_missing(cursor, account_id)
        # Summed after the claim took the row lock (see sql_money.lock_rows).
        held = sql_holds.held(cursor, account_id, utc_now())
        states[account_id] = BalanceState(account_id, row[0], row[1], held)
    return states


def stale_or_missing(cursor: DriverCursor, account_id: int) -> Exception:
    """Why a fenced statement matched no row: a newer token, or no such account."""
    row = cursor.row(statements.READ_FENCE, {"id": account_id})
    if row is None:
        return NotFound(f"account {account_id} does not exist")
    return StaleLock.on_account(account_id, int(row[0]))
