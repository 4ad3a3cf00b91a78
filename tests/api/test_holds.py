"""Holds over HTTP, on every store: place, read, capture all or part, void, list, expiry,
every refusal (problem+json, nothing changed), and Idempotency-Key on every hold POST."""

from __future__ import annotations

import time
from typing import Any

import pytest
from flask.testing import FlaskClient

from tests.api.helpers import assert_problem, assert_validation, open_account, snapshot

# How long a test waits for a 1-second hold to be seen expired (polled, not slept).
EXPIRY_DEADLINE_S = 10


def place(client: FlaskClient, account_id: int, amount: int, **extra: Any) -> dict[str, Any]:
    response = client.post(f"/accounts/{account_id}/holds", json={"amount": amount, **extra})
    assert response.status_code == 201, response.get_data(as_text=True)
    assert response.headers["Location"] == f"/holds/{response.get_json()['id']}"
    hold: dict[str, Any] = response.get_json()
    return hold


def account(client: FlaskClient, account_id: int) -> dict[str, Any]:
    found: dict[str, Any] = client.get(f"/accounts/{account_id}").get_json()
    return found


def wait_expired(client: FlaskClient, hold_id: int) -> dict[str, Any]:
    """Poll the hold until it is shown expired (it expires 1 s after it was placed)."""
    deadline = time.monotonic() + EXPIRY_DEADLINE_S
    while time.monotonic() < deadline:
        hold: dict[str, Any] = client.get(f"/holds/{hold_id}").get_json()
        if hold["status"] == "expired":
            return hold
        time.sleep(0.05)
    raise AssertionError(f"hold {hold_id} was not expired within {EXPIRY_DEADLINE_S} s")


def test_a_hold_reserves_money_and_lowers_available(client: FlaskClient) -> None:
    """A new hold is pending; the account shows it held and the rest available."""
    opened = open_account(client, opening_balance=1000)
    assert (opened["held"], opened["available"]) == (0, 1000)
    hold = place(client, opened["id"], 300)
    assert hold["status"] == "pending" and hold["captured_amount"] is None
    assert hold["amount"] == 300 and hold["account_id"] == opened["id"]
    assert client.get(f"/holds/{hold['id']}").get_json() == hold
    seen = account(client, opened["id"])
    assert (seen["balance"], seen["held"], seen["available"]) == (1000, 300, 700)
    assert seen["version"] == opened["version"] + 1  # the account was written


def test_capture_all_debits_the_hold_and_releases_nothing_more(client: FlaskClient) -> None:
    opened = open_account(client, opening_balance=1000)
    hold = place(client, opened["id"], 300)
    response = client.post(f"/holds/{hold['id']}/capture")
    assert response.status_code == 201, response.get_data(as_text=True)
    entry = response.get_json()
    assert (entry["kind"], entry["amount"], entry["balance_after"]) == ("capture", 300, 700)
    assert entry["hold_id"] == hold["id"]
    assert response.headers["Location"] == f"/transactions/{entry['id']}"
    captured = client.get(f"/holds/{hold['id']}").get_json()
    assert (captured["status"], captured["captured_amount"]) == ("captured", 300)
    seen = account(client, opened["id"])
    assert (seen["balance"], seen["held"], seen["available"]) == (700, 0, 700)
    assert client.get(f"/accounts/{opened['id']}/audit").get_json()["consistent"] is True


def test_a_partial_capture_releases_the_rest(client: FlaskClient) -> None:
    opened = open_account(client, opening_balance=1000)
    hold = place(client, opened["id"], 300)
    response = client.post(f"/holds/{hold['id']}/capture", json={"amount": 120})
    assert response.status_code == 201
    assert response.get_json()["amount"] == 120
    seen = account(client, opened["id"])
    assert (seen["balance"], seen["held"], seen["available"]) == (880, 0, 880)
    assert client.get(f"/holds/{hold['id']}").get_json()["captured_amount"] == 120


def test_void_releases_the_money(client: FlaskClient) -> None:
    opened = open_account(client, opening_balance=1000)
    hold = place(client, opened["id"], 300)
    response = client.post(f"/holds/{hold['id']}/void")
    assert response.status_code == 200
    assert response.get_json()["status"] == "voided"
    seen = account(client, opened["id"])
    assert (seen["balance"], seen["held"], seen["available"]) == (1000, 0, 1000)
    assert client.post(f"/holds/{hold['id']}/void", json={}).status_code == 409


@pytest.mark.parametrize("ending", ["capture", "void"])
@pytest.mark.parametrize("first", ["capture", "void"])
def test_a_hold_ends_once(client: FlaskClient, first: str, ending: str) -> None:
    """Capture or void after a capture or void: 409 hold_not_pending naming the status."""
    opened = open_account(client, opening_balance=1000)
    hold = place(client, opened["id"], 300)
    assert client.post(f"/holds/{hold['id']}/{first}").status_code in {200, 201}
    before = snapshot(client, opened["id"])
    body = assert_problem(client.post(f"/holds/{hold['id']}/{ending}"), 409, "hold_not_pending")
    status = "captured" if first == "capture" else "voided"
    assert status in body["detail"]
    assert snapshot(client, opened["id"]) == before


def test_withdrawals_transfers_and_holds_check_available(client: FlaskClient) -> None:
    opened = open_account(client, opening_balance=1000)
    other = open_account(client, "bob")
    place(client, opened["id"], 800)
    before = snapshot(client, opened["id"], other["id"])
    refusals = [
        client.post(f"/accounts/{opened['id']}/withdraw", json={"amount": 201}),
        client.post(
            "/transfers",
            json={"from_account": opened["id"], "to_account": other["id"], "amount": 201},
        ),
        client.post(f"/accounts/{opened['id']}/holds", json={"amount": 201}),
    ]
    for response in refusals:
        assert_problem(response, 409, "insufficient_funds")
    assert snapshot(client, opened["id"], other["id"]) == before
    assert (
        client.post(f"/accounts/{opened['id']}/withdraw", json={"amount": 200}).status_code == 201
    )
    assert account(client, opened["id"])["available"] == 0
    # A deposit never touches holds.
    assert client.post(f"/accounts/{opened['id']}/deposit", json={"amount": 5}).status_code == 201
    assert account(client, opened["id"])["available"] == 5


def test_an_expired_hold_is_available_again_untouched(client: FlaskClient) -> None:
    """At its expiry the hold shows expired and its money is available; capture/void refuse."""
    opened = open_account(client, opening_balance=1000)
    hold = place(client, opened["id"], 600, expires_in_s=1)
    assert account(client, opened["id"])["available"] == 400
    expired = wait_expired(client, hold["id"])
    assert expired["captured_amount"] is None
    assert expired["updated_at"] == expired["expires_at"]
    seen = account(client, opened["id"])
    assert (seen["held"], seen["available"]) == (0, 1000)
    for ending in ("capture", "void"):
        body = assert_problem(client.post(f"/holds/{hold['id']}/{ending}"), 409, "hold_not_pending")
        assert "expired" in body["detail"]
    assert (
        client.post(f"/accounts/{opened['id']}/withdraw", json={"amount": 1000}).status_code == 201
    )
    audit = client.get(f"/accounts/{opened['id']}/audit").get_json()
    assert audit["consistent"] is True and audit["held"] == 0


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({}, ["amount"]),
        ({"amount": 0}, ["amount"]),
        ({"amount": 1.5}, ["amount"]),
        ({"amount": "5"}, ["amount"]),
        ({"amount": None}, ["amount"]),
        ({"amount": 5, "expires_in_s": 0}, ["expires_in_s"]),
        ({"amount": 5, "expires_in_s": 604_801}, ["expires_in_s"]),
        ({"amount": 5, "expires_in_s": True}, ["expires_in_s"]),
        ({"amount": 5, "extra": 1}, ["extra"]),
    ],
)
def test_bad_hold_bodies_are_refused(
    client: FlaskClient, body: dict[str, Any], fields: list[str]
) -> None:
    opened = open_account(client, opening_balance=1000)
    before = snapshot(client, opened["id"])
    assert_validation(client.post(f"/accounts/{opened['id']}/holds", json=body), *fields)
    assert snapshot(client, opened["id"]) == before


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({"amount": 301}, ["amount"]),
        ({"amount": 0}, ["amount"]),
        ({"amount": None}, ["amount"]),
        ({"amount": 2.0}, ["amount"]),
        ({"other": 1}, ["other"]),
    ],
)
def test_bad_captures_are_refused(
    client: FlaskClient, body: dict[str, Any], fields: list[str]
) -> None:
    """A capture above the held amount (or not an amount): 422, and the hold stays pending."""
    opened = open_account(client, opening_balance=1000)
    hold = place(client, opened["id"], 300)
    before = snapshot(client, opened["id"])
    assert_validation(client.post(f"/holds/{hold['id']}/capture", json=body), *fields)
    assert snapshot(client, opened["id"]) == before
    assert client.get(f"/holds/{hold['id']}").get_json()["status"] == "pending"


def test_unknown_holds_and_accounts(client: FlaskClient) -> None:
    assert_problem(client.get("/holds/99"), 404, "not_found")
    assert_problem(client.post("/holds/99/capture"), 404, "not_found")
    assert_problem(client.post("/holds/99/void"), 404, "not_found")
    assert_problem(client.post("/accounts/99/holds", json={"amount": 5}), 404, "not_found")
    assert_problem(client.get("/accounts/99/holds"), 404, "not_found")
    assert_problem(client.post("/accounts/1/holds", data="x"), 415, "unsupported_media_type")


def test_the_list_pages_newest_first_and_filters_by_status(client: FlaskClient) -> None:
    opened = open_account(client, opening_balance=1000)
    holds = [place(client, opened["id"], 10 + index) for index in range(5)]
    client.post(f"/holds/{holds[1]['id']}/void")
    client.post(f"/holds/{holds[2]['id']}/capture")
    first = client.get(f"/accounts/{opened['id']}/holds?limit=2").get_json()
    assert [hold["id"] for hold in first["items"]] == [holds[4]["id"], holds[3]["id"]]
    rest = client.get(first["next"]).get_json()
    assert [hold["id"] for hold in rest["items"]] == [holds[2]["id"], holds[1]["id"]]
    pending = client.get(f"/accounts/{opened['id']}/holds?status=pending").get_json()
    assert [hold["id"] for hold in pending["items"]] == [
        holds[4]["id"],
        holds[3]["id"],
        holds[0]["id"],
    ]
    voided = client.get(f"/accounts/{opened['id']}/holds?status=voided").get_json()
    assert [hold["status"] for hold in voided["items"]] == ["voided"]
    assert_validation(client.get(f"/accounts/{opened['id']}/holds?status=gone"), "status")
    assert_validation(client.get(f"/accounts/{opened['id']}/holds?limit=0"), "limit")


@pytest.mark.parametrize("ending", ["capture", "void"])
def test_a_repeated_keyed_ending_happens_once(client: FlaskClient, ending: str) -> None:
    """The same Idempotency-Key replays the first answer; a second key gets 409 (stored too)."""
    opened = open_account(client, opening_balance=1000)
    hold = place(client, opened["id"], 300)
    headers = {"Idempotency-Key": f"{ending}-1"}
    first = client.post(f"/holds/{hold['id']}/{ending}", headers=headers)
    again = client.post(f"/holds/{hold['id']}/{ending}", headers=headers)
    assert first.status_code in {200, 201}
    assert again.status_code == first.status_code
    assert again.get_data() == first.get_data()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert account(client, opened["id"])["balance"] == (700 if ending == "capture" else 1000)
    other = {"Idempotency-Key": f"{ending}-2"}
    refused = client.post(f"/holds/{hold['id']}/{ending}", headers=other)
    assert_problem(refused, 409, "hold_not_pending")
    replayed = client.post(f"/holds/{hold['id']}/{ending}", headers=other)
    assert replayed.status_code == 409 and replayed.headers["Idempotent-Replayed"] == "true"


def test_a_repeated_keyed_hold_places_one(client: FlaskClient) -> None:
    opened = open_account(client, opening_balance=1000)
    headers = {"Idempotency-Key": "hold-1"}
    first = client.post(f"/accounts/{opened['id']}/holds", json={"amount": 300}, headers=headers)
    again = client.post(f"/accounts/{opened['id']}/holds", json={"amount": 300}, headers=headers)
    assert first.status_code == again.status_code == 201
    assert again.get_data() == first.get_data()
    assert account(client, opened["id"])["held"] == 300
    reused = client.post(f"/accounts/{opened['id']}/holds", json={"amount": 301}, headers=headers)
    assert_problem(reused, 422, "idempotency_key_reused")


def test_the_audit_metrics_show_held_money_and_no_anomaly(client: FlaskClient) -> None:
    """After an audit, /metrics carries its held money and each anomaly count (0 here)."""
    opened = open_account(client, opening_balance=1000)
    place(client, opened["id"], 300)
    assert client.get(f"/accounts/{opened['id']}/audit").get_json()["held"] == 300
    text = client.get("/metrics").get_data(as_text=True)
    assert 'bankrace_audit_held_minor{scope="account"} 300.0' in text
    for anomaly in ("two_outcomes", "captured_above_amount", "captured_after_expiry"):
        assert f'bankrace_audit_hold_anomalies{{anomaly="{anomaly}",scope="account"}} 0.0' in text


@pytest.mark.parametrize("ending", ["capture", "void"])
def test_an_ending_takes_no_body_with_or_without_a_content_type(
    client: FlaskClient, ending: str
) -> None:
    """`curl -X POST -H 'Content-Type: application/json'` with no data ends the whole hold."""
    opened = open_account(client, opening_balance=1000)
    hold = place(client, opened["id"], 300)
    response = client.post(
        f"/holds/{hold['id']}/{ending}", headers={"Content-Type": "application/json"}
    )
    assert response.status_code in {200, 201}, response.get_data(as_text=True)
    assert_problem(
        client.post(f"/holds/{hold['id']}/{ending}", data="x", content_type="text/plain"),
        415,
        "unsupported_media_type",
    )
    assert_problem(
        client.post(f"/holds/{hold['id']}/{ending}", data="[1]", content_type="application/json"),
        400,
        "malformed_json",
    )
