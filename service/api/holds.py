"""Holds: place one on an account, read it, capture all or part of it, void it, list them.

Each POST goes through the same idempotent wrapper as every money POST (a
`hold_not_pending` refusal is decided by running it, so it is stored and
replayed), and each runs in the serving lock mode like any balance change
(`service.services`, `service.modes`). A hold past its `expires_at` is
shown `expired` at once (`service.domain.holds`).
"""

from __future__ import annotations

from typing import Annotated, Any

from flask import Blueprint, Response, jsonify, request, url_for
from pydantic import MISSING, Field

from service import services
from service.api import idempotent
from service.api.accounts import BEFORE, PAGE_SIZE, created_transaction
from service.api.bodies import INTEGER_ONLY, AmountMinor, Refusal, RequestBody, validated
from service.api.context import current_bank, serving_setting
from service.api.parsing import DEFAULT_PAGE_SIZE, json_object, query_values
from service.api.representations import Hold, HoldPage, Transaction, hold_json
from service.api.spec import MONEY_PROBLEMS, Endpoint, QueryChoice, Success, documented
from service.domain import (
    DEFAULT_EXPIRES_IN_S,
    MAX_EXPIRES_IN_S,
    MIN_EXPIRES_IN_S,
    FieldError,
    HoldStatus,
    ValidationFailed,
)
from service.idempotency import StoredResponse
from service.stores.base import Written

blueprint = Blueprint("holds", __name__)
TAG = "holds"
STATUS = QueryChoice(
    "status",
    tuple(status.value for status in HoldStatus),
    "only holds with this status (as of now: a pending hold past its expiry is expired)",
)


class NewHold(RequestBody):
    """Money to reserve on the account, for a while."""

    amount: AmountMinor
    expires_in_s: Annotated[
        int,
        Field(
            ge=MIN_EXPIRES_IN_S,
            le=MAX_EXPIRES_IN_S,
            description="seconds until the hold expires and its money is available again; "
            + INTEGER_ONLY,
        ),
        Refusal("must be an integer number of seconds"),
    ] = DEFAULT_EXPIRES_IN_S


class Capture(RequestBody):
    """How much of the hold to capture (all of it when absent); the rest is released."""

    amount: Annotated[
        Annotated[
            int,
            Field(
                ge=1,
                description="minor units, 1 to the held amount; default the whole hold; "
                + INTEGER_ONLY,
            ),
        ]
        | MISSING,
        Refusal("must be an integer number of minor units"),
    ] = MISSING


class Void(RequestBody):
    """No fields: an empty body, or `{}`."""


def _optional_body() -> dict[str, Any]:
    """The JSON object sent, or {} when no body came (capture and void need none).

    "No body" is judged from the headers alone (no Content-Length, or 0, and
    not chunked), so a body cut off on the way still gets json_object's 408.
    """
    chunked = "chunked" in request.headers.get("Transfer-Encoding", "").lower()
    if not request.content_length and not chunked:
        return {}
    return json_object()


@blueprint.post("/accounts/<id:account_id>/holds")
@documented(
    Endpoint(
        "Place a hold: reserve money now, capture or void it later",
        TAG,
        Success(201, "the hold", Hold, location=True),
        description="Refused with `insufficient_funds` when the amount exceeds the available "
        "money (balance less pending holds).",
        body=NewHold,
        problems=(*MONEY_PROBLEMS, "insufficient_funds"),
        idempotent=True,
    )
)
def place_hold(account_id: int) -> Response:
    body = json_object()
    new = validated(body, NewHold)
    setting = serving_setting()
    return idempotent.answer(
        body,
        lambda completion: services.place_hold(
            account_id, new.amount, new.expires_in_s, setting, current_bank(), completion
        ),
        lambda written: _created_hold(written, setting.lock_mode.value),
    )


def _created_hold(written: Written, lock_mode: str) -> StoredResponse:
    if written.hold is None:
        raise RuntimeError("the store did not record the hold it was given")
    return idempotent.created(hold_json(written.hold), f"/holds/{written.hold.id}", lock_mode)


@blueprint.get("/holds/<id:hold_id>")
@documented(
    Endpoint(
        "Read a hold",
        TAG,
        Success(200, "the hold", Hold),
        problems=("not_found", "store_unavailable"),
    )
)
def get_hold(hold_id: int) -> Response:
    return jsonify(hold_json(services.hold_now(hold_id, current_bank())))


@blueprint.post("/holds/<id:hold_id>/capture")
@documented(
    Endpoint(
        "Capture a hold, all or part: the journal entry (kind capture)",
        TAG,
        Success(201, "the journal entry", Transaction, location=True),
        description="The body is optional. The hold becomes `captured` with "
        "`captured_amount`; the rest is released. A hold not pending: `hold_not_pending`; "
        "an amount above the held amount: `validation_error`.",
        body=Capture,
        problems=(*MONEY_PROBLEMS, "hold_not_pending"),
        idempotent=True,
    )
)
def capture_hold(hold_id: int) -> Response:
    body = _optional_body()
    given = validated(body, Capture).amount
    amount = None if given is MISSING else given
    setting = serving_setting()
    return idempotent.answer(
        body,
        lambda completion: services.capture_hold(
            hold_id, amount, setting, current_bank(), completion
        ),
        lambda written: created_transaction(written.transactions[0], setting.lock_mode.value),
    )


@blueprint.post("/holds/<id:hold_id>/void")
@documented(
    Endpoint(
        "Void a hold: its money is available again",
        TAG,
        Success(200, "the hold, now voided", Hold),
        description="No body is needed (`{}` is taken too). A hold not pending: "
        "`hold_not_pending`.",
        body=Void,
        problems=(*MONEY_PROBLEMS, "hold_not_pending"),
        idempotent=True,
    )
)
def void_hold(hold_id: int) -> Response:
    body = _optional_body()
    validated(body, Void)
    setting = serving_setting()
    return idempotent.answer(
        body,
        lambda completion: services.void_hold(hold_id, setting, current_bank(), completion),
        lambda written: _voided(written, setting.lock_mode.value),
    )


def _voided(written: Written, lock_mode: str) -> StoredResponse:
    if written.hold is None:
        raise RuntimeError("the store did not record the hold it was given")
    answer = idempotent.created(hold_json(written.hold), f"/holds/{written.hold.id}", lock_mode)
    return StoredResponse(200, answer.body, answer.content_type, {"X-Lock-Mode": lock_mode})


@blueprint.get("/accounts/<id:account_id>/holds")
@documented(
    Endpoint(
        "An account's holds, newest first",
        TAG,
        Success(200, "one page of holds", HoldPage),
        query=(STATUS, PAGE_SIZE, BEFORE),
        problems=("validation_error", "not_found", "store_unavailable"),
    )
)
def list_holds(account_id: int) -> Response:
    status = _status_filter()
    query = query_values((PAGE_SIZE, BEFORE), also_allowed=frozenset({STATUS.name}))
    limit = query["limit"] or DEFAULT_PAGE_SIZE
    before = query["before"]
    page = current_bank().store.list_holds(account_id, status, before, limit + 1)
    items, more = page[:limit], len(page) > limit
    arguments: dict[str, Any] = {"account_id": account_id, "limit": limit}
    if status is not None:
        arguments["status"] = status.value
    next_url = url_for("holds.list_holds", before=items[-1].id, **arguments) if more else None
    page_json: HoldPage = {"items": [hold_json(hold) for hold in items], "next": next_url}
    return jsonify(page_json)


def _status_filter() -> HoldStatus | None:
    raw = request.args.get(STATUS.name)
    if raw is None:
        return None
    if raw not in STATUS.choices:
        raise ValidationFailed(
            [FieldError(STATUS.name, "must be one of " + ", ".join(STATUS.choices))]
        )
    return HoldStatus(raw)
