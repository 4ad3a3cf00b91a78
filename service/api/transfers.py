"""Transfers and single journal entries."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from service import services
from service.api import idempotent
from service.api.context import current_bank, serving_setting
from service.api.parsing import MAX_ID_DIGITS, json_object, validated
from service.api.representations import transaction_json, transfer_json
from service.domain import amount_error
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


@blueprint.post("/transfers")
def create_transfer() -> Response:
    body = json_object()
    fields = validated(
        body,
        required={
            "from_account": _account_id_error,
            "to_account": _account_id_error,
            "amount": amount_error,
        },
    )
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
def get_transfer(transfer_id: int) -> Response:
    return jsonify(transfer_json(current_bank().store.get_transfer(transfer_id)))


@blueprint.get("/transactions/<id:transaction_id>")
def get_transaction(transaction_id: int) -> Response:
    return jsonify(transaction_json(current_bank().store.get_transaction(transaction_id)))
