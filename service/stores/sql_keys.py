"""Idempotency keys in SQL: claim, complete, release and purge, one statement each.

Each function runs inside a transaction the store opened (see
`SqlStore._write`); completing a key in the same transaction as the money
it answers for is what makes a keyed request happen at most once.
"""

from __future__ import annotations

import datetime as dt

from service.idempotency import (
    Claim,
    ClaimLost,
    Completion,
    IdempotencyInProgress,
    KeyRecord,
    StoredResponse,
)
from service.stores import sql_statements as statements
from service.stores.sql_cursor import DriverCursor


def claim_key(cursor: DriverCursor, claim: Claim) -> KeyRecord | None:
    """Claim the key (None), or what the request holding it recorded."""
    timestamp = cursor.dialect.timestamp
    owner = cursor.value(
        statements.CLAIM_KEY,
        {
            "scope": claim.scope,
            "key": claim.key,
            "fingerprint": claim.fingerprint,
            "owner": claim.owner,
            "now": timestamp(claim.now),
            "expires_at": timestamp(claim.expires_at),
            "stale_before": timestamp(claim.stale_before),
        },
    )
    if owner == claim.owner:
        return None
    row = cursor.row(statements.READ_KEY, {"scope": claim.scope, "key": claim.key})
    if row is None:  # released between the two statements: the caller tries again
        raise IdempotencyInProgress("the key was just released; retry")
    fingerprint, state, status, headers, body = row
    response = None
    if state == "done":
        response = StoredResponse.from_columns(status, body, headers)
    return KeyRecord(fingerprint, response)


def store_response(cursor: DriverCursor, claim: Claim, response: StoredResponse) -> None:
    """Record the key's response, or ClaimLost if this request no longer holds the claim."""
    changed = cursor.row_count(
        statements.COMPLETE_KEY,
        {
            "status": response.status,
            "headers": response.headers_json(),
            "body": response.body,
            "scope": claim.scope,
            "key": claim.key,
            "owner": claim.owner,
        },
    )
    if changed != 1:
        raise ClaimLost()


def complete(cursor: DriverCursor, completion: Completion | None, result: object) -> None:
    """Store the key's response in this transaction, or undo it all (ClaimLost)."""
    if completion is not None:
        store_response(cursor, completion.claim, completion.respond(result))


def release_key(cursor: DriverCursor, claim: Claim) -> None:
    parameters = {"scope": claim.scope, "key": claim.key, "owner": claim.owner}
    cursor.row_count(statements.RELEASE_KEY, parameters)


def purge_keys(cursor: DriverCursor, now: dt.datetime, limit: int) -> int:
    parameters = {"now": cursor.dialect.timestamp(now), "limit": limit}
    return cursor.row_count(statements.PURGE_KEYS, parameters)
