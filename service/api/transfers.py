"""Transfers and single journal entries."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from service import services
from service.api import idempotent
from service.api.context import current_bank, serving_setting
from service.api.parsing import MAX_ID_DIGITS, json_object, validated
from service.api.representations import transaction_json, transfer_json
from service.api.spec import (
    AMOUNT,
    INTEGER_ONLY,
    MONEY_PROBLEMS,
    Body,
    BodyField,
    Endpoint,
    Success,
    documented,
)
from service.idempotency import StoredResponse
from service.stores.base import Written

blueprint = Blueprint("transfers", __name__)

# Ids past what a path may name cannot exist; bounding them here keeps a huge
# JSON integer from reaching the database (BIGINT overflow would be a 500).
MAX_ACCOUNT_ID = 10**MAX_ID_DIGITS - 1


def _account_id_error(value: object) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return "must be a positive integer account id"
    if not 1 <= value <= MAX_ACCOUNT_ID:
        return f"must be a positive integer account id, at most {MAX_ACCOUNT_ID}"
    return None


ACCOUNT_ID_SCHEMA = {
    "type": "integer",
    "minimum": 1,
    "maximum": MAX_ACCOUNT_ID,
    "description": f"an account id; {INTEGER_ONLY}",
}
NEW_TRANSFER = Body(
    "NewTransfer",
    (
        BodyField("from_account", _account_id_error, ACCOUNT_ID_SCHEMA),
        BodyField("to_account", _account_id_error, ACCOUNT_ID_SCHEMA),
        *AMOUNT.fields,
    ),
    description="the two accounts differ and hold the same currency",
)


@blueprint.post("/transfers")
@documented(
    Endpoint(
        "Transfer money between two accounts",
        "transfers",
        Success(201, "the transfer and its two journal entries", "Transfer", location=True),
        description="Both accounts are locked in ascending id order and both legs are "
        "written in one transaction.",
        body=NEW_TRANSFER,
        problems=(
            *MONEY_PROBLEMS,
            "insufficient_funds",
            "balance_limit_exceeded",
            "same_account",
            "currency_mismatch",
        ),
        idempotent=True,
    )
)
def create_transfer() -> Response:
    body = json_object()
    fields = validated(body, NEW_TRANSFER)
    setting = serving_setting()
    return idempotent.answer(
        body,
        lambda completion: services.transfer(
            fields["from_account"],
            fields["to_account"],
            fields["amount"],
            setting,
            current_bank(),
            completion,
        ),
        lambda written: _created_transfer(written, setting.lock_mode.value),
    )


def _created_transfer(written: Written, lock_mode: str) -> StoredResponse:
    recorded = written.transfer
    if recorded is None:
        raise RuntimeError("the store did not record the transfer it was given")
    return idempotent.created(transfer_json(recorded), f"/transfers/{recorded.id}", lock_mode)


@blueprint.get("/transfers/<id:transfer_id>")
@documented(
    Endpoint(
        "Read a transfer",
        "transfers",
        Success(200, "the transfer", "Transfer"),
        problems=("not_found", "store_unavailable"),
    )
)
def get_transfer(transfer_id: int) -> Response:
    return jsonify(transfer_json(current_bank().store.get_transfer(transfer_id)))


@blueprint.get("/transactions/<id:transaction_id>")
@documented(
    Endpoint(
        "Read a journal entry",
        "transfers",
        Success(200, "the journal entry", "Transaction"),
        problems=("not_found", "store_unavailable"),
    )
)
def get_transaction(transaction_id: int) -> Response:
    return jsonify(transaction_json(current_bank().store.get_transaction(transaction_id)))
