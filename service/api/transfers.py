"""Transfers and single journal entries."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from service import services
from service.api import idempotent
from service.api.bodies import NewTransfer, validated
from service.api.context import current_bank, serving_setting
from service.api.parsing import json_object
from service.api.representations import Transaction, Transfer, transaction_json, transfer_json
from service.api.spec import MONEY_PROBLEMS, Endpoint, Success, documented
from service.idempotency import StoredResponse
from service.stores.base import Written

blueprint = Blueprint("transfers", __name__)


@blueprint.post("/transfers")
@documented(
    Endpoint(
        "Transfer money between two accounts",
        "transfers",
        Success(201, "the transfer and its two journal entries", Transfer, location=True),
        description="Both accounts are locked in ascending id order and both legs are "
        "written in one transaction.",
        body=NewTransfer,
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
    new = validated(body, NewTransfer)
    setting = serving_setting()
    return idempotent.answer(
        body,
        lambda completion: services.transfer(
            new.from_account,
            new.to_account,
            new.amount,
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
        Success(200, "the transfer", Transfer),
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
        Success(200, "the journal entry", Transaction),
        problems=("not_found", "store_unavailable"),
    )
)
def get_transaction(transaction_id: int) -> Response:
    return jsonify(transaction_json(current_bank().store.get_transaction(transaction_id)))
