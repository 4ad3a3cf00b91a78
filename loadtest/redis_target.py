"""The Redis a started service uses in `redis-lock` and `fenced`, as the runners tell it.

The runners start the service with a clean environment (no BANK_* leaks in), so
the Redis URL goes through on purpose: `--redis-url`, else this process's
BANK_REDIS_URL, else the service's default. Before loading a Redis mode a
runner pings that Redis, so that a missing one is one clear line instead of a
service that never gets ready. Nothing here imports `service`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from urllib.parse import urlsplit, urlunsplit

import redis

REDIS_URL_VARIABLE = "BANK_REDIS_URL"
# What a runner adds to `redis_problem`'s line.
LEAVE_OUT_HINT = "start it (redis-server) or leave redis-lock and fenced out with --modes"
REDIS_LOCK_TTL_VARIABLE = "BANK_REDIS_LOCK_TTL_MS"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"  # the service's default (DESIGN §4)
PING_TIMEOUT_SECONDS = 2.0


def redis_url_from(environment: Mapping[str, str] = os.environ) -> str:
    return environment.get(REDIS_URL_VARIABLE) or DEFAULT_REDIS_URL


def hide_password(url: str) -> str:
    """The URL as a report may print it: any password replaced by ***."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}{port}"))


def redis_problem(url: str) -> str | None:
    """Why the Redis at `url` cannot serve a lock now, or None when it answers PING."""
    try:
        client = redis.Redis.from_url(
            url,
            socket_connect_timeout=PING_TIMEOUT_SECONDS,
            socket_timeout=PING_TIMEOUT_SECONDS,
        )
    except ValueError as error:
        return f"BANK_REDIS_URL {hide_password(url)} is not a Redis URL: {error}"
    try:
        client.ping()
    except redis.RedisError as error:
        return f"Redis at {hide_password(url)} does not answer ({type(error).__name__})"
    finally:
        client.close()
    return None
