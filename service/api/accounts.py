"""Accounts: open, read, list, deposit, withdraw, journal, audit, balances in one snapshot."""

from __future__ import annotations

from collections.abc import Callable

from flask import Blueprint, Response, jsonify, url_for

from service import domain, metrics, services
from service.api import idempotent
from service.api.bodies import MAX_ID, Amount, NewAccount, validated
from service.api.context import current_bank, serving_setting
from service.api.parsing import (
    DEFAULT_PAGE_SIZE,
    MAX_PAGE_SIZE,
    json_object,
    query_id_list,
    query_values,
    unknown_query_parameters,
)
from service.api.representations import (
    Account,
    AccountAudit,
    AccountPage,
    Balances,
    Transaction,
    TransactionPage,
    account_audit_json,
    account_json,
    balance_json,
    transaction_json,
)
from service.api.spec import (
    BODY_PROBLEMS,
    IDEMPOTENCY_PROBLEMS,
    MONEY_PROBLEMS,
    WRITE_PROBLEMS,
    Endpoint,
    QueryIdList,
    QueryInteger,
    Success,
    documented,
)
from service.idempotency import StoredResponse
from service.stores.base import Written

blueprint = Blueprint("accounts", __name__)

MAX_CURSOR = MAX_ID
TAG = "accounts"
# Ids per snapshot read: 100 of the longest (18 digits) still fit gunicorn's
# 4094-byte request line, and one SELECT ... IN of 100 is one cheap read.
MAX_BALANCE_IDS = 100

PAGE_SIZE = QueryInteger(
    "limit", 1, MAX_PAGE_SIZE, DEFAULT_PAGE_SIZE, "items per page; `next` links the next page"
)
AFTER = QueryInteger("after", 0, MAX_CURSOR, 0, "list accounts with an id above this one")
BALANCE_IDS = QueryIdList(
    "ids",
    MAX_CURSOR,
    MAX_BALANCE_IDS,
    f"1 to {MAX_BALANCE_IDS} distinct account ids, comma-separated (`ids=3,1,2`)",
)
BEFORE = QueryInteger(
    "before", 1, MAX_CURSOR, None, "list entries with an id below this one (newest first)"
)


@blueprint.post("/accounts")
@documented(
    Endpoint(
        "Open an account",
        TAG,
        Success(201, "the account", Account, location=True),
        body=NewAccount,
        problems=(*BODY_PROBLEMS, *IDEMPOTENCY_PROBLEMS, *WRITE_PROBLEMS),
        idempotent=True,
    )
)
def open_account() -> Response:
    body = json_object()
    new = validated(body, NewAccount)
    setting = serving_setting()
    return idempotent.answer(
        body,
        lambda completion: services.open_account(
            new.owner,
            new.currency,
            new.opening_balance,
            setting,
            current_bank(),
            completion,
        ),
        lambda account: idempotent.created(
            account_json(account), f"/accounts/{account.id}", setting.lock_mode.value
        ),
    )


@blueprint.get("/accounts")
@documented(
    Endpoint(
        "List accounts, by ascending id",
        TAG,
        Success(200, "one page of accounts", AccountPage),
        query=(PAGE_SIZE, AFTER),
        problems=("validation_error", "store_unavailable"),
    )
)
def list_accounts() -> Response:
    query = query_values((PAGE_SIZE, AFTER))
    limit = query["limit"] or DEFAULT_PAGE_SIZE
    after = query["after"] or 0
    page = current_bank().store.list_accounts(after, limit + 1)
    items, more = page[:limit], len(page) > limit
    next_url = url_for("accounts.list_accounts", limit=limit, after=items[-1].id) if more else None
    page_json: AccountPage = {
        "items": [account_json(account) for account in items],
        "next": next_url,
    }
    return jsonify(page_json)


@blueprint.get("/accounts/<id:account_id>")
@documented(
    Endpoint(
        "Read an account",
        TAG,
        Success(200, "the account", Account),
        problems=("not_found", "store_unavailable"),
    )
)
def get_account(account_id: int) -> Response:
    return jsonify(account_json(current_bank().store.get_account(account_id)))


@blueprint.post("/accounts/<id:account_id>/deposit")
@documented(
    Endpoint(
        "Deposit money",
        TAG,
        Success(201, "the journal entry", Transaction, location=True),
        body=Amount,
        problems=(*MONEY_PROBLEMS, "balance_limit_exceeded"),
        idempotent=True,
    )
)
def deposit(account_id: int) -> Response:
    return _move_money(services.deposit, account_id)


@blueprint.post("/accounts/<id:account_id>/withdraw")
@documented(
    Endpoint(
        "Withdraw money",
        TAG,
        Success(201, "the journal entry", Transaction, location=True),
        body=Amount,
        problems=(*MONEY_PROBLEMS, "insufficient_funds"),
        idempotent=True,
    )
)
def withdraw(account_id: int) -> Response:
    return _move_money(services.withdraw, account_id)


def _move_money(operation: Callable[..., Written], account_id: int) -> Response:
    body = json_object()
    amount = validated(body, Amount).amount
    setting = serving_setting()
    return idempotent.answer(
        body,
        lambda completion: operation(account_id, amount, setting, current_bank(), completion),
        lambda written: created_transaction(written.transactions[0], setting.lock_mode.value),
    )


def created_transaction(entry: domain.Transaction, lock_mode: str) -> StoredResponse:
    return idempotent.created(transaction_json(entry), f"/transactions/{entry.id}", lock_mode)


@blueprint.get("/accounts/<id:account_id>/transactions")
@documented(
    Endpoint(
        "An account's journal, newest first",
        TAG,
        Success(200, "one page of journal entries", TransactionPage),
        query=(PAGE_SIZE, BEFORE),
        problems=("validation_error", "not_found", "store_unavailable"),
    )
)
def list_transactions(account_id: int) -> Response:
    query = query_values((PAGE_SIZE, BEFORE))
    limit = query["limit"] or DEFAULT_PAGE_SIZE
    before = query["before"]
    page = current_bank().store.list_transactions(account_id, before, limit + 1)
    items, more = page[:limit], len(page) > limit
    next_url = (
        url_for(
            "accounts.list_transactions", account_id=account_id, limit=limit, before=items[-1].id
        )
        if more
        else None
    )
    page_json: TransactionPage = {
        "items": [transaction_json(entry) for entry in items],
        "next": next_url,
    }
    return jsonify(page_json)


@blueprint.get("/accounts/<id:account_id>/audit")
@documented(
    Endpoint(
        "Audit one account: stored balance against its journal",
        TAG,
        Success(200, "the account's audit", AccountAudit),
        description="Lost updates show here: `drift` is the stored balance minus the sum of "
        "the journal; `chain_breaks` counts entries whose `balance_after` does not follow "
        "from the previous one.",
        problems=("not_found", "audit_timeout", "store_unavailable"),
    )
)
def audit_account(account_id: int) -> Response:
    result = services.account_audit(account_id, current_bank())
    metrics.account_audited(account_id, result.drift, result.chain_breaks, result.consistent)
    metrics.holds_audited("account", result.holds)
    return jsonify(account_audit_json(result))


@blueprint.get("/balances")
@documented(
    Endpoint(
        "Read several balances in one snapshot",
        TAG,
        Success(200, "the balances, in the order asked", Balances),
        description="Every balance comes from one read in one transaction, so their sum is "
        "the sum at one moment: a transfer is in all of them or in none (the check of a "
        "Jepsen-style bank test). An unknown id answers 404 naming it; junk, a repeated id or "
        f"more than {MAX_BALANCE_IDS} ids answer 422.",
        query=(BALANCE_IDS,),
        problems=("validation_error", "not_found", "store_unavailable"),
    )
)
def balances() -> Response:
    unknown_query_parameters({BALANCE_IDS.name})
    account_ids = query_id_list(BALANCE_IDS)
    found = services.balances(account_ids, current_bank())
    balances_json: Balances = {"items": [balance_json(account) for account in found]}
    return jsonify(balances_json)
