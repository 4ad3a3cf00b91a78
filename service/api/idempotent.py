"""Every POST that moves money or opens an account, answered once per Idempotency-Key.

A view parses and validates its body first (a refusal there is never
stored: nothing was decided), then hands `answer` the operation to run and
how to turn its result into the response. Without the header the operation
simply runs. With it, the key is claimed, the operation runs with a
`Completion` so the store writes the response in the money's own
transaction, and the same bytes are sent. See `service.idempotency` for the
rules and why.

Responses here are built without Flask's request context (`created`),
because a store may render them on its writer thread.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any, TypeVar

from flask import Response, g, request

from service.api.auth import idempotency_scope
from service.api.context import current_bank
from service.api.errors import handle_domain_error
from service.domain import (
    BalanceLimitExceeded,
    CurrencyMismatch,
    HoldNotPending,
    InsufficientFunds,
    NotFound,
    SameAccount,
    utc_now,
)
from service.idempotency import (
    KEY_HEADER,
    REPLAYED_HEADER,
    Claim,
    Completion,
    IdempotencyInProgress,
    IdempotencyKeyReused,
    KeyRecord,
    StoredResponse,
    checked_key,
    claim_lease,
    fingerprint,
)

T = TypeVar("T")
JSON_MEDIA_TYPE = "application/json"
# Refusals decided by running the operation: they are its answer, stored and
# replayed like a success (a retry must not succeed later by surprise).
DECIDED_REFUSALS = (
    NotFound,
    HoldNotPending,
    InsufficientFunds,
    BalanceLimitExceeded,
    SameAccount,
    CurrencyMismatch,
)
CLAIM_ATTEMPTS = 3


def created(body: Mapping[str, Any], location: str, lock_mode: str) -> StoredResponse:
    """A 201 with its Location, rendered the way jsonify renders (compact, one line)."""
    return StoredResponse(
        201,
        json.dumps(body, separators=(",", ":")) + "\n",
        JSON_MEDIA_TYPE,
        {"Location": location, "X-Lock-Mode": lock_mode},
    )


def answer(
    body: Mapping[str, Any],
    execute: Callable[[Completion | None], T],
    respond: Callable[[T], StoredResponse],
) -> Response:
    given = request.headers.get(KEY_HEADER)
    if given is None:
        return _as_flask(respond(execute(None)))
    key = checked_key(_unquoted(given))
    bank = current_bank()
    if bank.key_janitor is not None:
        bank.key_janitor.maybe_purge()
    claim = Claim(
        idempotency_scope(),
        key,
        fingerprint(request.method, request.path, body),
        os.urandom(16).hex(),  # this attempt's own: 128 random bits, as uuid4 (cheaper)
        utc_now(),
        timedelta(hours=bank.idempotency_ttl_hours),
        claim_lease(bank.lock_timeout_ms, bank.modes.current().race_window_ms),
    )
    record = _claim(claim)
    if record is not None:
        return _replay(record, claim)
    # The response stored in the money's transaction is the one sent: rendered
    # once (the store renders it for the result it commits; that result is returned).
    rendered: list[tuple[Any, StoredResponse]] = []  # the last result and its response

    def respond_once(result: Any) -> StoredResponse:
        if not rendered or rendered[0][0] is not result:
            rendered[:] = [(result, respond(result))]
        return rendered[0][1]

    try:
        result = execute(Completion(claim, respond_once))
    except DECIDED_REFUSALS as refusal:
        refused = handle_domain_error(refusal)
        bank.store.finish_key(claim, _stored(refused))
        return refused
    except BaseException:
        # It could not run (503, a bug): nothing was decided, so a retry may run it.
        with contextlib.suppress(Exception):
            bank.store.release_key(claim)
        raise
    return _as_flask(respond_once(result))


def _claim(claim: Claim) -> KeyRecord | None:
    # A key released between the claim and the read of its holder is simply
    # claimed again; a key that keeps changing hands is "in progress".
    for attempt in range(CLAIM_ATTEMPTS):
        try:
            return current_bank().store.claim_key(claim)
        except IdempotencyInProgress:
            if attempt == CLAIM_ATTEMPTS - 1:
                raise
    raise RuntimeError("unreachable: the claim loop returns or raises")


def _replay(record: KeyRecord, claim: Claim) -> Response:
    if record.fingerprint != claim.fingerprint:
        raise IdempotencyKeyReused(
            f"this {KEY_HEADER} was used for a different request; use a new key"
        )
    if record.response is None:
        raise IdempotencyInProgress(
            f"a request with this {KEY_HEADER} is still running; retry after it finishes"
        )
    response = _as_flask(record.response)
    response.headers[REPLAYED_HEADER] = "true"
    return response


def _as_flask(stored: StoredResponse) -> Response:
    response = Response(stored.body, status=stored.status, content_type=stored.content_type)
    response.headers.update(stored.headers)
    if "X-Lock-Mode" in stored.headers:
        g.lock_mode = stored.headers["X-Lock-Mode"]  # what the response hook echoes
    return response


def _stored(response: Response) -> StoredResponse:
    headers = {
        name: response.headers[name] for name in ("Retry-After",) if name in response.headers
    }
    return StoredResponse(
        response.status_code,
        response.get_data(as_text=True),
        response.content_type or JSON_MEDIA_TYPE,
        {**headers, "X-Lock-Mode": g.get("lock_mode") or "unknown"},
    )


def _unquoted(value: str) -> str:
    """The draft sends the key as a structured-field string ("..."); Stripe's clients do not."""
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value
