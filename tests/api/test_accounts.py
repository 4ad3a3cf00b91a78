"""The accounts API: open, read, list, deposit, withdraw, journal, audit -- and every refusal."""

from __future__ import annotations

import re
from typing import Any

import pytest
from flask.testing import FlaskClient

from service.domain import MAX_AMOUNT_MINOR, MAX_BALANCE_MINOR
from tests.api.helpers import (
    assert_problem,
    assert_validation,
    journal,
    open_account,
    snapshot,
)

RFC3339_UTC = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z")
ACCOUNT_FIELDS = {
    "id",
    "owner",
    "currency",
    "balance",
    "held",
    "available",
    "version",
    "created_at",
    "updated_at",
}
TRANSACTION_FIELDS = {
    "id",
    "account_id",
    "kind",
    "amount",
    "balance_after",
    "transfer_id",
    "lock_mode",
    "created_at",
}
MONEY_ENDPOINTS = ["deposit", "withdraw"]
# Path segments that are not an account id a BIGINT could hold.
NOT_AN_ID = ["0", "-1", "abc", "1.5", "007", "99999999999999999999999", "1e3"]


def post_money(client: FlaskClient, account_id: int, endpoint: str, amount: object) -> Any:
    return client.post(f"/accounts/{account_id}/{endpoint}", json={"amount": amount})


# --------------------------------------------------------------------------- open and read


def test_open_account_with_defaults(client: FlaskClient) -> None:
    """POST /accounts answers 201, Location and the account with USD, balance 0, version 0."""
    response = client.post("/accounts", json={"owner": "alice"})
    assert response.status_code == 201
    assert response.mimetype == "application/json"
    account = response.get_json()
    assert set(account) == ACCOUNT_FIELDS
    assert account["id"] >= 1
    assert account["owner"] == "alice"
    assert account["currency"] == "USD"
    assert (account["balance"], account["version"]) == (0, 0)
    assert RFC3339_UTC.fullmatch(account["created_at"])
    assert account["updated_at"] == account["created_at"]
    assert response.headers["Location"] == f"/accounts/{account['id']}"
    assert client.get(response.headers["Location"]).get_json() == account
    assert journal(client, account["id"]) == []


def test_open_account_with_opening_balance_journals_it(shared_client: FlaskClient) -> None:
    """An opening balance is journalled as one `open` entry, so the journal sums to it."""
    account = open_account(shared_client, "bob", opening_balance=100, currency="EUR")
    assert (account["currency"], account["balance"], account["version"]) == ("EUR", 100, 0)
    [entry] = journal(shared_client, account["id"])
    assert set(entry) == TRANSACTION_FIELDS
    assert entry["account_id"] == account["id"]
    assert (entry["kind"], entry["amount"], entry["balance_after"]) == ("open", 100, 100)
    assert entry["transfer_id"] is None
    assert entry["lock_mode"] == "locked"
    assert RFC3339_UTC.fullmatch(entry["created_at"])
    assert shared_client.get(f"/transactions/{entry['id']}").get_json() == entry


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("  carol  ", "carol"),
        ("\t dave \n", "dave"),
        ("a" * 200, "a" * 200),
        ("  " + "b" * 200 + "  ", "b" * 200),
        ("Zoë Ł 😀 山田", "Zoë Ł 😀 山田"),
        ("😀" * 200, "😀" * 200),
        ("O'Brien & Söhne", "O'Brien & Söhne"),
    ],
)
def test_owner_is_trimmed_and_kept_exactly(
    shared_client: FlaskClient, given: str, stored: str
) -> None:
    """Owners are trimmed, may use any printable Unicode, and 200 characters fit on every store."""
    account = open_account(shared_client, given)
    assert account["owner"] == stored
    assert shared_client.get(f"/accounts/{account['id']}").get_json()["owner"] == stored


@pytest.mark.parametrize("opening_balance", [0, 1, MAX_BALANCE_MINOR])
def test_opening_balance_bounds_are_accepted(
    shared_client: FlaskClient, opening_balance: int
) -> None:
    """Opening balances from 0 to 2**53-1 are accepted and stored exactly."""
    account = open_account(shared_client, opening_balance=opening_balance)
    assert shared_client.get(f"/accounts/{account['id']}").get_json()["balance"] == opening_balance
    assert len(journal(shared_client, account["id"])) == (1 if opening_balance else 0)


def test_trailing_slash_reaches_the_same_account(shared_client: FlaskClient) -> None:
    """/accounts/{id}/ answers like /accounts/{id} (no redirect, no 404)."""
    account = open_account(shared_client)
    response = shared_client.get(f"/accounts/{account['id']}/")
    assert response.status_code == 200
    assert response.get_json() == account


# --------------------------------------------------------------------------- listing


def test_list_accounts_of_an_empty_bank(client: FlaskClient) -> None:
    """GET /accounts on an empty bank is an empty page with no next link."""
    response = client.get("/accounts")
    assert response.status_code == 200
    assert response.get_json() == {"items": [], "next": None}


def test_list_accounts_pages_follow_next_until_null(client: FlaskClient) -> None:
    """Cursor pages of `limit` accounts in id order; following `next` visits each exactly once."""
    opened = [open_account(client, f"owner-{index}") for index in range(5)]
    first = client.get("/accounts?limit=2").get_json()
    assert first["items"] == opened[:2]
    assert first["next"] == f"/accounts?limit=2&after={opened[1]['id']}"
    seen, url, pages = [], "/accounts?limit=2", 0
    while url is not None:
        page = client.get(url).get_json()
        assert len(page["items"]) <= 2
        seen.extend(page["items"])
        url, pages = page["next"], pages + 1
    assert seen == opened
    assert pages == 3


def test_list_accounts_without_limit_and_with_a_cursor(client: FlaskClient) -> None:
    """Without `limit` one page holds all of a small bank; `after` starts past the cursor."""
    opened = [open_account(client, f"owner-{index}") for index in range(3)]
    assert client.get("/accounts").get_json() == {"items": opened, "next": None}
    after_first = client.get(f"/accounts?after={opened[0]['id']}").get_json()
    assert after_first == {"items": opened[1:], "next": None}
    assert client.get(f"/accounts?after={opened[-1]['id']}").get_json()["items"] == []
    assert client.get("/accounts?after=0&limit=500").get_json()["items"] == opened


def test_exactly_full_page_has_no_next(client: FlaskClient) -> None:
    """A page that holds the last account says next: null (no empty trailing page)."""
    opened = [open_account(client, f"owner-{index}") for index in range(2)]
    assert client.get("/accounts?limit=2").get_json() == {"items": opened, "next": None}


def test_default_page_size_is_fifty(client: FlaskClient) -> None:
    """Without `limit`, pages hold 50 accounts and `next` continues after the 50th."""
    opened = [open_account(client, f"o{index}") for index in range(51)]
    page = client.get("/accounts").get_json()
    assert [account["id"] for account in page["items"]] == [a["id"] for a in opened[:50]]
    assert page["next"] == f"/accounts?limit=50&after={opened[49]['id']}"
    assert client.get(page["next"]).get_json() == {"items": opened[50:], "next": None}


@pytest.mark.parametrize(
    "query",
    [
        "limit=0",
        "limit=501",
        "limit=-1",
        "limit=abc",
        "limit=",
        "limit=1.5",
        "limit=%205",
        "limit=%D9%A3",
        "limit=99999999999999999999999",
        "after=-1",
        "after=abc",
        "after=1e3",
        "after=",
        "after=99999999999999999999",
    ],
)
def test_list_accounts_bad_query_is_422(shared_client: FlaskClient, query: str) -> None:
    """Out-of-range or non-numeric `limit`/`after` are 422 naming the parameter."""
    name = query.split("=")[0]
    assert_validation(shared_client.get(f"/accounts?{query}"), name)


def test_list_accounts_unknown_query_parameter_is_422(shared_client: FlaskClient) -> None:
    """An unknown query parameter (a typo like `page`) is refused, not silently ignored."""
    assert_validation(shared_client.get("/accounts?page=2"), "page")


# --------------------------------------------------------------------------- deposit, withdraw


def test_deposit(shared_client: FlaskClient) -> None:
    """A deposit answers 201 with the journal entry and Location; the balance and version move."""
    account = open_account(shared_client, opening_balance=100)
    response = shared_client.post(f"/accounts/{account['id']}/deposit", json={"amount": 50})
    assert response.status_code == 201
    entry = response.get_json()
    assert set(entry) == TRANSACTION_FIELDS
    assert entry["account_id"] == account["id"]
    assert (entry["kind"], entry["amount"], entry["balance_after"]) == ("deposit", 50, 150)
    assert (entry["transfer_id"], entry["lock_mode"]) == (None, "locked")
    assert response.headers["Location"] == f"/transactions/{entry['id']}"
    assert response.headers["X-Lock-Mode"] == "locked"
    assert shared_client.get(response.headers["Location"]).get_json() == entry
    after = shared_client.get(f"/accounts/{account['id']}").get_json()
    assert (after["balance"], after["version"]) == (150, 1)
    assert after["created_at"] == account["created_at"]
    assert after["updated_at"] >= account["updated_at"]
    assert RFC3339_UTC.fullmatch(after["updated_at"])


def test_withdraw(shared_client: FlaskClient) -> None:
    """A withdrawal answers 201 with a `withdrawal` entry; withdrawing everything leaves 0."""
    account = open_account(shared_client, opening_balance=100)
    response = shared_client.post(f"/accounts/{account['id']}/withdraw", json={"amount": 30})
    assert response.status_code == 201
    entry = response.get_json()
    assert (entry["kind"], entry["amount"], entry["balance_after"]) == ("withdrawal", 30, 70)
    assert response.headers["Location"] == f"/transactions/{entry['id']}"
    rest = shared_client.post(f"/accounts/{account['id']}/withdraw", json={"amount": 70})
    assert rest.get_json()["balance_after"] == 0
    after = shared_client.get(f"/accounts/{account['id']}").get_json()
    assert (after["balance"], after["version"]) == (0, 2)


@pytest.mark.parametrize("amount", [1, MAX_AMOUNT_MINOR])
def test_amount_bounds_are_accepted(shared_client: FlaskClient, amount: int) -> None:
    """The smallest and the largest amount are both accepted, for deposit and withdrawal."""
    account = open_account(shared_client)
    assert post_money(shared_client, account["id"], "deposit", amount).status_code == 201
    assert post_money(shared_client, account["id"], "withdraw", amount).status_code == 201
    assert shared_client.get(f"/accounts/{account['id']}").get_json()["balance"] == 0


def test_deposit_up_to_the_balance_limit_exactly(shared_client: FlaskClient) -> None:
    """A deposit landing exactly on 2**53-1 is accepted; one more minor unit is 409."""
    account = open_account(shared_client, opening_balance=MAX_BALANCE_MINOR - 10)
    assert post_money(shared_client, account["id"], "deposit", 10).status_code == 201
    before = snapshot(shared_client, account["id"])
    response = post_money(shared_client, account["id"], "deposit", 1)
    assert_problem(response, 409, "balance_limit_exceeded")
    assert snapshot(shared_client, account["id"]) == before


def test_balance_limit_refuses_deposit_and_changes_nothing(shared_client: FlaskClient) -> None:
    """Depositing 1 into an account at 2**53-1 is 409 balance_limit_exceeded; nothing changes."""
    account = open_account(shared_client, opening_balance=MAX_BALANCE_MINOR)
    before = snapshot(shared_client, account["id"])
    assert_problem(
        post_money(shared_client, account["id"], "deposit", 1), 409, "balance_limit_exceeded"
    )
    assert snapshot(shared_client, account["id"]) == before


@pytest.mark.parametrize(("opening", "amount"), [(0, 1), (100, 101), (100, MAX_AMOUNT_MINOR)])
def test_insufficient_funds_refuses_withdrawal_and_changes_nothing(
    shared_client: FlaskClient, opening: int, amount: int
) -> None:
    """Withdrawing more than the balance is 409 insufficient_funds; nothing changes."""
    account = open_account(shared_client, opening_balance=opening)
    before = snapshot(shared_client, account["id"])
    body = assert_problem(
        post_money(shared_client, account["id"], "withdraw", amount), 409, "insufficient_funds"
    )
    assert "errors" not in body
    assert snapshot(shared_client, account["id"]) == before


# Raw JSON literals, so that 1e3 and 10.0 travel exactly as a client would send them.
BAD_AMOUNT_LITERALS = [
    "0",
    "-0",
    "-1",
    "-100",
    "1000000000001",
    "100000000000000000000000000000",
    "true",
    "false",
    "1.5",
    "10.0",
    "1.0e0",
    "1e3",
    "1E3",
    "1e400",
    '"10"',
    '"ten"',
    "null",
    "[]",
    "[10]",
    "{}",
]


@pytest.mark.parametrize("endpoint", MONEY_ENDPOINTS)
@pytest.mark.parametrize("literal", BAD_AMOUNT_LITERALS)
def test_bad_amount_is_422_and_changes_nothing(
    shared_client: FlaskClient, endpoint: str, literal: str
) -> None:
    """Zero, negative, too large, bool, float (even 10.0, 1e3), string, null amounts: 422."""
    account = open_account(shared_client, opening_balance=MAX_AMOUNT_MINOR)
    before = snapshot(shared_client, account["id"])
    response = shared_client.post(
        f"/accounts/{account['id']}/{endpoint}",
        data=f'{{"amount": {literal}}}',
        content_type="application/json",
    )
    assert_validation(response, "amount")
    assert snapshot(shared_client, account["id"]) == before


@pytest.mark.parametrize("endpoint", MONEY_ENDPOINTS)
@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({}, ["amount"]),
        ({"value": 5}, ["amount", "value"]),
        ({"amount": 5, "currency": "USD"}, ["currency"]),
        ({"amount": 5, "account_id": 1}, ["account_id"]),
        ({"amount": 0, "note": "x"}, ["amount", "note"]),
    ],
)
def test_missing_or_unknown_fields_are_422_and_change_nothing(
    shared_client: FlaskClient, endpoint: str, body: dict[str, Any], fields: list[str]
) -> None:
    """A missing amount and every unknown field are each named in `errors`; nothing changes."""
    account = open_account(shared_client, opening_balance=100)
    before = snapshot(shared_client, account["id"])
    response = shared_client.post(f"/accounts/{account['id']}/{endpoint}", json=body)
    assert_validation(response, *fields)
    assert snapshot(shared_client, account["id"]) == before


@pytest.mark.parametrize("endpoint", MONEY_ENDPOINTS)
def test_unknown_account_is_404_and_changes_nothing(
    shared_client: FlaskClient, endpoint: str
) -> None:
    """Moving money on an account that does not exist is 404 not_found and creates nothing."""
    before = shared_client.get("/audit").get_json()
    assert_problem(post_money(shared_client, 999_999_999, endpoint, 5), 404, "not_found")
    assert shared_client.get("/audit").get_json() == before


# --------------------------------------------------------------------------- open: refusals

BAD_OPEN_BODIES: list[tuple[dict[str, Any], list[str]]] = [
    ({}, ["owner"]),
    ({"owner": ""}, ["owner"]),
    ({"owner": "   "}, ["owner"]),
    ({"owner": "a" * 201}, ["owner"]),
    ({"owner": "  " + "a" * 201 + "  "}, ["owner"]),
    ({"owner": "al\x00ice"}, ["owner"]),
    ({"owner": "al\nice"}, ["owner"]),
    ({"owner": "al\tice"}, ["owner"]),
    ({"owner": "\x7fbob"}, ["owner"]),
    ({"owner": "bob\x1b[31m"}, ["owner"]),
    ({"owner": "bob\u200bby"}, ["owner"]),
    ({"owner": "bob\u202eevil"}, ["owner"]),
    ({"owner": "bo\x85b"}, ["owner"]),
    ({"owner": "\ud800bob"}, ["owner"]),
    ({"owner": 5}, ["owner"]),
    ({"owner": None}, ["owner"]),
    ({"owner": True}, ["owner"]),
    ({"owner": ["alice"]}, ["owner"]),
    ({"owner": {"name": "alice"}}, ["owner"]),
    ({"owner": "a", "currency": "usd"}, ["currency"]),
    ({"owner": "a", "currency": "Usd"}, ["currency"]),
    ({"owner": "a", "currency": "US"}, ["currency"]),
    ({"owner": "a", "currency": "USDX"}, ["currency"]),
    ({"owner": "a", "currency": ""}, ["currency"]),
    ({"owner": "a", "currency": " USD"}, ["currency"]),
    ({"owner": "a", "currency": "USD\n"}, ["currency"]),
    ({"owner": "a", "currency": "ÄBC"}, ["currency"]),
    ({"owner": "a", "currency": "\uff35\uff33\uff24"}, ["currency"]),
    ({"owner": "a", "currency": None}, ["currency"]),
    ({"owner": "a", "currency": 840}, ["currency"]),
    ({"owner": "a", "opening_balance": -1}, ["opening_balance"]),
    ({"owner": "a", "opening_balance": MAX_BALANCE_MINOR + 1}, ["opening_balance"]),
    ({"owner": "a", "opening_balance": 10**30}, ["opening_balance"]),
    ({"owner": "a", "opening_balance": 1.5}, ["opening_balance"]),
    ({"owner": "a", "opening_balance": 10.0}, ["opening_balance"]),
    ({"owner": "a", "opening_balance": "100"}, ["opening_balance"]),
    ({"owner": "a", "opening_balance": True}, ["opening_balance"]),
    ({"owner": "a", "opening_balance": False}, ["opening_balance"]),
    ({"owner": "a", "opening_balance": None}, ["opening_balance"]),
    ({"owner": "a", "balance": 5}, ["balance"]),
    ({"owner": "a", "id": 7}, ["id"]),
    ({"owner": "a", "version": 3}, ["version"]),
    (
        {"owner": "", "currency": "x", "opening_balance": -1, "extra": 1},
        ["owner", "currency", "opening_balance", "extra"],
    ),
]


@pytest.mark.parametrize(("body", "fields"), BAD_OPEN_BODIES)
def test_bad_open_is_422_and_creates_no_account(
    shared_client: FlaskClient, body: dict[str, Any], fields: list[str]
) -> None:
    """Every invalid field of POST /accounts is named in `errors`; no account is created."""
    before = shared_client.get("/audit").get_json()
    assert_validation(shared_client.post("/accounts", json=body), *fields)
    assert shared_client.get("/audit").get_json() == before


def test_opening_balance_as_1e3_literal_is_422(shared_client: FlaskClient) -> None:
    """An opening balance written 1e3 is a float on the wire and is refused."""
    before = shared_client.get("/audit").get_json()
    response = shared_client.post(
        "/accounts", data='{"owner": "a", "opening_balance": 1e3}', content_type="application/json"
    )
    assert_validation(response, "opening_balance")
    assert shared_client.get("/audit").get_json() == before


# --------------------------------------------------------------------------- journal


def test_journal_pages_newest_first_until_null(shared_client: FlaskClient) -> None:
    """The journal lists newest first; `before` cursors page through every entry exactly once."""
    account = open_account(shared_client, opening_balance=10)
    for amount in range(1, 6):
        post_money(shared_client, account["id"], "deposit", amount)
    url = f"/accounts/{account['id']}/transactions?limit=4"
    first = shared_client.get(url).get_json()
    assert len(first["items"]) == 4
    assert first["next"] == (
        f"/accounts/{account['id']}/transactions?limit=4&before={first['items'][-1]['id']}"
    )
    seen: list[dict[str, Any]] = []
    next_url: str | None = url
    while next_url is not None:
        page = shared_client.get(next_url).get_json()
        seen.extend(page["items"])
        next_url = page["next"]
    ids = [entry["id"] for entry in seen]
    assert ids == sorted(ids, reverse=True)
    assert len(set(ids)) == 6
    assert [entry["balance_after"] for entry in seen] == [25, 20, 16, 13, 11, 10]
    assert [entry["kind"] for entry in seen] == ["deposit"] * 5 + ["open"]
    assert {entry["account_id"] for entry in seen} == {account["id"]}


def test_journal_before_cursor_and_default_limit(shared_client: FlaskClient) -> None:
    """`before` lists only older entries; without `limit` a short journal fits one page."""
    account = open_account(shared_client, opening_balance=10)
    deposited = [
        post_money(shared_client, account["id"], "deposit", 1).get_json() for _ in range(3)
    ]
    full = shared_client.get(f"/accounts/{account['id']}/transactions").get_json()
    assert full["next"] is None
    assert [entry["id"] for entry in full["items"][:3]] == [d["id"] for d in reversed(deposited)]
    older = shared_client.get(
        f"/accounts/{account['id']}/transactions?before={deposited[1]['id']}"
    ).get_json()
    assert older["items"] == full["items"][2:]
    assert older["next"] is None
    oldest = full["items"][-1]["id"]
    assert shared_client.get(
        f"/accounts/{account['id']}/transactions?before={oldest}"
    ).get_json() == {"items": [], "next": None}


def test_journal_of_one_account_excludes_others(shared_client: FlaskClient) -> None:
    """An account's journal holds only its own entries, even when others move in between."""
    first = open_account(shared_client, opening_balance=1)
    second = open_account(shared_client, opening_balance=2)
    post_money(shared_client, first["id"], "deposit", 3)
    post_money(shared_client, second["id"], "deposit", 4)
    assert [e["amount"] for e in journal(shared_client, first["id"])] == [3, 1]
    assert [e["amount"] for e in journal(shared_client, second["id"])] == [4, 2]


@pytest.mark.parametrize(
    "query",
    [
        "limit=0",
        "limit=501",
        "limit=x",
        "before=0",
        "before=-1",
        "before=abc",
        "before=",
        "before=99999999999999999999",
        "after=1",
    ],
)
def test_journal_bad_query_is_422(shared_client: FlaskClient, query: str) -> None:
    """Bad `limit`/`before` values and unknown parameters on the journal are 422."""
    account = open_account(shared_client)
    response = shared_client.get(f"/accounts/{account['id']}/transactions?{query}")
    assert_validation(response, query.split("=")[0])


# --------------------------------------------------------------------------- account audit


def test_account_audit_of_a_clean_account(shared_client: FlaskClient) -> None:
    """GET /accounts/{id}/audit of a served account: journal equals balance, consistent."""
    account = open_account(shared_client, opening_balance=100)
    post_money(shared_client, account["id"], "withdraw", 40)
    response = shared_client.get(f"/accounts/{account['id']}/audit")
    assert response.status_code == 200
    assert response.get_json() == {
        "account_id": account["id"],
        "balance": 60,
        "journal_balance": 60,
        "drift": 0,
        "chain_breaks": 0,
        "lowest_journal_balance": 0,
        "held": 0,
        "available": 60,
        "holds_with_two_outcomes": 0,
        "holds_captured_above_amount": 0,
        "holds_captured_after_expiry": 0,
        "consistent": True,
    }


# --------------------------------------------------------------------------- unknown ids


@pytest.mark.parametrize("suffix", ["", "/transactions", "/audit"])
def test_unknown_account_reads_are_404(shared_client: FlaskClient, suffix: str) -> None:
    """Reading an account, journal or audit that does not exist is 404 not_found."""
    assert_problem(shared_client.get(f"/accounts/999999999{suffix}"), 404, "not_found")


@pytest.mark.parametrize("segment", NOT_AN_ID)
@pytest.mark.parametrize("suffix", ["", "/transactions", "/audit"])
def test_impossible_account_ids_in_paths_are_404(
    shared_client: FlaskClient, segment: str, suffix: str
) -> None:
    """Ids that are zero, negative, not numbers or beyond BIGINT are 404, never 500."""
    assert_problem(shared_client.get(f"/accounts/{segment}{suffix}"), 404, "not_found")


@pytest.mark.parametrize("segment", NOT_AN_ID)
@pytest.mark.parametrize("endpoint", MONEY_ENDPOINTS)
def test_impossible_account_ids_on_posts_are_404_and_change_nothing(
    shared_client: FlaskClient, segment: str, endpoint: str
) -> None:
    """Money posted to an impossible account id is 404 and changes nothing."""
    before = shared_client.get("/audit").get_json()
    response = shared_client.post(f"/accounts/{segment}/{endpoint}", json={"amount": 1})
    assert_problem(response, 404, "not_found")
    assert shared_client.get("/audit").get_json() == before


def test_largest_id_a_path_may_name_is_404_not_500(shared_client: FlaskClient) -> None:
    """An 18-digit id reaches the store (it fits a BIGINT) and is simply not found."""
    assert_problem(shared_client.get("/accounts/999999999999999999"), 404, "not_found")
    response = post_money(shared_client, 999_999_999_999_999_999, "deposit", 1)
    assert_problem(response, 404, "not_found")
