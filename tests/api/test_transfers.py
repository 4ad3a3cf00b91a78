"""The transfers API: moving money between accounts, reading transfers and entries, refusals."""

from __future__ import annotations

from typing import Any

import pytest
from flask.testing import FlaskClient

from service.domain import MAX_AMOUNT_MINOR, MAX_BALANCE_MINOR
from tests.api.helpers import assert_problem, assert_validation, journal, open_account, snapshot

TRANSFER_FIELDS = {"id", "from_account", "to_account", "amount", "lock_mode", "created_at", "legs"}


def post_transfer(client: FlaskClient, source: int, target: int, amount: object) -> Any:
    return client.post(
        "/transfers", json={"from_account": source, "to_account": target, "amount": amount}
    )


def legs_by_kind(transfer: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The transfer's legs keyed by kind (the order of `legs` is not part of the contract)."""
    legs = {leg["kind"]: leg for leg in transfer["legs"]}
    assert set(legs) == {"transfer_out", "transfer_in"}
    assert len(transfer["legs"]) == 2
    return legs


def pair(
    client: FlaskClient, source_balance: int = 100, target_balance: int = 0
) -> tuple[int, int]:
    source = open_account(client, "source", opening_balance=source_balance)
    target = open_account(client, "target", opening_balance=target_balance)
    return source["id"], target["id"]


# --------------------------------------------------------------------------- happy paths


def test_transfer_moves_money_and_records_two_legs(shared_client: FlaskClient) -> None:
    """POST /transfers answers 201 with Location, the transfer and its out and in legs."""
    source, target = pair(shared_client, 100, 5)
    total_before = shared_client.get("/audit").get_json()["total_balance"]
    response = post_transfer(shared_client, source, target, 25)
    assert response.status_code == 201
    assert response.mimetype == "application/json"
    transfer = response.get_json()
    assert set(transfer) == TRANSFER_FIELDS
    assert (transfer["from_account"], transfer["to_account"], transfer["amount"]) == (
        source,
        target,
        25,
    )
    assert transfer["lock_mode"] == "locked"
    assert response.headers["Location"] == f"/transfers/{transfer['id']}"
    assert response.headers["X-Lock-Mode"] == "locked"
    legs = legs_by_kind(transfer)
    out_leg, in_leg = legs["transfer_out"], legs["transfer_in"]
    assert (out_leg["account_id"], out_leg["kind"], out_leg["amount"]) == (
        source,
        "transfer_out",
        25,
    )
    assert (in_leg["account_id"], in_leg["kind"], in_leg["amount"]) == (target, "transfer_in", 25)
    assert (out_leg["balance_after"], in_leg["balance_after"]) == (75, 30)
    assert out_leg["transfer_id"] == in_leg["transfer_id"] == transfer["id"]
    assert out_leg["lock_mode"] == in_leg["lock_mode"] == "locked"
    assert shared_client.get(f"/accounts/{source}").get_json()["balance"] == 75
    assert shared_client.get(f"/accounts/{target}").get_json()["balance"] == 30
    assert shared_client.get(f"/accounts/{source}").get_json()["version"] == 1
    assert shared_client.get(f"/accounts/{target}").get_json()["version"] == 1
    audit = shared_client.get("/audit").get_json()
    assert audit["total_balance"] == total_before
    assert audit["consistent"] is True


def test_transfer_is_readable_and_its_legs_are_journal_entries(shared_client: FlaskClient) -> None:
    """GET /transfers/{id} repeats the transfer; each leg is at /transactions/{id}, journalled."""
    source, target = pair(shared_client)
    created = post_transfer(shared_client, source, target, 40).get_json()
    response = shared_client.get(f"/transfers/{created['id']}")
    assert response.status_code == 200
    assert response.get_json() == created
    for leg in created["legs"]:
        assert shared_client.get(f"/transactions/{leg['id']}").get_json() == leg
    legs = legs_by_kind(created)
    assert journal(shared_client, source)[0] == legs["transfer_out"]
    assert journal(shared_client, target)[0] == legs["transfer_in"]


def test_transfer_from_higher_to_lower_id_and_of_everything(shared_client: FlaskClient) -> None:
    """A transfer works whatever the id order, and may move the whole balance."""
    low, high = pair(shared_client, 0, 60)
    legs = legs_by_kind(post_transfer(shared_client, high, low, 60).get_json())
    assert (legs["transfer_out"]["account_id"], legs["transfer_out"]["balance_after"]) == (high, 0)
    assert (legs["transfer_in"]["account_id"], legs["transfer_in"]["balance_after"]) == (low, 60)
    assert shared_client.get(f"/accounts/{high}").get_json()["balance"] == 0
    assert shared_client.get(f"/accounts/{low}").get_json()["balance"] == 60


def test_transfer_up_to_the_limits_exactly(shared_client: FlaskClient) -> None:
    """The largest amount moves, and a target may land exactly on 2**53-1."""
    source, target = pair(shared_client, MAX_AMOUNT_MINOR, MAX_BALANCE_MINOR - MAX_AMOUNT_MINOR)
    legs = legs_by_kind(post_transfer(shared_client, source, target, MAX_AMOUNT_MINOR).get_json())
    assert legs["transfer_out"]["balance_after"] == 0
    assert legs["transfer_in"]["balance_after"] == MAX_BALANCE_MINOR


def test_transaction_ids_are_distinct_per_transfer(shared_client: FlaskClient) -> None:
    """Two transfers get two ids and four distinct journal entries."""
    source, target = pair(shared_client)
    first = post_transfer(shared_client, source, target, 1).get_json()
    second = post_transfer(shared_client, target, source, 1).get_json()
    assert first["id"] != second["id"]
    assert len({leg["id"] for leg in first["legs"] + second["legs"]}) == 4


# --------------------------------------------------------------------------- refusals


def test_insufficient_funds_refuses_transfer_and_changes_nothing(
    shared_client: FlaskClient,
) -> None:
    """A transfer larger than the source balance is 409 insufficient_funds; neither side moves."""
    source, target = pair(shared_client, 10, 0)
    before = snapshot(shared_client, source, target)
    assert_problem(post_transfer(shared_client, source, target, 11), 409, "insufficient_funds")
    assert snapshot(shared_client, source, target) == before


def test_balance_limit_refuses_transfer_and_changes_nothing(shared_client: FlaskClient) -> None:
    """A transfer into an account at 2**53-1 is 409 balance_limit_exceeded; the source keeps it."""
    source, target = pair(shared_client, 10, MAX_BALANCE_MINOR)
    before = snapshot(shared_client, source, target)
    response = post_transfer(shared_client, source, target, 1)
    assert_problem(response, 409, "balance_limit_exceeded")
    assert snapshot(shared_client, source, target) == before


def test_same_account_is_422_and_changes_nothing(shared_client: FlaskClient) -> None:
    """A transfer from an account to itself is 422 same_account."""
    source = open_account(shared_client, opening_balance=10)["id"]
    before = snapshot(shared_client, source)
    body = assert_problem(post_transfer(shared_client, source, source, 5), 422, "same_account")
    assert "errors" not in body
    assert snapshot(shared_client, source) == before


def test_currency_mismatch_is_422_and_changes_nothing(shared_client: FlaskClient) -> None:
    """A transfer between a USD and a EUR account is 422 currency_mismatch."""
    source = open_account(shared_client, opening_balance=10, currency="USD")["id"]
    target = open_account(shared_client, opening_balance=10, currency="EUR")["id"]
    before = snapshot(shared_client, source, target)
    response = post_transfer(shared_client, source, target, 5)
    assert_problem(response, 422, "currency_mismatch")
    assert snapshot(shared_client, source, target) == before


@pytest.mark.parametrize("missing_side", ["from", "to", "both"])
def test_unknown_account_is_404_and_changes_nothing(
    shared_client: FlaskClient, missing_side: str
) -> None:
    """A transfer naming an account that does not exist is 404; the other account is untouched."""
    existing = open_account(shared_client, opening_balance=10)["id"]
    unknown = 999_999_999
    source = unknown if missing_side in ("from", "both") else existing
    target = unknown if missing_side in ("to", "both") else existing
    if missing_side == "both":
        target = unknown + 1
    before = snapshot(shared_client, existing)
    assert_problem(post_transfer(shared_client, source, target, 5), 404, "not_found")
    assert snapshot(shared_client, existing) == before


BAD_ID_VALUES: list[object] = [0, -1, 10**18, 2**63, 10**30, 1.0, 1.5, "1", True, None, [1]]


@pytest.mark.parametrize("field", ["from_account", "to_account"])
@pytest.mark.parametrize("value", BAD_ID_VALUES)
def test_bad_account_id_field_is_422_and_changes_nothing(
    shared_client: FlaskClient, field: str, value: object
) -> None:
    """Account ids that are not positive integers a BIGINT can hold are 422, never 500."""
    source, target = pair(shared_client)
    body: dict[str, object] = {"from_account": source, "to_account": target, "amount": 1}
    body[field] = value
    before = snapshot(shared_client, source, target)
    assert_validation(shared_client.post("/transfers", json=body), field)
    assert snapshot(shared_client, source, target) == before


@pytest.mark.parametrize(
    "literal",
    ["0", "-5", "1000000000001", "10.0", "1e3", "2.5", "true", "null", '"5"', "[5]"],
)
def test_bad_amount_is_422_and_changes_nothing(shared_client: FlaskClient, literal: str) -> None:
    """Transfer amounts obey the same rules as deposits: positive integers up to 10**12."""
    source, target = pair(shared_client, MAX_AMOUNT_MINOR, 0)
    before = snapshot(shared_client, source, target)
    response = shared_client.post(
        "/transfers",
        data=f'{{"from_account": {source}, "to_account": {target}, "amount": {literal}}}',
        content_type="application/json",
    )
    assert_validation(response, "amount")
    assert snapshot(shared_client, source, target) == before


@pytest.mark.parametrize(
    ("drop", "extra", "fields"),
    [
        ("amount", {}, ["amount"]),
        ("from_account", {}, ["from_account"]),
        ("to_account", {}, ["to_account"]),
        (None, {"currency": "USD"}, ["currency"]),
        (None, {"from": 1}, ["from"]),
        ("amount", {"value": 5}, ["amount", "value"]),
    ],
)
def test_missing_and_unknown_fields_are_422_and_change_nothing(
    shared_client: FlaskClient, drop: str | None, extra: dict[str, object], fields: list[str]
) -> None:
    """Every missing and every unknown field of a transfer is named in `errors`."""
    source, target = pair(shared_client)
    body: dict[str, object] = {"from_account": source, "to_account": target, "amount": 1}
    if drop is not None:
        del body[drop]
    body.update(extra)
    before = snapshot(shared_client, source, target)
    assert_validation(shared_client.post("/transfers", json=body), *fields)
    assert snapshot(shared_client, source, target) == before


def test_empty_transfer_names_every_missing_field(shared_client: FlaskClient) -> None:
    """An empty object lists all three required fields at once."""
    before = shared_client.get("/audit").get_json()
    response = shared_client.post("/transfers", json={})
    assert_validation(response, "from_account", "to_account", "amount")
    assert shared_client.get("/audit").get_json() == before


# --------------------------------------------------------------------------- unknown ids


@pytest.mark.parametrize("collection", ["transfers", "transactions"])
@pytest.mark.parametrize(
    "segment", ["999999999", "999999999999999999", "0", "-1", "x", "99999999999999999999999"]
)
def test_unknown_transfer_or_transaction_is_404(
    shared_client: FlaskClient, collection: str, segment: str
) -> None:
    """Unknown or impossible transfer and transaction ids are 404 not_found, never 500."""
    assert_problem(shared_client.get(f"/{collection}/{segment}"), 404, "not_found")


def test_legs_come_out_then_in_whatever_the_lock_order(client: FlaskClient) -> None:
    """From a higher id to a lower one (written in ascending order) legs still read out, in."""
    low, high = pair(client, source_balance=0, target_balance=100)
    created = post_transfer(client, high, low, 10).get_json()
    fetched = client.get(f"/transfers/{created['id']}").get_json()
    for transfer in (created, fetched):
        assert [leg["kind"] for leg in transfer["legs"]] == ["transfer_out", "transfer_in"]
        assert [leg["account_id"] for leg in transfer["legs"]] == [high, low]
