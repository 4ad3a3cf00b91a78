"""The lock service of `redis-lock` and `fenced`: per-account lease locks in Redis.

A lock is one key per account, taken with `SET NX PX` semantics and given
back with a compare-and-delete, both as Lua scripts so each is one atomic
step in Redis. Taking a lock also hands out a fencing token: the next value
of a counter that only grows (`INCR`), in the same atomic step, so for any
one account the tokens of its successive holders always increase. (Should
Redis lose the counter, `count_past` raises it again past what the store
holds, at the cost of one refused request per account ahead of it.) The
lock's value is that token and the holder's process id, so a person (or a
test) reading Redis can see who holds what, and a release can tell whether
the lock is still its own.

Every key starts with the deployment's prefix (BANK_REDIS_PREFIX, default
`bankrace`): `<prefix>:lock:account:<id>` and `<prefix>:fencing-token`, so
deployments sharing one Redis under their own prefixes share no lock and no
counter (two banks each have an account 1).

The lock is a lease: it expires after `BANK_REDIS_LOCK_TTL_MS` whatever its
holder is doing. A holder paused past it (GC, swap, SIGSTOP, a race window
longer than the lease) still believes it holds the lock; that is the whole
lesson of `redis-lock`, and why `fenced` has the store check the token. A
release that finds the lock gone or taken counts a lease expiry.

Every wait is bounded: acquiring polls until the request's deadline (the
lock timeout, then LockTimeout), and every Redis call has short socket
timeouts and no retries, so an unreachable Redis is StoreUnavailable within
about REDIS_SOCKET_TIMEOUT_SECONDS, never a hang. The client is built on
first use, in the worker after the fork; a process serving only the other
modes never connects.

This module knows Redis and the domain's errors; not HTTP, not the stores.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import redis
from redis.backoff import NoBackoff
from redis.commands.core import Script
from redis.retry import Retry

from service import metrics
from service.config import DEFAULT_REDIS_PREFIX, redacted_redis_url
from service.domain import LockTimeout, StoreUnavailable

logger = logging.getLogger(__name__)

DEFAULT_KEY_PREFIX = DEFAULT_REDIS_PREFIX  # BANK_REDIS_PREFIX: one per deployment sharing a Redis
# One Redis round trip may take this long before Redis counts as unreachable;
# never longer than the lock timeout itself.
REDIS_SOCKET_TIMEOUT_SECONDS = 0.5
# Polling for a held lock: jittered, growing from 1 ms to 20 ms, so waiters
# neither hammer Redis nor sit idle long after a release.
ACQUIRE_POLL_MIN_MS = 1
ACQUIRE_POLL_MAX_MS = 20
# Connections per worker process: one per thread is enough; a bound all the same.
MAX_CONNECTIONS = 64

# KEYS[1] the account's lock, KEYS[2] the token counter; ARGV[1] the lease (ms),
# ARGV[2] the holder's process id. Returns the new token, or nil if the lock is held.
ACQUIRE_SCRIPT = """
if redis.call('EXISTS', KEYS[1]) == 1 then
    return nil
end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], token .. ' ' .. ARGV[2], 'PX', ARGV[1])
return token
"""

# KEYS[1] the account's lock; ARGV[1] the value its holder set. 1 if released,
# 0 if the lease had run out (the key is gone, or another holder's).
RELEASE_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""

# KEYS[1] the token counter; ARGV[1] a token the store holds. Raises the
# counter to it if it is behind (never lowers it): the next token is above.
RAISE_COUNTER_SCRIPT = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if current < tonumber(ARGV[1]) then
    redis.call('SET', KEYS[1], ARGV[1])
    return 1
end
return 0
"""


@dataclass(frozen=True)
class _Client:
    """One process's Redis connection pool and the two scripts (loaded once, run by SHA)."""

    connection: redis.Redis
    acquire: Script
    release: Script
    raise_counter: Script


@dataclass(frozen=True)
class Lease:
    """The locks one operation holds: each account's fencing token."""

    tokens: dict[int, int] = field(default_factory=dict)


class RedisLocks:
    """Per-account lease locks and fencing tokens in one Redis database."""

    def __init__(
        self,
        url: str,
        *,
        lease_ms: int,
        lock_timeout_ms: int,
        key_prefix: str = DEFAULT_KEY_PREFIX,
    ) -> None:
        self._url = url
        self.lease_ms = lease_ms
        self._socket_timeout_seconds = min(REDIS_SOCKET_TIMEOUT_SECONDS, lock_timeout_ms / 1000)
        self.key_prefix = key_prefix
        self._client: _Client | None = None
        self._guard = threading.Lock()

    # ------------------------------------------------------------------ locking

    @contextmanager
    def holding(
        self, account_ids: Sequence[int], lock_mode: str, deadline: float
    ) -> Iterator[Lease]:
        """Hold each account's lock, taken in the given order, until the block ends.

        LockTimeout if a lock is still held by another at `deadline` (the
        locks already taken are given back); StoreUnavailable if Redis cannot
        be reached. The block may outlive the lease: nothing here stops it.
        """
        held: dict[int, str] = {}
        lease = Lease()
        try:
            for account_id in account_ids:
                token = self._acquire(account_id, deadline)
                held[account_id] = self._value(token)
                lease.tokens[account_id] = token
            yield lease
        finally:
            self._release(held, lock_mode)

    def _acquire(self, account_id: int, deadline: float) -> int:
        acquire = self._redis().acquire
        keys = [self._lock_key(account_id), self._counter_key()]
        poll_ms = float(ACQUIRE_POLL_MIN_MS)
        while True:
            with self._unavailable_as_refusal():
                token = acquire(keys=keys, args=[self.lease_ms, os.getpid()])
            if token is not None:
                return int(token)
            pause_seconds = random.uniform(ACQUIRE_POLL_MIN_MS, poll_ms) / 1000  # nosec B311  # jitter
            if time.monotonic() + pause_seconds >= deadline:
                raise LockTimeout(
                    f"account {account_id} stayed locked (in Redis) past the lock timeout; "
                    "nothing was written"
                )
            time.sleep(pause_seconds)  # a bounded poll; Redis has no blocking SET NX
            poll_ms = min(ACQUIRE_POLL_MAX_MS, poll_ms * 2)

    def _release(self, held: dict[int, str], lock_mode: str) -> None:
        """Give back every lock still ours; count the leases that ran out.

        Never raises: by now the operation is done (or refused), and a lock
        that cannot be given back simply expires with its lease.
        """
        if not held:
            return
        release = self._redis().release
        for account_id, value in reversed(held.items()):
            try:
                released = release(keys=[self._lock_key(account_id)], args=[value])
            except redis.RedisError as error:
                logger.warning(
                    "could not release the Redis lock of account %d: %s", account_id, error
                )
                continue
            if not released:
                metrics.lease_expired(lock_mode)
                logger.warning(
                    "the Redis lock of account %d expired while its holder still worked "
                    "(lease %d ms)",
                    account_id,
                    self.lease_ms,
                )

    def count_past(self, token: int) -> None:
        """Make every later token higher than `token`, a token the store already holds.

        After a refused fenced write. Usually the counter is already past it
        (a newer holder got it from this counter); but if Redis lost the
        counter (restarted without persistence, flushed), the store holds
        tokens the counter has not reached yet, and without this every
        claim of those accounts would be refused until it caught up. Best
        effort: the refusal stands either way.
        """
        try:
            if self._redis().raise_counter(keys=[self._counter_key()], args=[token]):
                logger.warning(
                    "the fencing-token counter in Redis was behind the store (lost or reset?); "
                    "raised it to %d",
                    token,
                )
        except redis.RedisError as error:
            logger.warning("could not check the fencing-token counter: %s", error)

    # ------------------------------------------------------------------ readiness

    def check_ready(self) -> None:
        """StoreUnavailable unless Redis answers a PING."""
        with self._unavailable_as_refusal():
            self._redis().connection.ping()

    def close(self) -> None:
        with self._guard:
            client, self._client = self._client, None
        if client is not None:
            client.connection.close()

    # ------------------------------------------------------------------ internals

    def _lock_key(self, account_id: int) -> str:
        return f"{self.key_prefix}:lock:account:{account_id}"

    def _counter_key(self) -> str:
        return f"{self.key_prefix}:fencing-token"

    @staticmethod
    def _value(token: int) -> str:
        return f"{token} {os.getpid()}"

    def _redis(self) -> _Client:
        with self._guard:
            if self._client is None:
                connection = redis.Redis.from_url(
                    self._url,
                    socket_timeout=self._socket_timeout_seconds,
                    socket_connect_timeout=self._socket_timeout_seconds,
                    # No retry: a retried round trip would stretch the wait past the bound.
                    retry=Retry(NoBackoff(), 0),
                    max_connections=MAX_CONNECTIONS,
                )
                self._client = _Client(
                    connection,
                    connection.register_script(ACQUIRE_SCRIPT),
                    connection.register_script(RELEASE_SCRIPT),
                    connection.register_script(RAISE_COUNTER_SCRIPT),
                )
            return self._client

    @contextmanager
    def _unavailable_as_refusal(self) -> Iterator[None]:
        try:
            yield
        except redis.RedisError as error:
            # Clients learn that Redis failed and how, never where it is (host, port, URL):
            # that goes to the server's log only, its password masked.
            logger.warning(
                "the lock service (Redis at %s) cannot be used: %s",
                redacted_redis_url(self._url),
                type(error).__name__,
            )
            raise StoreUnavailable(
                f"the lock service (Redis) cannot be used: {type(error).__name__}"
            ) from error
