"""Accounts: open, read, list, deposit, withdraw, journal, audit."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, url_for

from service import services
from service.api.context import current_bank, serving_setting
from service.api.parsing import (
    MAX_ID_DIGITS,
    json_object,
    page_size,
    query_integer,
    unknown_query_parameters,
    validated,
)
from service.api.representations import account_audit_json, account_json, transaction_json
from service.domain import (
    Transaction,
    amount_error,
    currency_error,
    opening_balance_error,
    owner_error,
)

blueprint = Blueprint("accounts", __name__)

MAX_CURSOR = 10**MAX_ID_DIGITS - 1


@blueprint.post("/accounts")
def open_account() -> tuple[Response, int, dict[str, str]]:
    fields = validated(
        json_object(),
        required={"owner": owner_error},
        optional={"currency": currency_error, "opening_balance": opening_balance_error},
    )
    account = services.open_account(
        fields["owner"],
        fields.get("currency"),
        fields.get("opening_balance", 0),
        serving_setting(),
        current_bank(),
    )
    location = url_for("accounts.get_account", account_id=account.id)
    return jsonify(account_json(account)), 201, {"Location": location}


@blueprint.get("/accounts")
def list_accounts() -> Response:
    unknown_query_parameters({"limit", "after"})
    limit = page_size()
    after = query_integer("after", 0, 0, MAX_CURSOR) or 0
    page = current_bank().store.list_accounts(after, limit + 1)
    items, more = page[:limit], len(page) > limit
    next_url = url_for("accounts.list_accounts", limit=limit, after=items[-1].id) if more else None
    return jsonify({"items": [account_json(account) for account in items], "next": next_url})


@blueprint.get("/accounts/<id:account_id>")
def get_account(account_id: int) -> Response:
    return jsonify(account_json(current_bank().store.get_account(account_id)))


@blueprint.post("/accounts/<id:account_id>/deposit")
def deposit(account_id: int) -> tuple[Response, int, dict[str, str]]:
    fields = validated(json_object(), required={"amount": amount_error})
    entry = services.deposit(account_id, fields["amount"], serving_setting(), current_bank())
    return _created_transaction(entry)


@blueprint.post("/accounts/<id:account_id>/withdraw")
def withdraw(account_id: int) -> tuple[Response, int, dict[str, str]]:
    fields = validated(json_object(), required={"amount": amount_error})
    entry = services.withdraw(account_id, fields["amount"], serving_setting(), current_bank())
    return _created_transaction(entry)


def _created_transaction(entry: Transaction) -> tuple[Response, int, dict[str, str]]:
    location = url_for("transfers.get_transaction", transaction_id=entry.id)
    return jsonify(transaction_json(entry)), 201, {"Location": location}


@blueprint.get("/accounts/<id:account_id>/transactions")
def list_transactions(account_id: int) -> Response:
    unknown_query_parameters({"limit", "before"})
    limit = page_size()
    before = query_integer("before", None, 1, MAX_CURSOR)
    page = current_bank().store.list_transactions(account_id, before, limit + 1)
    items, more = page[:limit], len(page) > limit
    next_url = (
        url_for(
            "accounts.list_transactions", account_id=account_id, limit=limit, before=items[-1].id
        )
        if more
        else None
    )
    return jsonify({"items": [transaction_json(entry) for entry in items], "next": next_url})


@blueprint.get("/accounts/<id:account_id>/audit")
def audit_account(account_id: int) -> Response:
    return jsonify(account_audit_json(services.account_audit(account_id, current_bank())))
