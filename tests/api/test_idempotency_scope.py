"""Idempotency keys are scoped to the client (DESIGN §3), on memory, SQLite and PostgreSQL.

With BANK_API_TOKENS set, each bearer token (the admin token included) has
a key scope of its own: one client's key never replays, refuses or blocks
another client's request, and a client learns nothing of the keys others
used. The scope is stored as a digest of the token, never the token.
Without client tokens there is one scope, whatever Authorization is sent.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import create_engine, select

from service import create_app
from service.api import auth
from service.domain import utc_now
from service.idempotency import Claim, fingerprint
from service.tables import idempotency_keys
from tests.api.helpers import assert_problem, open_account
from tests.conftest import ADMIN_TOKEN, make_config

TOKEN_A = "client-token-alpha-7f3c9e1a"
TOKEN_B = "client-token-bravo-2b8d44f0"
MAX_KEY = "k" * 255


def bearer(token: str, spaces: int = 1) -> dict[str, str]:
    return {"Authorization": "Bearer" + " " * spaces + token}


def keyed(token: str, key: str, spaces: int = 1) -> dict[str, str]:
    return {**bearer(token, spaces), "Idempotency-Key": key}


@pytest.fixture
def guarded_app(database_url: str) -> Iterator[Flask]:
    application = create_app(make_config(database_url, api_tokens=(TOKEN_A, TOKEN_B)))
    yield application
    application.extensions["bankrace"].store.close()


@pytest.fixture
def guarded(guarded_app: Flask) -> FlaskClient:
    return guarded_app.test_client()


def deposit(client: FlaskClient, account: int, amount: int, headers: dict[str, str]) -> Any:
    return client.post(f"/accounts/{account}/deposit", json={"amount": amount}, headers=headers)


def balance(client: FlaskClient, account: int) -> int:
    response = client.get(f"/accounts/{account}", headers=bearer(TOKEN_A))
    assert response.status_code == 200
    amount: int = response.get_json()["balance"]
    return amount


def open_for(client: FlaskClient, token: str, opening: int = 0) -> int:
    response = client.post(
        "/accounts", json={"owner": "owner", "opening_balance": opening}, headers=bearer(token)
    )
    assert response.status_code == 201, response.get_data(as_text=True)
    account: int = response.get_json()["id"]
    return account


def test_another_client_with_the_same_key_and_body_is_executed_not_replayed(
    guarded: FlaskClient,
) -> None:
    """The issue's case: B's deposit under A's key runs, with a transaction of its own."""
    account = open_for(guarded, TOKEN_A)
    first = deposit(guarded, account, 100, keyed(TOKEN_A, "deposit-1"))
    assert first.status_code == 201
    second = deposit(guarded, account, 100, keyed(TOKEN_B, "deposit-1"))
    assert second.status_code == 201, second.get_data(as_text=True)
    assert "Idempotent-Replayed" not in second.headers
    assert second.get_json()["id"] != first.get_json()["id"]
    assert balance(guarded, account) == 200
    # Each client's own repeat is still a replay of its own first answer.
    for token, original in ((TOKEN_A, first), (TOKEN_B, second)):
        again = deposit(guarded, account, 100, keyed(token, "deposit-1"))
        assert again.headers.get("Idempotent-Replayed") == "true"
        assert again.get_data() == original.get_data()
    assert balance(guarded, account) == 200
    assert len(journal_of(guarded, account)) == 2


def test_another_clients_key_with_another_body_is_not_refused(guarded: FlaskClient) -> None:
    """No 422 for B: it must not learn which keys A used."""
    account = open_for(guarded, TOKEN_A)
    assert deposit(guarded, account, 100, keyed(TOKEN_A, "deposit-1")).status_code == 201
    other = deposit(guarded, account, 7, keyed(TOKEN_B, "deposit-1"))
    assert other.status_code == 201, other.get_data(as_text=True)
    assert "Idempotent-Replayed" not in other.headers
    # A's own key with another body is still refused to A.
    assert_problem(
        deposit(guarded, account, 7, keyed(TOKEN_A, "deposit-1")), 422, "idempotency_key_reused"
    )
    assert balance(guarded, account) == 107


def test_a_key_taken_first_by_one_client_stays_free_for_the_others(guarded: FlaskClient) -> None:
    """B using a key first does not take it from A, nor from the admin token (a client too)."""
    account = open_for(guarded, TOKEN_B)
    assert deposit(guarded, account, 1, keyed(TOKEN_B, "order-42")).status_code == 201
    for token in (TOKEN_A, ADMIN_TOKEN):
        response = deposit(guarded, account, 10, keyed(token, "order-42"))
        assert response.status_code == 201, (token, response.get_data(as_text=True))
        assert "Idempotent-Replayed" not in response.headers
    assert balance(guarded, account) == 21


def test_a_key_in_progress_for_one_client_does_not_block_another(
    guarded: FlaskClient, guarded_app: Flask
) -> None:
    """A's request still running under a key: A's twin is told 409, B's request runs."""
    account = open_for(guarded, TOKEN_A)
    path, body = f"/accounts/{account}/deposit", {"amount": 6}
    running = Claim(
        auth.scope_digest(TOKEN_A),
        "busy",
        fingerprint("POST", path, body),
        "a-request-still-running",
        utc_now(),
        dt.timedelta(hours=24),
    )
    assert guarded_app.extensions["bankrace"].store.claim_key(running) is None
    assert_problem(
        deposit(guarded, account, 6, keyed(TOKEN_A, "busy")), 409, "idempotency_in_progress"
    )
    other = deposit(guarded, account, 6, keyed(TOKEN_B, "busy"))
    assert other.status_code == 201, other.get_data(as_text=True)
    assert balance(guarded, account) == 6


def test_the_same_token_spelt_with_two_spaces_is_the_same_scope(guarded: FlaskClient) -> None:
    """`Bearer  <token>` (RFC 6750 allows 1*SP) is the same client: its repeat is a replay."""
    account = open_for(guarded, TOKEN_A)
    first = deposit(guarded, account, 5, keyed(TOKEN_A, "spaced"))
    again = deposit(guarded, account, 5, keyed(TOKEN_A, "spaced", spaces=2))
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert again.get_data() == first.get_data()
    assert balance(guarded, account) == 5


def test_a_key_of_255_characters_is_scoped_too(guarded: FlaskClient) -> None:
    """The longest key fits beside the scope in every store, for each client."""
    account = open_for(guarded, TOKEN_A)
    for token in (TOKEN_A, TOKEN_B, ADMIN_TOKEN):
        response = deposit(guarded, account, 3, keyed(token, MAX_KEY))
        assert response.status_code == 201, response.get_data(as_text=True)
        assert "Idempotent-Replayed" not in response.headers
        assert deposit(guarded, account, 3, keyed(token, MAX_KEY)).headers.get(
            "Idempotent-Replayed"
        )
    assert balance(guarded, account) == 9


def test_the_stored_scope_is_a_digest_never_the_token(
    guarded: FlaskClient, guarded_app: Flask, database_url: str
) -> None:
    """Every stored scope is 64 hex digits, one per client; no token appears in any column."""
    account = open_for(guarded, TOKEN_A)
    for token in (TOKEN_A, TOKEN_B, ADMIN_TOKEN):
        assert deposit(guarded, account, 1, keyed(token, "stored")).status_code == 201
    rows = stored_keys(guarded_app, database_url)
    assert len(rows) == 3
    scopes = {row[0] for row in rows}
    assert len(scopes) == 3
    assert all(len(scope) == 64 and set(scope) <= set("0123456789abcdef") for scope in scopes)
    text = repr(rows)
    for token in (TOKEN_A, TOKEN_B, ADMIN_TOKEN):
        assert token not in text


def test_without_client_tokens_there_is_one_scope(client: FlaskClient) -> None:
    """BANK_API_TOKENS unset: a key is the service's, whatever Authorization comes with it."""
    account = open_account(client)["id"]
    first = deposit(client, account, 4, {"Idempotency-Key": "shared"})
    assert first.status_code == 201
    for headers in (keyed(ADMIN_TOKEN, "shared"), keyed("some-other-token", "shared")):
        again = deposit(client, account, 4, headers)
        assert again.headers.get("Idempotent-Replayed") == "true"
        assert again.get_data() == first.get_data()
    assert client.get(f"/accounts/{account}").get_json()["balance"] == 4


# --------------------------------------------------------------------------- helpers


def journal_of(client: FlaskClient, account: int) -> list[dict[str, Any]]:
    response = client.get(f"/accounts/{account}/transactions?limit=500", headers=bearer(TOKEN_A))
    assert response.status_code == 200 and response.get_json()["next"] is None
    entries: list[dict[str, Any]] = response.get_json()["items"]
    return entries


def stored_keys(application: Flask, database_url: str) -> list[tuple[Any, ...]]:
    """Every stored key as (scope, key, and its other columns), read past the API."""
    store = application.extensions["bankrace"].store
    if database_url == "memory://":
        return [(scope, key, vars(row)) for (scope, key), row in store._keys.items()]
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(select(idempotency_keys.c.scope, *idempotency_keys.c)).all()
    finally:
        engine.dispose()
    return [tuple(row) for row in rows]
