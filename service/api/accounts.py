"""Accounts: open, read, list, deposit, withdraw, journal, audit."""

from __future__ import annotations

from collections.abc import Callable

from flask import Blueprint, Response, jsonify, url_for

from service import services
from service.api import idempotent
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
from service.idempotency import StoredResponse
from service.stores.base import Written

blueprint = Blueprint("accounts", __name__)

MAX_CURSOR = 10**MAX_ID_DIGITS - 1


@blueprint.post("/accounts")
def open_account() -> Response:
    body = json_object()
    fields = validated(
        body,
        required={"owner": owner_error},
        optional={"currency": currency_error, "opening_balance": opening_balance_error},
    )
    setting = serving_setting()
    return idempotent.answer(
        body,
        lambda completion: services.open_account(
            fields["owner"],
            fields.get("currency"),
            fields.get("opening_balance", 0),
            setting,
            current_bank(),
            completion,
        ),
        lambda account: idempotent.created(
            account_json(account), f"/accounts/{account.id}", setting.lock_mode.value
        ),
    )


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
def deposit(account_id: int) -> Response:
    return _move_money(services.deposit, account_id)


@blueprint.post("/accounts/<id:account_id>/withdraw")
def withdraw(account_id: int) -> Response:
    return _move_money(services.withdraw, account_id)


def _move_money(operation: Callable[..., Written], account_id: int) -> Response:
    body = json_object()
    fields = validated(body, required={"amount": amount_error})
    setting = serving_setting()
    return idempotent.answer(
        body,
        lambda completion: operation(
            account_id, fields["amount"], setting, current_bank(), completion
        ),
        lambda written: created_transaction(written.transactions[0], setting.lock_mode.value),
    )


def created_transaction(entry: Transaction, lock_mode: str) -> StoredResponse:
    return idempotent.created(transaction_json(entry), f"/transactions/{entry.id}", lock_mode)


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
