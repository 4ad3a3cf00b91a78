"""The Redis the tests use (BANK_TEST_REDIS_URL), one database number or key prefix per test.

Redis runs on this machine at 127.0.0.1:6379 (`.ci/run` starts it). Without
it the tests that need it skip with a reason, or fail under CI
(tests/support/components.py).

Tests never flush a database others may use: each takes its own key prefix
(`unique_prefix`) or its own database number (`redis_url_for_database`).
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit, urlunsplit

import redis

from tests.support.components import missing

REDIS_URL_VARIABLE = "BANK_TEST_REDIS_URL"
DEFAULT_TEST_REDIS_URL = "redis://127.0.0.1:6379/0"
PING_TIMEOUT_SECONDS = 2.0


def redis_url() -> str:
    """The test Redis, checked to answer (skip, or fail under CI, when it does not)."""
    url = os.environ.get(REDIS_URL_VARIABLE) or DEFAULT_TEST_REDIS_URL
    client = redis.Redis.from_url(
        url, socket_timeout=PING_TIMEOUT_SECONDS, socket_connect_timeout=PING_TIMEOUT_SECONDS
    )
    try:
        client.ping()
    except redis.RedisError as error:
        missing(f"Redis at {url} unusable: {error}")
    finally:
        client.close()
    return url


def redis_url_for_database(number: int) -> str:
    """The test Redis's URL with another database number (0-15 on a default server)."""
    parts = urlsplit(redis_url())
    return urlunsplit(parts._replace(path=f"/{number}"))


def unique_prefix(name: str) -> str:
    return f"bankrace-test:{name}:{uuid.uuid4().hex[:12]}"


def client_for(url: str) -> redis.Redis:
    return redis.Redis.from_url(
        url, socket_timeout=PING_TIMEOUT_SECONDS, socket_connect_timeout=PING_TIMEOUT_SECONDS
    )


def delete_prefix(url: str, prefix: str) -> None:
    """Remove every key a test made under its prefix."""
    client = client_for(url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=500))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def closed_port_url() -> str:
    """A Redis URL on a loopback port nothing listens on (connections are refused at once)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"redis://127.0.0.1:{port}/0"


@contextmanager
def silent_server() -> Iterator[tuple[str, Callable[[], int]]]:
    """A hung Redis (accepts connections, never answers): its URL, and a function counting
    the connections made to it so far (a client that retries connects again)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)  # the kernel completes handshakes; nobody ever reads
        listener.setblocking(False)
        accepted: list[socket.socket] = []

        def connections() -> int:
            while True:
                try:
                    accepted.append(listener.accept()[0])
                except BlockingIOError:
                    return len(accepted)

        try:
            yield f"redis://127.0.0.1:{listener.getsockname()[1]}/0", connections
        finally:
            for connection in accepted:
                connection.close()


@contextmanager
def silent_server_url() -> Iterator[str]:
    """A Redis URL whose server accepts connections and never answers (a hung Redis)."""
    with silent_server() as (url, _):
        yield url
