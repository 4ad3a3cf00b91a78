"""BANK_REDIS_PREFIX: two deployments sharing one Redis share no lock and no fencing counter.

Against the machine's Redis (tests/support/redis_service.py: skipped locally
without it, a failure under CI=true). Each test takes unique prefixes and
removes their keys afterwards; the default prefix `bankrace` is never used.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from flask import Flask

from service import create_app
from service.config import Config, ConfigError
from service.domain import LockTimeout
from service.redis_locks import DEFAULT_KEY_PREFIX, RedisLocks
from tests.api.helpers import ADMIN_HEADERS
from tests.conftest import make_config
from tests.support.redis_service import client_for, delete_prefix, redis_url, unique_prefix

LEASE_MS = 10_000  # longer than any test: a lock here is only ever released, never expired
LOCK_TIMEOUT_MS = 2000
SHORT_DEADLINE_SECONDS = 0.2


@pytest.fixture
def url() -> str:
    return redis_url()


@pytest.fixture
def prefixes(url: str) -> Iterator[tuple[str, str]]:
    pair = (unique_prefix("deployment-a"), unique_prefix("deployment-b"))
    yield pair
    for prefix in pair:
        delete_prefix(url, prefix)


def locks(url: str, prefix: str) -> RedisLocks:
    return RedisLocks(url, lease_ms=LEASE_MS, lock_timeout_ms=LOCK_TIMEOUT_MS, key_prefix=prefix)


def test_the_default_prefix_is_bankrace_and_the_setting_reaches_the_app() -> None:
    """Unset: `bankrace` (as before); set: create_app builds its lock service on that prefix."""
    assert Config.from_env({}).redis_prefix == DEFAULT_KEY_PREFIX == "bankrace"
    config = Config.from_env(
        {"BANK_REDIS_PREFIX": "bank-eu:prod", "BANK_DATABASE_URL": "memory://"}
    )
    assert config.redis_prefix == "bank-eu:prod"
    application = create_app(config)
    try:
        assert application.extensions["bankrace"].redis_locks.key_prefix == "bank-eu:prod"
    finally:
        application.extensions["bankrace"].store.close()


def test_a_lock_under_one_prefix_does_not_block_the_other(
    url: str, prefixes: tuple[str, str]
) -> None:
    """A holds account 1; B takes its own account 1 at once, and A's is still held against A."""
    first, second, again = (locks(url, prefix) for prefix in (*prefixes, prefixes[0]))
    try:
        with first.holding([1], "fenced", time.monotonic() + 1):
            with second.holding([1], "fenced", time.monotonic() + SHORT_DEADLINE_SECONDS) as lease:
                assert lease.tokens == {1: 1}
            with (
                pytest.raises(LockTimeout),
                again.holding([1], "fenced", time.monotonic() + SHORT_DEADLINE_SECONDS),
            ):
                pass
    finally:
        for service in (first, second, again):
            service.close()


def test_each_prefix_counts_its_own_fencing_tokens(url: str, prefixes: tuple[str, str]) -> None:
    """Tokens under A go 1, 2, 3; B's first is still 1, and A's counter is not moved by B."""
    first, second = locks(url, prefixes[0]), locks(url, prefixes[1])
    redis = client_for(url)
    try:
        seen = []
        for _ in range(3):
            with first.holding([7], "fenced", time.monotonic() + 1) as lease:
                seen.append(lease.tokens[7])
        assert seen == [1, 2, 3]
        with second.holding([7], "fenced", time.monotonic() + 1) as lease:
            assert lease.tokens == {7: 1}
        first.count_past(10)  # a counter raised under A stays A's
        with second.holding([7], "fenced", time.monotonic() + 1) as lease:
            assert lease.tokens == {7: 2}
        assert int(redis.get(f"{prefixes[0]}:fencing-token") or 0) == 10
        assert int(redis.get(f"{prefixes[1]}:fencing-token") or 0) == 2
        assert not list(redis.scan_iter(match=f"{prefixes[0]}:lock:*"))
    finally:
        first.close()
        second.close()
        redis.close()


def test_two_apps_on_one_redis_with_their_own_prefixes_do_not_share_locks(
    url: str, prefixes: tuple[str, str]
) -> None:
    """Two deployments in fenced mode: B deposits to its account 1 while A's account 1 is held."""
    built: list[Flask] = []
    try:
        for prefix in prefixes:
            config = make_config(
                "memory://", redis_url=url, redis_prefix=prefix, lock_timeout_ms=200
            )
            built.append(create_app(config))
        clients = [application.test_client() for application in built]
        for client in clients:
            assert (
                client.put("/mode", json={"lock_mode": "fenced"}, headers=ADMIN_HEADERS).status_code
                == 200
            )
            assert client.post("/accounts", json={"owner": "same id"}).get_json()["id"] == 1
        held = built[0].extensions["bankrace"].redis_locks
        with held.holding([1], "fenced", time.monotonic() + 1):
            blocked = clients[0].post("/accounts/1/deposit", json={"amount": 5})
            free = clients[1].post("/accounts/1/deposit", json={"amount": 5})
        assert blocked.status_code == 503 and blocked.get_json()["code"] == "lock_timeout"
        assert free.status_code == 201, free.get_data(as_text=True)
    finally:
        for application in built:
            application.extensions["bankrace"].redis_locks.close()
            application.extensions["bankrace"].store.close()


@pytest.mark.parametrize(
    "value",
    [
        "has space",
        "glob*",
        "a?b",
        "[ab]",
        "x" * 65,
        "caf\u00e9",
        "new\nline",
        ":leading",
        "trailing:",
    ],
)
def test_a_bad_prefix_stops_start_up_naming_the_variable(value: str) -> None:
    """One line naming BANK_REDIS_PREFIX: no spaces, no glob characters, 1 to 64 characters."""
    with pytest.raises(ConfigError, match="BANK_REDIS_PREFIX") as raised:
        Config.from_env({"BANK_REDIS_PREFIX": value})
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize("value", ["bankrace", "bank-eu:prod", "a", "x" * 64, "team_1.bank"])
def test_good_prefixes_are_taken_as_given(value: str) -> None:
    assert Config.from_env({"BANK_REDIS_PREFIX": f" {value} "}).redis_prefix == value
