"""GET /balances?ids=: several balances from one read, so their sum is one moment's sum."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from service.api.accounts import MAX_BALANCE_IDS
from service.stores.base import Store
from tests.api.helpers import assert_problem, assert_validation, open_account, snapshot
from tests.api.test_openapi import assert_documented

BALANCE_FIELDS = {"account_id", "balance", "currency", "version"}
# Concurrent transfers against concurrent snapshot reads (bounded in count).
TRANSFER_THREADS = 3
TRANSFERS_PER_THREAD = 40
SNAPSHOT_READS = 60
JOIN_DEADLINE_SECONDS = 60


def balances(client: FlaskClient, *account_ids: int) -> list[dict[str, Any]]:
    response = client.get("/balances?ids=" + ",".join(str(value) for value in account_ids))
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    items: list[dict[str, Any]] = response.get_json()["items"]
    return items


def test_balances_come_in_the_order_asked(client: FlaskClient) -> None:
    """Each named account once, in the order of `ids`, with balance, currency and version."""
    alice = open_account(client, "alice", opening_balance=100)["id"]
    bob = open_account(client, "bob", opening_balance=7)["id"]
    euro = open_account(client, "eve", opening_balance=3, currency="EUR")["id"]
    items = balances(client, euro, alice, bob)
    assert all(set(item) == BALANCE_FIELDS for item in items)
    assert [(item["account_id"], item["balance"], item["currency"]) for item in items] == [
        (euro, 3, "EUR"),
        (alice, 100, "USD"),
        (bob, 7, "USD"),
    ]
    assert balances(client, bob) == [items[2]]


def test_balances_follow_a_transfer(client: FlaskClient) -> None:
    """After a transfer both balances and versions moved, and the sum did not."""
    alice = open_account(client, "alice", opening_balance=100)["id"]
    bob = open_account(client, "bob", opening_balance=0)["id"]
    moved = client.post("/transfers", json={"from_account": alice, "to_account": bob, "amount": 30})
    assert moved.status_code == 201
    items = balances(client, alice, bob)
    assert [(item["balance"], item["version"]) for item in items] == [(70, 1), (30, 1)]
    assert sum(item["balance"] for item in items) == 100


def test_balances_answer_as_documented(client: FlaskClient) -> None:
    """The answer, a 404 and a 422 have the shapes /openapi.json gives them."""
    document = client.get("/openapi.json").get_json()
    alice = open_account(client, opening_balance=5)["id"]
    for response in (
        client.get(f"/balances?ids={alice}"),
        client.get(f"/balances?ids={alice},{alice + 1}"),
        client.get("/balances?ids=x"),
    ):
        assert_documented(document, response)
    parameter = document["paths"]["/balances"]["get"]["parameters"][0]
    assert parameter["style"] == "form" and parameter["explode"] is False
    assert parameter["required"] is True
    assert parameter["schema"]["maxItems"] == MAX_BALANCE_IDS


@pytest.mark.parametrize(
    "query",
    [
        "",
        "ids=",
        "ids=,",
        "ids=1,",
        "ids=,1",
        "ids=1,,2",
        "ids=0",
        "ids=-1",
        "ids=+1",
        "ids=01",
        "ids=1.0",
        "ids=1e3",
        "ids=%201",
        "ids=1%20,2",
        "ids=abc",
        "ids=%D9%A1",  # ARABIC-INDIC DIGIT ONE: isdigit() is true, not an id here
        "ids=%00",
        "ids=1;2",
        "ids=[1,2]",
        "ids=1000000000000000000",  # 19 digits: beyond any BIGINT id
        "ids=1&ids=2",
        "ids[]=1",
        "ids=1&limit=5",
        "ids=1,1",
        "ids=3,2,3",
        "ids=" + ",".join(str(value) for value in range(1, MAX_BALANCE_IDS + 2)),
    ],
)
def test_junk_ids_are_refused_and_change_nothing(shared_client: FlaskClient, query: str) -> None:
    """Junk, a repeat, an id twice, too many ids or another parameter: 422, nothing changed."""
    account = open_account(shared_client, opening_balance=9)["id"]
    before = snapshot(shared_client, account)
    response = shared_client.get(f"/balances?{query}")
    body = assert_validation(response, *expected_fields(query))
    assert response.headers.get("X-Request-ID")
    assert "Traceback" not in body["detail"]
    assert snapshot(shared_client, account) == before


def expected_fields(query: str) -> list[str]:
    if query.startswith("ids[]"):
        return ["ids[]"]  # an unknown parameter is refused before `ids` is read
    if "limit=" in query:
        return ["limit"]
    return ["ids"]


def test_a_refusal_says_what_was_wrong(shared_client: FlaskClient) -> None:
    """The message names the repeated id, the bound, or the expected form."""
    repeated = assert_validation(shared_client.get("/balances?ids=4,2,4"), "ids")
    assert repeated["errors"][0]["message"] == "names account 4 twice"
    too_many = ",".join(str(value) for value in range(1, MAX_BALANCE_IDS + 2))
    bound = assert_validation(shared_client.get(f"/balances?ids={too_many}"), "ids")
    assert str(MAX_BALANCE_IDS) in bound["errors"][0]["message"]
    junk = assert_validation(shared_client.get("/balances?ids=a"), "ids")
    assert "separated by commas" in junk["errors"][0]["message"]
    missing = assert_validation(shared_client.get("/balances"), "ids")
    assert missing["errors"][0]["message"] == "is required"


def test_an_unknown_account_is_a_404_naming_it(shared_client: FlaskClient) -> None:
    """The first unknown id, in the order asked, is named; the bound itself is accepted."""
    known = open_account(shared_client, opening_balance=1)["id"]
    unknown = 10**17
    body = assert_problem(
        shared_client.get(f"/balances?ids={known},{unknown},{unknown + 1}"), 404, "not_found"
    )
    assert str(unknown) in body["detail"] and str(unknown + 1) not in body["detail"]
    # Exactly MAX_BALANCE_IDS ids are taken (the answer is about the accounts, not the count).
    at_bound = ",".join(str(unknown + offset) for offset in range(MAX_BALANCE_IDS))
    assert_problem(shared_client.get(f"/balances?ids={at_bound}"), 404, "not_found")


class TransferAfterEachCall:
    """The app's store, except that each store call the reading thread makes returns only
    once one more transfer has committed: a read split over several calls sees part of the
    books before that transfer and the rest after it, on every store, every time."""

    def __init__(self, store: Store, commit_transfer: Callable[[], None]) -> None:
        self.store = store
        self._commit_transfer = commit_transfer
        self.reader: int | None = None  # the thread whose calls are interleaved
        self.interleaved = 0

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.store, name)
        if not callable(attribute):
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            result = attribute(*args, **kwargs)
            if threading.get_ident() == self.reader:
                self._commit_transfer()
                self.interleaved += 1
            return result

        return call


def test_snapshots_never_see_half_a_transfer(app: Flask, monkeypatch: pytest.MonkeyPatch) -> None:
    """Transfers commit while balances are read -- one after each store call a read makes,
    more from free-running threads -- and every snapshot still sums to the opening total."""
    client = app.test_client()
    accounts = [open_account(client, f"owner {n}", opening_balance=1000)["id"] for n in range(4)]
    total = 1000 * len(accounts)
    failures: list[str] = []
    committed: list[int] = []  # one item per transfer answered 201 (append is atomic)

    def move(mover: FlaskClient, source: int, target: int, amount: int) -> int:
        body = {"from_account": source, "to_account": target, "amount": amount}
        status = mover.post("/transfers", json=body).status_code
        if status == 201:
            committed.append(amount)
        elif status not in (409, 503):
            failures.append(f"transfer answered {status}")
        return status

    def transfer_between_calls() -> None:
        # From the first account read to the last: a read split between them sees the
        # money arrive without having seen it leave.
        statuses: list[int] = []
        mover = threading.Thread(
            target=lambda: statuses.append(move(app.test_client(), accounts[0], accounts[-1], 1))
        )
        mover.start()
        mover.join(JOIN_DEADLINE_SECONDS)
        assert statuses == [201], f"the transfer between two store calls answered {statuses}"

    def transfer(seed: int) -> None:
        mover = app.test_client()
        for number in range(TRANSFERS_PER_THREAD):
            source = accounts[(seed + number) % len(accounts)]
            target = accounts[(seed + 2 * number + 1) % len(accounts)]
            if source != target:
                move(mover, source, target, 1 + number % 7)

    bank = app.extensions["bankrace"]
    interleaving = TransferAfterEachCall(bank.store, transfer_between_calls)
    monkeypatch.setattr(bank, "store", interleaving)
    movers = [threading.Thread(target=transfer, args=(seed,)) for seed in range(TRANSFER_THREADS)]
    for mover in movers:
        mover.start()
    sums, overlapped = [], 0
    try:
        for _ in range(SNAPSHOT_READS):
            before = len(committed)
            interleaving.reader = threading.get_ident()
            items = balances(client, *accounts)
            interleaving.reader = None
            overlapped += len(committed) > before
            sums.append(sum(item["balance"] for item in items))
            assert min(item["balance"] for item in items) >= 0
    finally:
        interleaving.reader = None
        for mover in movers:
            mover.join(JOIN_DEADLINE_SECONDS)
    print(
        f"{SNAPSHOT_READS} reads, {overlapped} overlapped by a committed transfer; "
        f"{interleaving.interleaved} transfers committed between a read's store calls, "
        f"{len(committed) - interleaving.interleaved} by the free-running threads"
    )
    assert not any(mover.is_alive() for mover in movers), "a transfer thread hung"
    assert not failures, failures
    assert interleaving.interleaved >= SNAPSHOT_READS, "the reads never reached the store"
    assert overlapped == SNAPSHOT_READS, "a read overlapped no transfer: it proved nothing"
    assert sums == [total] * SNAPSHOT_READS, sorted(set(sums))
    final = balances(client, *accounts)
    assert sum(item["balance"] for item in final) == total
    assert sum(item["version"] for item in final) > 0  # the transfers did run
