"""The API in redis-lock and fenced: money moves, stale_lock, lock_timeout, Redis down, /readyz.

Each app gets its own key prefix in the machine's Redis (removed after), so
no test shares a lock or a token counter with another. A stale holder is
played by a newer claim made between a request's claim and its write.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from service import create_app
from service.redis_locks import RedisLocks
from service.stores.base import Store
from tests.api.helpers import assert_problem, journal, open_account, set_mode, snapshot
from tests.conftest import TEST_LOCK_TIMEOUT_MS, make_config
from tests.support.redis_service import (
    client_for,
    closed_port_url,
    delete_prefix,
    redis_url,
    unique_prefix,
)
from tests.unit.test_metrics import sample

REDIS_MODES = ["redis-lock", "fenced"]
SHORT_LOCK_TIMEOUT_MS = 200


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    prefix = unique_prefix("api")
    yield prefix
    delete_prefix(redis_url(), prefix)


@pytest.fixture
def make_app(database_url: str, redis_prefix: str) -> Iterator[Any]:
    """Apps on the test's database, their Redis locks under the test's own key prefix."""
    built: list[Flask] = []

    def build(redis_at: str | None = None, **overrides: object) -> Flask:
        url = redis_at or redis_url()
        application = create_app(make_config(database_url, redis_url=url, **overrides))
        lock_timeout_ms = overrides.get("lock_timeout_ms", TEST_LOCK_TIMEOUT_MS)
        assert isinstance(lock_timeout_ms, int)
        application.extensions["bankrace"].redis_locks = RedisLocks(
            url, lease_ms=2000, lock_timeout_ms=lock_timeout_ms, key_prefix=redis_prefix
        )
        built.append(application)
        return application

    yield build
    for application in built:
        application.extensions["bankrace"].store.close()


def store_of(client: FlaskClient) -> Store:
    store: Store = client.application.extensions["bankrace"].store
    return store


@pytest.mark.parametrize("mode", REDIS_MODES)
def test_money_moves_in_the_redis_modes(make_app: Any, redis_prefix: str, mode: str) -> None:
    """Deposit, withdraw and transfer answer 201 in the mode, the books balance, no lock is left."""
    client = make_app().test_client()
    set_mode(client, lock_mode=mode)
    alice = open_account(client, "alice", 100)["id"]
    bob = open_account(client, "bob", 0)["id"]
    responses = [
        client.post(f"/accounts/{alice}/deposit", json={"amount": 50}),
        client.post(f"/accounts/{alice}/withdraw", json={"amount": 30}),
        client.post("/transfers", json={"from_account": alice, "to_account": bob, "amount": 20}),
    ]
    for response in responses:
        assert response.status_code == 201, response.get_data(as_text=True)
        assert response.headers["X-Lock-Mode"] == mode
    assert client.get(f"/accounts/{alice}").get_json()["balance"] == 100
    assert client.get(f"/accounts/{bob}").get_json()["balance"] == 20
    assert client.get("/audit").get_json()["consistent"] is True
    redis = client_for(redis_url())
    try:
        assert list(redis.scan_iter(match=f"{redis_prefix}:lock:*")) == []
    finally:
        redis.close()


@pytest.mark.parametrize("with_key", [False, True])
def test_a_late_write_is_409_stale_lock_and_changes_nothing(
    make_app: Any, redis_prefix: str, monkeypatch: pytest.MonkeyPatch, with_key: bool
) -> None:
    """A newer holder (the next token) claims the account during the request: 409 stale_lock,
    account and journal untouched, counted; a retry (same Idempotency-Key) runs and lands."""
    client = make_app().test_client()
    set_mode(client, lock_mode="fenced")
    account = open_account(client, "alice", 10)["id"]
    before = snapshot(client, account)
    store = store_of(client)
    original_write = store.write_legs
    redis = client_for(redis_url())

    def write_after_a_newer_claim(writes: Any, *arguments: Any) -> Any:
        newer_token = int(redis.incr(f"{redis_prefix}:fencing-token"))
        store.claim_states({write.leg.account_id: newer_token for write in writes})
        return original_write(writes, *arguments)

    monkeypatch.setattr(store, "write_legs", write_after_a_newer_claim)
    refusals = sample("bankrace_stale_lock_refusals_total", lock_mode="fenced")
    headers = {"Idempotency-Key": "stale-1"} if with_key else {}
    try:
        response = client.post(f"/accounts/{account}/deposit", json={"amount": 5}, headers=headers)
    finally:
        redis.close()
    body = assert_problem(response, 409, "stale_lock")
    assert f"account {account}" in body["detail"]
    assert response.headers["X-Lock-Mode"] == "fenced"
    assert snapshot(client, account) == before
    assert sample("bankrace_stale_lock_refusals_total", lock_mode="fenced") == refusals + 1
    monkeypatch.undo()
    # The refusal was not stored against the key: the retry takes a fresh lock and lands.
    retry = client.post(f"/accounts/{account}/deposit", json={"amount": 5}, headers=headers)
    assert retry.status_code == 201, retry.get_data(as_text=True)
    assert "Idempotent-Replayed" not in retry.headers
    assert [entry["amount"] for entry in journal(client, account)] == [5, 10]
    assert client.get(f"/accounts/{account}/audit").get_json()["consistent"] is True


def test_a_counter_lost_by_redis_costs_one_refusal_not_the_account(
    make_app: Any, redis_prefix: str
) -> None:
    """Redis loses the token counter (restart without persistence): the next deposit's token
    is below the account's, so it is refused 409 stale_lock -- and the counter is raised past
    it, so the retry lands."""
    client = make_app().test_client()
    set_mode(client, lock_mode="fenced")
    account = open_account(client, "alice", 0)["id"]
    for _ in range(3):
        assert client.post(f"/accounts/{account}/deposit", json={"amount": 1}).status_code == 201
    redis = client_for(redis_url())
    try:
        redis.delete(f"{redis_prefix}:fencing-token")
    finally:
        redis.close()
    refused = client.post(f"/accounts/{account}/deposit", json={"amount": 1})
    assert_problem(refused, 409, "stale_lock")
    retried = client.post(f"/accounts/{account}/deposit", json={"amount": 1})
    assert retried.status_code == 201, retried.get_data(as_text=True)
    assert client.get(f"/accounts/{account}").get_json()["balance"] == 4


def test_a_lock_held_elsewhere_is_a_bounded_lock_timeout(make_app: Any, redis_prefix: str) -> None:
    """Another process holds the account's Redis lock: 503 lock_timeout with Retry-After after
    about the lock timeout, nothing written."""
    client = make_app(lock_timeout_ms=SHORT_LOCK_TIMEOUT_MS).test_client()
    set_mode(client, lock_mode="fenced")
    account = open_account(client, "alice", 10)["id"]
    before = snapshot(client, account)
    redis = client_for(redis_url())
    try:
        redis.set(f"{redis_prefix}:lock:account:{account}", "999 elsewhere", px=10_000)
        response = client.post(f"/accounts/{account}/deposit", json={"amount": 5})
    finally:
        redis.close()
    assert_problem(response, 503, "lock_timeout")
    assert response.headers["Retry-After"]
    assert snapshot(client, account) == before


@pytest.mark.parametrize("backend", ["memory", "sqlite"], indirect=True)
@pytest.mark.parametrize("mode", REDIS_MODES)
def test_redis_down_is_503_store_unavailable_and_readyz_says_so(make_app: Any, mode: str) -> None:
    """Nothing listens at BANK_REDIS_URL: money requests and /readyz answer 503
    store_unavailable with Retry-After, naming Redis; nothing is written."""
    client = make_app(redis_at=closed_port_url()).test_client()
    set_mode(client, lock_mode=mode)
    account = open_account(client, "alice", 10)["id"]
    before = snapshot(client, account)
    response = client.post(f"/accounts/{account}/deposit", json={"amount": 5})
    body = assert_problem(response, 503, "store_unavailable")
    assert "Redis" in body["detail"] and response.headers["Retry-After"]
    assert snapshot(client, account) == before
    ready = client.get("/readyz")
    assert "Redis" in assert_problem(ready, 503, "store_unavailable")["detail"]
    assert ready.headers["Retry-After"]


@pytest.mark.parametrize("backend", ["memory"], indirect=True)
def test_redis_down_names_no_host_or_port_to_clients_only_to_the_log(
    make_app: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The 503 of a money request and of /readyz hold no host, port or URL of Redis (its
    password least of all); the server's log names the server, password masked."""
    down = closed_port_url().replace("redis://", "redis://user:s3cr3t-pass@")
    port = down.rsplit(":", 1)[1].split("/")[0]
    client = make_app(redis_at=down).test_client()
    set_mode(client, lock_mode="fenced")
    account = open_account(client, "alice", 10)["id"]
    with caplog.at_level("WARNING", logger="service"):
        answers = [
            client.post(f"/accounts/{account}/deposit", json={"amount": 5}),
            client.get("/readyz"),
        ]
    for response in answers:
        body = assert_problem(response, 503, "store_unavailable")
        assert "Redis" in body["detail"]
        text = response.get_data(as_text=True)
        for secret in ("127.0.0.1", port, "redis://", "s3cr3t-pass", "user"):
            assert secret not in text, (secret, text)
    logged = caplog.text
    assert f"127.0.0.1:{port}" in logged and "s3cr3t-pass" not in logged


@pytest.mark.parametrize("backend", ["memory", "sqlite"], indirect=True)
def test_readyz_checks_redis_only_in_a_redis_mode(make_app: Any) -> None:
    """locked with no Redis at all: ready. fenced with Redis up: ready, naming the lock service."""
    unreachable = make_app(redis_at=closed_port_url()).test_client()
    assert unreachable.get("/readyz").get_json() == {"status": "ready"}
    account = open_account(unreachable, "alice", 1)["id"]
    deposit = unreachable.post(f"/accounts/{account}/deposit", json={"amount": 1})
    assert deposit.status_code == 201
    client = make_app().test_client()
    set_mode(client, lock_mode="fenced")
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ready", "lock_service": "redis"}


@pytest.mark.parametrize("backend", ["memory"], indirect=True)
def test_readyz_names_no_lock_service_under_admin_only_reads(make_app: Any) -> None:
    """With BANK_ADMIN_ONLY_READS the anonymous probe must not tell a Redis mode from another."""
    client = make_app(admin_only_reads=True).test_client()
    set_mode(client, lock_mode="fenced")
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ready"}
