"""Idempotency-Key on every POST, on the in-memory store, SQLite and PostgreSQL.

A repeat of a keyed request is answered what the first got and moves no
money; a different request under the same key, a repeat while the first
runs, and malformed keys are refused; refusals before execution leave the
key free; expired keys and claims of dead requests are taken over.
"""

from __future__ import annotations

import datetime as dt
import threading
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from service.domain import Leg, LockMode, LockTimeout, TransactionKind, utc_now
from service.idempotency import (
    DEFAULT_SCOPE,
    Claim,
    ClaimLost,
    Completion,
    KeyRecord,
    StoredResponse,
    fingerprint,
)
from service.stores.base import LegWrite, Store, Written
from tests.api.helpers import assert_problem, journal, open_account, set_mode, snapshot

JOIN_DEADLINE_SECONDS = 30.0


def keyed(key: str) -> dict[str, str]:
    return {"Idempotency-Key": key}


def store_of(app: Flask) -> Store:
    store: Store = app.extensions["bankrace"].store
    return store


def post(client: FlaskClient, path: str, body: dict[str, Any], key: str) -> Any:
    return client.post(path, json=body, headers=keyed(key))


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/accounts/{id}/deposit", {"amount": 25}),
        ("/accounts/{id}/withdraw", {"amount": 25}),
        ("/transfers", {"from_account": "{id}", "to_account": "{other}", "amount": 25}),
        ("/accounts", {"owner": "carol", "opening_balance": 25}),
    ],
)
def test_a_repeat_is_answered_the_stored_response_and_moves_nothing(
    client: FlaskClient, path: str, body: dict[str, Any]
) -> None:
    """Same key, same request: the same status, body and Location, replayed, executed once."""
    account = open_account(client, opening_balance=100)["id"]
    other = open_account(client, "bob")["id"]
    path = path.format(id=account)
    body = {
        name: (account if value == "{id}" else other if value == "{other}" else value)
        for name, value in body.items()
    }
    first = post(client, path, body, "key-1")
    assert first.status_code == 201, first.get_data(as_text=True)
    assert "Idempotent-Replayed" not in first.headers
    before = snapshot(client, account, other)
    accounts_before = client.get("/audit").get_json()["accounts"]
    for _ in range(3):
        again = post(client, path, body, "key-1")
        assert again.status_code == 201
        assert again.headers["Idempotent-Replayed"] == "true"
        assert again.get_data() == first.get_data()
        assert again.headers["Location"] == first.headers["Location"]
        assert again.headers["X-Lock-Mode"] == first.headers["X-Lock-Mode"]
    assert snapshot(client, account, other) == before
    assert client.get("/audit").get_json()["accounts"] == accounts_before


def test_key_order_and_white_space_of_the_body_do_not_matter(client: FlaskClient) -> None:
    """The fingerprint is of the parsed JSON: a reformatted body is the same request."""
    body = {"from_account": open_account(client, opening_balance=50)["id"], "amount": 5}
    body["to_account"] = open_account(client, "b")["id"]
    first = post(client, "/transfers", body, "k")
    reformatted = (
        f'{{ "amount" : 5 ,\n "to_account": {body["to_account"]},'
        f' "from_account":{body["from_account"]} }}'
    )
    again = client.post(
        "/transfers", data=reformatted, content_type="application/json", headers=keyed("k")
    )
    assert again.status_code == 201 and again.headers["Idempotent-Replayed"] == "true"
    assert again.get_data() == first.get_data()


def test_the_structured_field_form_of_the_key_is_the_same_key(client: FlaskClient) -> None:
    """The draft sends "abc" (an sf-string); abc and "abc" name the same key."""
    account = open_account(client)["id"]
    first = post(client, f"/accounts/{account}/deposit", {"amount": 1}, '"abc"')
    again = post(client, f"/accounts/{account}/deposit", {"amount": 1}, "abc")
    assert first.status_code == again.status_code == 201
    assert again.headers["Idempotent-Replayed"] == "true"


@pytest.mark.parametrize(
    ("second_path", "second_body"),
    [
        ("/accounts/{id}/deposit", {"amount": 26}),
        ("/accounts/{id}/withdraw", {"amount": 25}),
        ("/accounts", {"owner": "x"}),
    ],
)
def test_the_same_key_for_another_request_is_refused(
    client: FlaskClient, second_path: str, second_body: dict[str, Any]
) -> None:
    """422 idempotency_key_reused, and nothing changes: never another request's answer."""
    account = open_account(client, opening_balance=100)["id"]
    assert post(client, f"/accounts/{account}/deposit", {"amount": 25}, "k").status_code == 201
    before = snapshot(client, account)
    refused = post(client, second_path.format(id=account), second_body, "k")
    body = assert_problem(refused, 422, "idempotency_key_reused")
    assert "balance_after" not in body
    assert snapshot(client, account) == before


def test_a_business_refusal_is_stored_and_replayed(client: FlaskClient) -> None:
    """409 insufficient_funds is the operation's answer: a retry after a deposit still gets it."""
    account = open_account(client, opening_balance=10)["id"]
    refused = post(client, f"/accounts/{account}/withdraw", {"amount": 50}, "w")
    assert_problem(refused, 409, "insufficient_funds")
    assert client.post(f"/accounts/{account}/deposit", json={"amount": 100}).status_code == 201
    again = post(client, f"/accounts/{account}/withdraw", {"amount": 50}, "w")
    assert again.status_code == 409
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.get_data() == refused.get_data()
    assert client.get(f"/accounts/{account}").get_json()["balance"] == 110


def test_an_unknown_account_is_a_stored_refusal_too(client: FlaskClient) -> None:
    """404 for an account that does not exist is decided by running: replayed, not re-run."""
    missing = post(client, "/accounts/999/deposit", {"amount": 5}, "m")
    assert_problem(missing, 404, "not_found")
    again = post(client, "/accounts/999/deposit", {"amount": 5}, "m")
    assert again.status_code == 404 and again.headers["Idempotent-Replayed"] == "true"


def test_a_request_refused_before_it_ran_leaves_the_key_free(client: FlaskClient) -> None:
    """A 422 validation refusal stores nothing: the corrected request may use the same key."""
    account = open_account(client)["id"]
    invalid = post(client, f"/accounts/{account}/deposit", {"amount": 1.5}, "v")
    assert_problem(invalid, 422, "validation_error")
    valid = post(client, f"/accounts/{account}/deposit", {"amount": 2}, "v")
    assert valid.status_code == 201 and "Idempotent-Replayed" not in valid.headers
    assert client.get(f"/accounts/{account}").get_json()["balance"] == 2


def test_a_503_leaves_the_key_free_and_the_retry_runs(
    client: FlaskClient, app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing was decided by a lock timeout: the retry with the same key executes once."""
    account = open_account(client)["id"]
    store = store_of(app)
    real_write = store.write_legs

    def timed_out(*arguments: Any, **options: Any) -> Written:
        raise LockTimeout("the lock wait ran out")

    set_mode(client, lock_mode="atomic")
    monkeypatch.setattr(store, "write_legs", timed_out)
    refused = post(client, f"/accounts/{account}/deposit", {"amount": 7}, "t")
    assert_problem(refused, 503, "lock_timeout")
    monkeypatch.setattr(store, "write_legs", real_write)
    retried = post(client, f"/accounts/{account}/deposit", {"amount": 7}, "t")
    assert retried.status_code == 201 and "Idempotent-Replayed" not in retried.headers
    assert post(client, f"/accounts/{account}/deposit", {"amount": 7}, "t").status_code == 201
    assert client.get(f"/accounts/{account}").get_json()["balance"] == 7
    assert len(journal(client, account)) == 1


@pytest.mark.parametrize(
    "key",
    ["", "x" * 256, "caf\u00e9", "tab\there", "nul\x00", "new\nline"],
    ids=["empty", "too-long", "non-ascii", "tab", "nul", "newline"],
)
def test_a_malformed_key_is_refused_and_changes_nothing(client: FlaskClient, key: str) -> None:
    """400 invalid_idempotency_key for anything but 1-255 printable ASCII characters."""
    account = open_account(client)["id"]
    before = snapshot(client, account)
    environ = {"HTTP_IDEMPOTENCY_KEY": key}  # bypass header validation of the test client
    refused = client.post(
        f"/accounts/{account}/deposit", json={"amount": 1}, environ_overrides=environ
    )
    assert_problem(refused, 400, "invalid_idempotency_key")
    assert snapshot(client, account) == before


def test_255_printable_characters_are_a_valid_key(client: FlaskClient) -> None:
    """The longest key, spaces and punctuation included, is accepted."""
    account = open_account(client)["id"]
    key = ("a b~!" * 51)[:255]
    assert post(client, f"/accounts/{account}/deposit", {"amount": 1}, key).status_code == 201


@pytest.mark.parametrize("lock_mode", ["atomic", "optimistic"])
def test_a_repeat_while_the_first_runs_is_told_to_retry(
    client: FlaskClient, app: Flask, lock_mode: str
) -> None:
    """The twin of a request still in its race window gets 409 in progress with Retry-After.

    (In `locked` mode on SQLite the first request holds the database's one
    write lock through its window, so a twin's claim waits and is answered
    the replay instead; on every other store and mode it sees the claim.)
    """
    account = open_account(client)["id"]
    store = store_of(app)
    claimed = threading.Event()
    claim_key = store.claim_key

    def signalling_claim(claim: Claim) -> KeyRecord | None:
        record = claim_key(claim)
        if record is None:
            claimed.set()
        return record

    store.claim_key = signalling_claim  # type: ignore[method-assign]
    set_mode(client, lock_mode=lock_mode, race_window_ms=300)
    outcome: list[int] = []
    first = threading.Thread(
        target=lambda: outcome.append(
            post(app.test_client(), f"/accounts/{account}/deposit", {"amount": 3}, "r").status_code
        )
    )
    first.start()
    assert claimed.wait(JOIN_DEADLINE_SECONDS)
    twin = post(client, f"/accounts/{account}/deposit", {"amount": 3}, "r")
    assert_problem(twin, 409, "idempotency_in_progress")
    assert int(twin.headers["Retry-After"]) >= 1
    first.join(JOIN_DEADLINE_SECONDS)
    assert outcome == [201]
    replay = post(client, f"/accounts/{account}/deposit", {"amount": 3}, "r")
    assert replay.status_code == 201 and replay.headers["Idempotent-Replayed"] == "true"
    assert client.get(f"/accounts/{account}").get_json()["balance"] == 3


def claim_for(path: str, body: dict[str, Any], key: str, **overrides: Any) -> Claim:
    fields: dict[str, Any] = {
        "scope": DEFAULT_SCOPE,
        "key": key,
        "fingerprint": fingerprint("POST", path, body),
        "owner": "someone-else",
        "now": utc_now(),
        "ttl": dt.timedelta(hours=24),
    }
    fields.update(overrides)
    return Claim(**fields)


def test_the_claim_of_a_request_that_died_is_taken_over(client: FlaskClient, app: Flask) -> None:
    """An in-progress claim older than the lease (its process died) is taken by the retry."""
    account = open_account(client)["id"]
    path, body = f"/accounts/{account}/deposit", {"amount": 4}
    dead = claim_for(path, body, "d", now=utc_now() - dt.timedelta(minutes=5))
    assert store_of(app).claim_key(dead) is None
    live = claim_for(path, body, "l", now=utc_now())
    assert store_of(app).claim_key(live) is None
    blocked = post(client, path, body, "l")
    assert_problem(blocked, 409, "idempotency_in_progress")
    retried = post(client, path, body, "d")
    assert retried.status_code == 201
    assert client.get(f"/accounts/{account}").get_json()["balance"] == 4


def test_a_write_whose_claim_was_taken_over_writes_nothing(client: FlaskClient, app: Flask) -> None:
    """The money's transaction commits only while its request still owns the key."""
    account = open_account(client)["id"]
    store = store_of(app)
    lost = claim_for("/x", {}, "lost", owner="first")
    assert store.claim_key(lost) is None
    taken = claim_for("/x", {}, "lost", owner="second", now=utc_now() + dt.timedelta(minutes=5))
    assert store.claim_key(taken) is None  # the lease ran out: the second took it over
    completion = Completion(lost, lambda written: StoredResponse(201, "{}", "application/json"))
    deposit = LegWrite(Leg(account, TransactionKind.DEPOSIT, 9))
    with pytest.raises(ClaimLost):
        store.write_legs([deposit], LockMode.ATOMIC.value, None, completion)
    assert client.get(f"/accounts/{account}").get_json()["balance"] == 0
    assert journal(client, account) == []


def test_expired_keys_are_forgotten_and_purged_in_bounded_batches(
    client: FlaskClient, app: Flask
) -> None:
    """Past its TTL a key is claimed anew; the purge deletes at most `limit` keys a call."""
    account = open_account(client)["id"]
    path, body = f"/accounts/{account}/deposit", {"amount": 1}
    for key in ("a", "b", "c"):
        assert post(client, path, body, key).status_code == 201
    store = store_of(app)
    later = utc_now() + dt.timedelta(hours=25)
    assert store.purge_keys(utc_now(), 10) == 0
    assert store.purge_keys(later, 2) == 2
    assert store.purge_keys(later, 2) == 1
    assert store.purge_keys(later, 2) == 0
    again = post(client, path, body, "a")
    assert again.status_code == 201 and "Idempotent-Replayed" not in again.headers
    assert client.get(f"/accounts/{account}").get_json()["balance"] == 4


def test_an_expired_key_is_claimed_anew_even_before_the_purge(app: Flask) -> None:
    """A key past its TTL does not block a new request, purged or not."""
    store = store_of(app)
    old = claim_for("/a", {"x": 1}, "e", owner="old", now=utc_now() - dt.timedelta(hours=30))
    assert store.claim_key(old) is None
    store.finish_key(old, StoredResponse(201, "{}", "application/json"))
    new = claim_for("/b", {"y": 2}, "e", owner="new")
    assert store.claim_key(new) is None
