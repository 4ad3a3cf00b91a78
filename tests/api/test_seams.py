"""Where two features meet: the pairs of docs/feature-pairs.md that no other test combines.

Each test puts two features in one request history on the real app (and, for
overload, the real gate of service/overload.py around it, with the verdict a
worker would give), and checks the promise each feature makes alone still
holds: a key's replay after a mode switch, a shed keyed request's key, an
exempt probe under admin-only reads while the queue sheds.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from werkzeug.test import Client, TestResponse

from service import create_app
from service.overload import QUEUE_FULL, QUEUE_WAIT, OverloadGate, OverloadLimits, Verdict
from tests.api.helpers import ADMIN_HEADERS, open_account
from tests.conftest import make_config

LIMITS = OverloadLimits(max_queued_requests=3, max_queue_wait_ms=500)
CLIENT_TOKENS = ("seam-client-alpha", "seam-client-bravo")


@pytest.fixture
def tokens_app(database_url: str) -> Iterator[Flask]:
    """Client tokens, an admin token and admin-only reads: every guard on at once."""
    application = create_app(
        make_config(database_url, api_tokens=CLIENT_TOKENS, admin_only_reads=True)
    )
    yield application
    application.extensions["bankrace"].store.close()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def through_gate(
    gate: OverloadGate, verdict: Verdict, method: str, path: str, **options: Any
) -> TestResponse:
    """One request through the overload gate, decided as a worker would decide it."""
    with gate.deciding(verdict):
        return Client(gate).open(path, method=method, **options)


def balance(app: Flask, account_id: int) -> int:
    response = app.test_client().get(f"/accounts/{account_id}", headers=ADMIN_HEADERS)
    assert response.status_code == 200, response.get_data(as_text=True)
    return int(response.get_json()["balance"])


def test_a_keyed_deposit_repeated_after_a_mode_switch_replays_and_moves_money_once(
    app: Flask,
) -> None:
    """Keys x mode switch: the repeat answers the first (locked) answer, not a new atomic run."""
    client = app.test_client()
    account = open_account(client, opening_balance=1000)
    deposit = {"amount": 100}
    key = {"Idempotency-Key": "seam-switch-1"}
    first = client.post(f"/accounts/{account['id']}/deposit", json=deposit, headers=key)
    assert first.status_code == 201 and first.headers["X-Lock-Mode"] == "locked"

    switched = client.put("/mode", json={"lock_mode": "atomic"}, headers=ADMIN_HEADERS)
    assert switched.status_code == 200, switched.get_data(as_text=True)
    repeat = client.post(f"/accounts/{account['id']}/deposit", json=deposit, headers=key)
    fresh = client.post(
        f"/accounts/{account['id']}/deposit",
        json=deposit,
        headers={"Idempotency-Key": "seam-switch-2"},
    )

    assert repeat.status_code == 201 and repeat.headers["Idempotent-Replayed"] == "true"
    assert repeat.get_json()["id"] == first.get_json()["id"]
    assert repeat.headers["X-Lock-Mode"] == "locked"  # the mode that really served it
    assert fresh.status_code == 201 and fresh.headers["X-Lock-Mode"] == "atomic"
    assert balance(app, account["id"]) == 1200
    audit = client.get(f"/accounts/{account['id']}/audit").get_json()
    assert audit["consistent"] is True and audit["drift"] == 0


@pytest.mark.parametrize("reason", [QUEUE_FULL, QUEUE_WAIT])
def test_a_shed_keyed_deposit_leaves_its_key_free_for_the_retry(
    tokens_app: Flask, reason: str
) -> None:
    """Keys x overload x tokens: a shed POST never ran, so its retry runs once, not a replay."""
    gate = OverloadGate(tokens_app, LIMITS)
    alpha = bearer(CLIENT_TOKENS[0])
    opened = tokens_app.test_client().post(
        "/accounts", json={"owner": "seam", "opening_balance": 500}, headers=alpha
    )
    account_id = opened.get_json()["id"]
    request: dict[str, Any] = {
        "json": {"amount": 70},
        "headers": {**alpha, "Idempotency-Key": "seam-shed-1"},
    }
    path = f"/accounts/{account_id}/deposit"

    shed = through_gate(gate, Verdict(reason, 0.6), "POST", path, **request)
    assert shed.status_code == 503 and shed.get_json()["code"] == "overloaded"
    assert balance(tokens_app, account_id) == 500

    retried = through_gate(gate, Verdict(None, 0.0), "POST", path, **request)
    replayed = through_gate(gate, Verdict(None, 0.0), "POST", path, **request)
    assert retried.status_code == 201 and "Idempotent-Replayed" not in retried.headers
    assert replayed.headers.get("Idempotent-Replayed") == "true"
    assert replayed.get_json()["id"] == retried.get_json()["id"]
    assert balance(tokens_app, account_id) == 570


@pytest.mark.parametrize("reason", [QUEUE_FULL, QUEUE_WAIT])
def test_metrics_stays_the_admins_while_the_queue_sheds(tokens_app: Flask, reason: str) -> None:
    """Admin-only reads x overload: /metrics skips the queue, never the admin check."""
    gate = OverloadGate(tokens_app, LIMITS)
    shedding = Verdict(reason, 0.6)
    anonymous = through_gate(gate, shedding, "GET", "/metrics")
    as_client = through_gate(gate, shedding, "GET", "/metrics", headers=bearer(CLIENT_TOKENS[1]))
    as_admin = through_gate(gate, shedding, "GET", "/metrics", headers=ADMIN_HEADERS)
    assert (anonymous.status_code, as_client.status_code, as_admin.status_code) == (401, 403, 200)
    assert b"bankrace_lock_mode" not in anonymous.data + as_client.data
    assert b"bankrace_lock_mode" in as_admin.data
    readiness = through_gate(gate, shedding, "GET", "/readyz")
    assert readiness.status_code == 200  # probes stay open, and name no lock service
    assert readiness.get_json() == {"status": "ready"}


def test_keyed_hold_endings_are_each_clients_own_and_a_shed_one_never_ran(
    tokens_app: Flask,
) -> None:
    """Holds x keys x tokens x overload: one key string, two clients, two captures; shed: none."""
    gate = OverloadGate(tokens_app, LIMITS)
    client = tokens_app.test_client()
    clients = [bearer(token) for token in CLIENT_TOKENS]
    holds = []
    for headers in clients:
        opened = client.post(
            "/accounts", json={"owner": "h", "opening_balance": 900}, headers=headers
        )
        account_id = opened.get_json()["id"]
        placed = client.post(f"/accounts/{account_id}/holds", json={"amount": 300}, headers=headers)
        assert placed.status_code == 201, placed.get_data(as_text=True)
        holds.append((account_id, placed.get_json()["id"]))
    key = {"Idempotency-Key": "seam-capture-1"}

    (alpha_account, alpha_hold), (bravo_account, bravo_hold) = holds
    shed = through_gate(
        gate, Verdict(QUEUE_WAIT, 0.6), "POST", f"/holds/{alpha_hold}/capture",
        json={"amount": 100}, headers={**clients[0], **key},
    )  # fmt: skip
    assert shed.status_code == 503 and balance(tokens_app, alpha_account) == 900
    captured = [
        client.post(f"/holds/{hold_id}/capture", json={"amount": 100}, headers={**headers, **key})
        for headers, (_account, hold_id) in zip(clients, holds, strict=True)
    ]
    assert [answer.status_code for answer in captured] == [201, 201]
    assert not any("Idempotent-Replayed" in answer.headers for answer in captured)
    assert [answer.get_json()["hold_id"] for answer in captured] == [alpha_hold, bravo_hold]
    assert balance(tokens_app, alpha_account) == balance(tokens_app, bravo_account) == 800
