"""Clients and their Idempotency-Keys, against a plain model, through the API (DESIGN §3).

A hypothesis state machine plays several clients, each with its own bearer
token (the admin token is one more client): they deposit, withdraw and
transfer with keys drawn from one small pool of key strings, so a client
often repeats its own key (same request, or another body) and often sends a
key string another client used first. The model keeps each client's key
scope apart: a repeat of one's own request is a replay of the stored answer
(same status and bytes, `Idempotent-Replayed: true`, nothing executed);
one's own key with another request is 422 `idempotency_key_reused`; another
client's key is simply a first request. After every step each account's
balance and version (one per executed change) equal the model's: a replay
that executed again, or a key answered across clients, shows at once.

Each example works on accounts and keys of its own (keys carry the
example's run id), so one migrated store per backend serves all examples.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from flask import Flask
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from service import create_app
from tests.conftest import ADMIN_TOKEN, make_config

CLIENT_TOKENS = {
    "alpha": "client-token-alpha-0001",
    "bravo": "client-token-bravo-0002",
    "charlie": "client-token-charlie-0003",
}
TOKENS = {**CLIENT_TOKENS, "admin": ADMIN_TOKEN}
KEY_NAMES = ("order-1", "order-2", "order-3")
ACCOUNTS = 3
OPENING_BALANCE = 100
MAX_AMOUNT = 150  # above the opening balance: withdrawals and transfers are refused sometimes
EXAMPLES = {"memory": 25, "sqlite": 15, "postgres": 10}
STEPS_PER_EXAMPLE = 20


@dataclass(frozen=True)
class Answer:
    """What the first request under a client's key was, and what it was answered."""

    request: tuple[str, str]  # path and canonical body: the key's fingerprint, restated
    status: int
    body: bytes


@dataclass
class Model:
    balances: dict[int, int] = field(default_factory=dict)
    versions: dict[int, int] = field(default_factory=dict)
    #: (client, key) -> the stored answer: each client's scope is its own.
    answers: dict[tuple[str, str], Answer] = field(default_factory=dict)

    def outcome(self, kind: str, source: int, target: int, amount: int) -> int:
        """The status a first request must get; the model's books move only on 201."""
        if kind == "deposit":
            self._move(source, amount)
            return 201
        if self.balances[source] < amount:
            return 409  # insufficient_funds: decided by running, stored, replayed
        self._move(source, -amount)
        if kind == "transfer":
            self._move(target, amount)
        return 201

    def _move(self, account: int, delta: int) -> None:
        self.balances[account] += delta
        self.versions[account] += 1


class ClientsMachine(RuleBasedStateMachine):
    application: Flask  # set per test, before the machine runs

    def __init__(self) -> None:
        super().__init__()
        self.client = self.application.test_client()
        self.run = uuid.uuid4().hex[:12]
        self.model = Model()
        self.accounts: list[int] = []

    @initialize()
    def open_accounts(self) -> None:
        for number in range(ACCOUNTS):
            response = self.client.post(
                "/accounts",
                json={"owner": f"owner {number}", "opening_balance": OPENING_BALANCE},
                headers=bearer(CLIENT_TOKENS["alpha"]),
            )
            assert response.status_code == 201, response.get_data(as_text=True)
            account = response.get_json()["id"]
            self.accounts.append(account)
            self.model.balances[account] = OPENING_BALANCE
            self.model.versions[account] = 0  # opening is not a balance change

    @rule(
        who=st.sampled_from(sorted(TOKENS)),
        key_name=st.sampled_from(KEY_NAMES),
        kind=st.sampled_from(("deposit", "withdraw", "transfer")),
        index=st.integers(0, ACCOUNTS - 1),
        amount=st.integers(1, MAX_AMOUNT),
        spaces=st.integers(1, 2),
    )
    def keyed_request(
        self, who: str, key_name: str, kind: str, index: int, amount: int, spaces: int
    ) -> None:
        """One client's keyed POST: a first request, its own replay, or its own key reused."""
        source, target = self.accounts[index], self.accounts[(index + 1) % ACCOUNTS]
        path, body = request_for(kind, source, target, amount)
        key = f"{self.run}-{key_name}"
        headers = {**bearer(TOKENS[who], spaces), "Idempotency-Key": key}
        response = self.client.post(path, json=body, headers=headers)
        request = (path, json.dumps(body, sort_keys=True))
        stored = self.model.answers.get((who, key))
        if stored is None:
            expected = self.model.outcome(kind, source, target, amount)
            assert response.status_code == expected, (who, key, response.get_data(as_text=True))
            assert "Idempotent-Replayed" not in response.headers, (who, key, "another's answer")
            self.model.answers[(who, key)] = Answer(
                request, response.status_code, response.get_data()
            )
        elif stored.request == request:
            assert response.headers.get("Idempotent-Replayed") == "true", (who, key)
            assert (response.status_code, response.get_data()) == (stored.status, stored.body)
        else:
            assert response.status_code == 422, (who, key, response.get_data(as_text=True))
            assert response.get_json()["code"] == "idempotency_key_reused"

    @rule(who=st.sampled_from(sorted(TOKENS)), index=st.integers(0, ACCOUNTS - 1))
    def unkeyed_deposit(self, who: str, index: int) -> None:
        """Without a key nothing is stored: every request runs."""
        account = self.accounts[index]
        response = self.client.post(
            f"/accounts/{account}/deposit", json={"amount": 1}, headers=bearer(TOKENS[who])
        )
        assert response.status_code == 201
        self.model.outcome("deposit", account, account, 1)

    @invariant()
    def books_equal_the_model(self) -> None:
        # One page holds exactly this example's accounts (ids are consecutive and newest last).
        first = self.accounts[0]
        response = self.client.get(
            f"/accounts?after={first - 1}&limit={ACCOUNTS}", headers=bearer(ADMIN_TOKEN)
        )
        seen = {
            item["id"]: (item["balance"], item["version"]) for item in response.get_json()["items"]
        }
        wanted = {
            account: (self.model.balances[account], self.model.versions[account])
            for account in self.accounts
        }
        assert seen == wanted


def bearer(token: str, spaces: int = 1) -> dict[str, str]:
    return {"Authorization": "Bearer" + " " * spaces + token}


def request_for(kind: str, source: int, target: int, amount: int) -> tuple[str, dict[str, Any]]:
    if kind == "transfer":
        return "/transfers", {"from_account": source, "to_account": target, "amount": amount}
    return f"/accounts/{source}/{kind}", {"amount": amount}


@pytest.fixture
def guarded_app(database_url: str) -> Iterator[Flask]:
    application = create_app(make_config(database_url, api_tokens=tuple(CLIENT_TOKENS.values())))
    yield application
    application.extensions["bankrace"].store.close()


def test_each_clients_keys_are_its_own_and_replays_never_execute(
    guarded_app: Flask, backend: str
) -> None:
    """Random histories of clients sharing key strings agree with the model on every store."""
    ClientsMachine.application = guarded_app
    run_state_machine_as_test(
        ClientsMachine,
        settings=settings(
            max_examples=EXAMPLES[backend],
            stateful_step_count=STEPS_PER_EXAMPLE,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


@pytest.mark.parametrize("backend", ["memory"], indirect=True)
def test_the_model_catches_keys_answered_across_clients(
    guarded_app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With every client in one scope (the old bug), the machine fails: the check can fail."""
    monkeypatch.setattr("service.api.idempotent.idempotency_scope", lambda: "")
    ClientsMachine.application = guarded_app
    with pytest.raises(AssertionError):
        run_state_machine_as_test(
            ClientsMachine,
            settings=settings(
                max_examples=EXAMPLES["memory"],
                stateful_step_count=STEPS_PER_EXAMPLE,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow],
                database=None,
                phases=[Phase.generate],  # a found failure is all this needs: no shrinking
            ),
        )
