"""Idempotency keys in memory: a dict of claims, and the rules that take one over.

The functions mirror the statements of `sql_statements` (CLAIM_KEY,
COMPLETE_KEY, RELEASE_KEY, PURGE_KEYS) over the in-memory store's dict; the
store calls them under its mutex, so each is all or nothing like its SQL twin.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from service.idempotency import Claim, ClaimLost, Completion, KeyRecord, StoredResponse


@dataclass
class KeyRow:
    fingerprint: str
    owner: str
    claimed_at: dt.datetime
    expires_at: dt.datetime
    response: StoredResponse | None = None


#: (scope, key) -> its row.
Keys = dict[tuple[str, str], KeyRow]


def claim_key(keys: Keys, claim: Claim) -> KeyRecord | None:
    """Claim the key (None), or what the request holding it recorded."""
    held = keys.get((claim.scope, claim.key))
    takes_over = (
        held is None
        or held.expires_at < claim.now
        or (
            held.response is None
            and held.claimed_at < claim.stale_before
            and held.fingerprint == claim.fingerprint
        )
    )
    if takes_over:
        keys[(claim.scope, claim.key)] = KeyRow(
            claim.fingerprint, claim.owner, claim.now, claim.expires_at
        )
        return None
    assert held is not None
    return KeyRecord(held.fingerprint, held.response)


def check_claim_held(keys: Keys, claim: Claim) -> None:
    """ClaimLost unless this request still holds the key, in progress."""
    held = keys.get((claim.scope, claim.key))
    if held is None or held.owner != claim.owner or held.response is not None:
        raise ClaimLost()


def check_completion(keys: Keys, completion: Completion | None) -> None:
    if completion is not None:
        check_claim_held(keys, completion.claim)


def finish_key(keys: Keys, claim: Claim, response: StoredResponse) -> None:
    check_claim_held(keys, claim)
    keys[(claim.scope, claim.key)].response = response


def complete(keys: Keys, completion: Completion | None, result: object) -> None:
    """Record the response of a claim `check_completion` found held."""
    if completion is not None:
        claim = completion.claim
        keys[(claim.scope, claim.key)].response = completion.respond(result)


def release_key(keys: Keys, claim: Claim) -> None:
    held = keys.get((claim.scope, claim.key))
    if held is not None and held.owner == claim.owner and held.response is None:
        del keys[(claim.scope, claim.key)]


def purge_keys(keys: Keys, now: dt.datetime, limit: int) -> int:
    expired = [name for name, row in keys.items() if row.expires_at < now][:limit]
    for name in expired:
        del keys[name]
    return len(expired)
