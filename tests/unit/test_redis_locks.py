"""service/redis_locks.py against the machine's Redis: leases, tokens, bounds, failures.

Each test takes its own key prefix, so nothing collides with other tests or
a running service. Expiry, and a second holder's refused attempts, are
awaited by polling Redis with a deadline.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis

from service.domain import LockTimeout, StoreUnavailable
from service.redis_locks import REDIS_SOCKET_TIMEOUT_SECONDS, RedisLocks
from tests.support.redis_service import (
    client_for,
    closed_port_url,
    delete_prefix,
    redis_url,
    silent_server,
    silent_server_url,
    unique_prefix,
)
from tests.support.tcp_proxy import TcpProxy
from tests.unit.test_metrics import sample

LEASE_MS = 2000
SHORT_LEASE_MS = 30
LOCK_TIMEOUT_MS = 2000
POLL_SECONDS = 0.005
EXPIRY_DEADLINE_SECONDS = 5.0
THREAD_DEADLINE_SECONDS = 10.0
# An unreachable Redis is given up on within the lock timeout, the bound every lock wait
# promises (one socket timeout, 0.5 s, when it hangs; at once when it refuses).
FAILURE_BOUND_SECONDS = LOCK_TIMEOUT_MS / 1000
# A held lock is given up on at the caller's deadline, plus the last poll and a loaded
# machine's scheduling (still short of the lease, after which it would be taken instead).
DEADLINE_MARGIN_SECONDS = 1.5


@pytest.fixture
def url() -> str:
    return redis_url()


@pytest.fixture
def prefix(url: str) -> Iterator[str]:
    name = unique_prefix("locks")
    yield name
    delete_prefix(url, name)


@pytest.fixture
def client(url: str) -> Iterator[redis.Redis]:
    connection = client_for(url)
    yield connection
    connection.close()


def locks(url: str, prefix: str, lease_ms: int = LEASE_MS) -> RedisLocks:
    return RedisLocks(url, lease_ms=lease_ms, lock_timeout_ms=LOCK_TIMEOUT_MS, key_prefix=prefix)


def deadline(seconds: float = LOCK_TIMEOUT_MS / 1000) -> float:
    return time.monotonic() + seconds


def lock_value(client: redis.Redis, prefix: str, account_id: int) -> str | None:
    value = client.get(f"{prefix}:lock:account:{account_id}")
    return None if value is None else value.decode()


def wait_until_gone(client: redis.Redis, prefix: str, account_id: int) -> None:
    limit = time.monotonic() + EXPIRY_DEADLINE_SECONDS
    while lock_value(client, prefix, account_id) is not None:
        assert time.monotonic() < limit, "the lease never expired"
        time.sleep(POLL_SECONDS)  # polling interval, not synchronisation


def test_a_lock_is_a_key_with_a_lease_naming_its_token_and_process(
    url: str, prefix: str, client: redis.Redis
) -> None:
    """Held: the key says `token pid` and expires within the lease; released: the key is gone."""
    service = locks(url, prefix)
    with service.holding([7], "fenced", deadline()) as lease:
        token = lease.tokens[7]
        assert lock_value(client, prefix, 7) == f"{token} {os.getpid()}"
        assert 0 < client.pttl(f"{prefix}:lock:account:7") <= LEASE_MS
    assert lock_value(client, prefix, 7) is None


def test_tokens_only_grow_from_one_acquisition_to_the_next(url: str, prefix: str) -> None:
    """Each acquisition, of any account, gets a token above every earlier one."""
    service = locks(url, prefix)
    tokens = []
    for account_id in (1, 2, 1, 3, 1):
        with service.holding([account_id], "fenced", deadline()) as lease:
            tokens.append(lease.tokens[account_id])
    assert tokens == sorted(tokens) and len(set(tokens)) == len(tokens)


def test_a_transfer_holds_both_accounts_in_the_given_order(
    url: str, prefix: str, client: redis.Redis
) -> None:
    """Both keys are held at once; the first account's token is the lower one."""
    service = locks(url, prefix)
    with service.holding([3, 9], "fenced", deadline()) as lease:
        assert lock_value(client, prefix, 3) is not None
        assert lock_value(client, prefix, 9) is not None
        assert lease.tokens[3] < lease.tokens[9]
    assert lock_value(client, prefix, 3) is None and lock_value(client, prefix, 9) is None


def named(url: str, client_name: str) -> str:
    """The URL with a connection name, by which Redis's CLIENT LIST tells its commands apart."""
    return f"{url}{'&' if '?' in url else '?'}client_name={client_name}"


def refused_at_least_once(client: redis.Redis, client_name: str) -> bool:
    """Whether the named client has run the acquire script (EVALSHA) at least once."""
    return any(
        entry.get("name") == client_name and entry.get("cmd") == "evalsha"
        for entry in client.client_list()
    )


def test_a_held_lock_makes_the_next_holder_wait_until_it_is_released(
    url: str, prefix: str, client: redis.Redis
) -> None:
    """A second holder, seen refused by Redis while the first holds, gets the lock once the
    first gives it back, with a higher token; never both at once."""
    waiter_name = f"bankrace-test-waiter-{uuid.uuid4().hex[:8]}"
    first_service, waiter_service = locks(url, prefix), locks(named(url, waiter_name), prefix)
    events: list[str] = []
    second_in = threading.Event()
    second_tokens: list[int] = []

    def second() -> None:
        with waiter_service.holding([5], "redis-lock", deadline(THREAD_DEADLINE_SECONDS)) as lease:
            events.append("second in")
            second_tokens.append(lease.tokens[5])
            second_in.set()

    waiter = threading.Thread(target=second, daemon=True)
    with first_service.holding([5], "redis-lock", deadline()) as first:
        events.append("first in")
        first_value = lock_value(client, prefix, 5)
        waiter.start()
        limit = time.monotonic() + THREAD_DEADLINE_SECONDS
        while not refused_at_least_once(client, waiter_name):
            assert waiter.is_alive() and time.monotonic() < limit, "the second ended or never tried"
            time.sleep(POLL_SECONDS)  # a poll of the observable state, not a synchronisation
        # Tried, and still out: the key is the first holder's.
        assert waiter.is_alive() and not second_in.is_set(), events
        assert lock_value(client, prefix, 5) == first_value
        events.append("first out")
    assert second_in.wait(THREAD_DEADLINE_SECONDS), "the second never got the released lock"
    waiter.join(THREAD_DEADLINE_SECONDS)
    assert events == ["first in", "first out", "second in"]
    assert second_tokens[0] > first.tokens[5]
    waiter_service.close()


def test_a_lock_held_past_the_deadline_is_a_lock_timeout_and_frees_what_was_taken(
    url: str, prefix: str, client: redis.Redis
) -> None:
    """Waiting for account 2 runs out: LockTimeout, and account 1 (taken first) is given back."""
    service = locks(url, prefix)
    caller_deadline_seconds = 0.2
    with service.holding([2], "fenced", deadline()):
        started = time.monotonic()
        with (
            pytest.raises(LockTimeout, match="account 2"),
            service.holding([1, 2], "fenced", deadline(caller_deadline_seconds)),
        ):
            pytest.fail("the block must not run without the lock")
        waited_seconds = time.monotonic() - started
        assert lock_value(client, prefix, 1) is None
    print(f"gave up {waited_seconds:.3f} s after a {caller_deadline_seconds} s deadline")
    assert waited_seconds < caller_deadline_seconds + DEADLINE_MARGIN_SECONDS


def test_a_holder_past_its_lease_loses_the_lock_and_counts_an_expiry(
    url: str, prefix: str, client: redis.Redis
) -> None:
    """The lease runs out under a slow holder: the next holder gets in with a higher token,
    and the late release neither deletes the new holder's lock nor goes uncounted."""
    service = locks(url, prefix, lease_ms=SHORT_LEASE_MS)
    patient = locks(url, prefix)
    expiries = sample("bankrace_lock_lease_expiries_total", lock_mode="redis-lock")
    expired, newer_holds, late_released = threading.Event(), threading.Event(), threading.Event()
    late_tokens: list[int] = []

    def late_holder() -> None:
        with service.holding([4], "redis-lock", deadline()) as late:
            late_tokens.append(late.tokens[4])
            wait_until_gone(client, prefix, 4)  # "paused" past its lease
            expired.set()
            newer_holds.wait(5)
        late_released.set()

    thread = threading.Thread(target=late_holder)
    thread.start()
    assert expired.wait(5)
    with patient.holding([4], "redis-lock", deadline()) as newer:
        newer_value = lock_value(client, prefix, 4)
        newer_holds.set()
        assert late_released.wait(5)
        assert lock_value(client, prefix, 4) == newer_value  # still the newer holder's
        assert newer.tokens[4] > late_tokens[0]
    thread.join(5)
    assert sample("bankrace_lock_lease_expiries_total", lock_mode="redis-lock") == expiries + 1


def test_count_past_raises_a_lost_counter_and_never_lowers_it(
    url: str, prefix: str, client: redis.Redis
) -> None:
    """After Redis lost the counter, count_past(50) makes the next token 51; count_past of an
    older token changes nothing."""
    service = locks(url, prefix)
    service.count_past(50)
    with service.holding([1], "fenced", deadline()) as lease:
        assert lease.tokens[1] == 51
    service.count_past(7)
    assert int(client.get(f"{prefix}:fencing-token") or 0) == 51


def test_constructing_the_lock_service_never_connects() -> None:
    """The client is lazy: a process that never uses a Redis mode never needs Redis."""
    RedisLocks(closed_port_url(), lease_ms=LEASE_MS, lock_timeout_ms=LOCK_TIMEOUT_MS)


@pytest.mark.parametrize("operation", ["acquire", "ready"])
def test_a_refused_connection_is_store_unavailable_at_once(operation: str) -> None:
    """Nothing listens: StoreUnavailable naming Redis (not where it is), with no retry loop
    behind it."""
    url = closed_port_url()
    service = RedisLocks(url, lease_ms=LEASE_MS, lock_timeout_ms=LOCK_TIMEOUT_MS)
    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match=r"the lock service \(Redis\)") as raised:
        run(service, operation)
    assert time.monotonic() - started < FAILURE_BOUND_SECONDS
    assert (
        "127.0.0.1" not in raised.value.detail
        and str(urlsplit(url).port) not in raised.value.detail
    )


@pytest.mark.parametrize("operation", ["acquire", "ready"])
def test_a_redis_that_never_answers_is_store_unavailable_within_the_socket_timeout(
    operation: str,
) -> None:
    """A hung Redis (connects, never replies) is tried once, for one socket timeout: given up
    on within the lock timeout, with no second connection (a retry would double the wait)."""
    with silent_server() as (url, connections):
        service = RedisLocks(url, lease_ms=LEASE_MS, lock_timeout_ms=LOCK_TIMEOUT_MS)
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            run(service, operation)
        given_up_seconds = time.monotonic() - started
        assert connections() == 1
    print(f"a hung Redis given up on after {given_up_seconds:.2f} s")
    assert given_up_seconds < FAILURE_BOUND_SECONDS


def test_a_short_lock_timeout_shortens_the_socket_timeout_too() -> None:
    """With a 10 ms lock timeout, a hung Redis is given up on long before the 0.5 s socket
    timeout: the socket timeout never exceeds the lock timeout."""
    with silent_server_url() as url:
        service = RedisLocks(url, lease_ms=LEASE_MS, lock_timeout_ms=10)
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            service.check_ready()
        given_up_seconds = time.monotonic() - started
    print(f"a hung Redis given up on after {given_up_seconds * 1000:.0f} ms")
    # The unshortened socket timeout could not answer before it.
    assert given_up_seconds < REDIS_SOCKET_TIMEOUT_SECONDS


def test_the_password_of_the_redis_url_never_reaches_the_reason(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The refusal names neither the server nor its password; the log names the server
    with the password masked."""
    url = closed_port_url().replace("redis://", "redis://user:s3cr3t-pass@")
    service = RedisLocks(url, lease_ms=LEASE_MS, lock_timeout_ms=LOCK_TIMEOUT_MS)
    with pytest.raises(StoreUnavailable) as raised:
        service.check_ready()
    assert "s3cr3t-pass" not in raised.value.detail and "127.0.0.1" not in raised.value.detail
    assert "s3cr3t-pass" not in caplog.text
    assert "redis://user:***@127.0.0.1" in caplog.text


def test_a_release_that_cannot_reach_redis_does_not_raise(url: str, prefix: str) -> None:
    """Redis goes away after the write: the done operation does not become an error."""
    target = urlsplit(url)
    proxy = TcpProxy(target.hostname or "127.0.0.1", target.port or 6379)
    try:
        through_proxy = urlunsplit(target._replace(netloc=f"127.0.0.1:{proxy.port}"))
        service = locks(through_proxy, prefix, lease_ms=SHORT_LEASE_MS)
        with service.holding([6], "fenced", deadline()):
            proxy.cut()
        # the block ended without an exception; the lease simply expires in Redis
        with pytest.raises(StoreUnavailable):
            service.check_ready()
    finally:
        proxy.close()


def run(service: RedisLocks, operation: str) -> None:
    if operation == "ready":
        service.check_ready()
    else:
        with service.holding([1], "fenced", deadline()):
            pytest.fail("the block must not run without the lock")
