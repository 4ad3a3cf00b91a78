"""Configuration: the only module that reads the environment.

`Config.from_env()` validates every BANK_* variable of DESIGN §4 and raises
`ConfigError` with one line naming the first bad variable, so a bad value
stops start-up instead of surfacing later as a 500.

The secrets: the passwords of BANK_DATABASE_URL and BANK_REDIS_URL,
BANK_ADMIN_TOKEN and BANK_API_TOKENS. No ConfigError message echoes any of
them, `repr(config)` and `shown_settings()` mask them, and `redacted_url` is
how every other module shows a database or Redis URL to a person.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from urllib.parse import quote, urlsplit

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from service.domain import (
    MAX_RACE_WINDOW_MS,
    LockMode,
    ModeSetting,
)
from service.idempotency import DEFAULT_TTL_HOURS, MAX_TTL_HOURS

DEFAULT_DATABASE_URL = "sqlite:///var/bank.db"
MEMORY_DATABASE_URL = "memory://"
DEFAULT_BIND = "127.0.0.1:8000"
DEFAULT_WORKERS = 2
DEFAULT_THREADS = 4  # measured best on 2 cores: docs/configuration.md "Why 2 workers x 4 threads"
MAX_WORKERS = 64
MAX_THREADS = 256
DEFAULT_LOCK_TIMEOUT_MS = 5000
MIN_LOCK_TIMEOUT_MS = 10
MAX_LOCK_TIMEOUT_MS = 60_000
# Load shedding, per worker process (service/overload.py; docs/overload.md says how measured).
DEFAULT_QUEUE_MAX_REQUESTS = 64
MAX_QUEUE_MAX_REQUESTS = 100_000
DEFAULT_QUEUE_WAIT_MAX_MS = 1000
MIN_QUEUE_WAIT_MAX_MS = 1
MAX_QUEUE_WAIT_MAX_MS = 600_000
TRANSFER_LOCK_ORDERS = ("sorted", "request")
BIND_PATTERN = re.compile(r"(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.\-]+):(?P<port>[0-9]{1,5})|unix:/\S+")
MAX_PORT = 65535
ADMIN_TOKEN_PATTERN = re.compile(r"[\x21-\x7e]{8,512}")
# An API token is an admin-token-shaped string without commas (BANK_API_TOKENS separates by commas).
API_TOKEN_PATTERN = re.compile(r"[\x21-\x2b\x2d-\x7e]{8,512}")
MAX_API_TOKENS = 1000
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
REDIS_SCHEMES = ("redis", "rediss", "unix")
DEFAULT_REDIS_LOCK_TTL_MS = 2000
# Every Redis key of the lock service starts with `<prefix>:`. No glob characters (an operator's
# SCAN MATCH "<prefix>:*" must match only this deployment's keys), no spaces, no ':' at either end.
DEFAULT_REDIS_PREFIX = "bankrace"
REDIS_PREFIX_PATTERN = re.compile(r"[A-Za-z0-9_.\-](?:[A-Za-z0-9_.:\-]{0,62}[A-Za-z0-9_.\-])?")
MAX_REDIS_PREFIX_CHARACTERS = 64
MIN_REDIS_LOCK_TTL_MS = 10
MAX_REDIS_LOCK_TTL_MS = 600_000
# An exact origin: scheme, host and optional port, nothing after.
CORS_ORIGIN_PATTERN = re.compile(
    r"https?://[A-Za-z0-9.\-]+(:[0-9]{1,5})?|https?://\[[0-9a-fA-F:.]+\](:[0-9]{1,5})?"
)
SUPPORTED_DATABASES = {"sqlite": ("pysqlite",), "postgresql": ("psycopg",)}
HIDDEN = "***"
# libpq also takes a password as a URL query parameter.
SECRET_QUERY_KEYS = ("password",)


class ConfigError(ValueError):
    """One bad setting; the message names the variable."""


@dataclass(frozen=True, repr=False)
class Config:
    database_url: str = DEFAULT_DATABASE_URL
    lock_mode: LockMode = LockMode.LOCKED
    race_window_ms: int = 0
    allow_unsafe_modes: bool = False
    admin_token: str | None = None
    lock_timeout_ms: int = DEFAULT_LOCK_TIMEOUT_MS
    transfer_lock_order: str = "sorted"
    bind: str = DEFAULT_BIND
    workers: int = DEFAULT_WORKERS
    threads: int = DEFAULT_THREADS
    idempotency_ttl_hours: int = DEFAULT_TTL_HOURS
    #: Bearer tokens any client may present; empty: no client authentication.
    api_tokens: tuple[str, ...] = ()
    #: When set, GET /audit and GET /mode need the admin token too (PUT /mode always does).
    admin_only_reads: bool = False
    #: Origins allowed cross-origin requests; empty: no CORS header is ever sent.
    cors_origins: tuple[str, ...] = ()
    redis_url: str = DEFAULT_REDIS_URL
    redis_lock_ttl_ms: int = DEFAULT_REDIS_LOCK_TTL_MS
    #: The start of every lock and fencing-counter key in Redis: one per deployment sharing it.
    redis_prefix: str = DEFAULT_REDIS_PREFIX
    #: Requests that may wait for a thread of one worker; one more is answered 503 overloaded.
    queue_max_requests: int = DEFAULT_QUEUE_MAX_REQUESTS
    #: The longest a request may wait for a thread; past it, it is answered 503 overloaded.
    queue_wait_max_ms: int = DEFAULT_QUEUE_WAIT_MAX_MS

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Config:
        env = os.environ if environ is None else environ
        config = cls(
            database_url=_database_url(env, "BANK_DATABASE_URL"),
            lock_mode=_lock_mode(env, "BANK_LOCK_MODE"),
            race_window_ms=_integer(env, "BANK_RACE_WINDOW_MS", 0, 0, MAX_RACE_WINDOW_MS),
            allow_unsafe_modes=_flag(env, "BANK_ALLOW_UNSAFE_MODES"),
            admin_token=env.get("BANK_ADMIN_TOKEN") or None,
            lock_timeout_ms=_integer(
                env,
                "BANK_LOCK_TIMEOUT_MS",
                DEFAULT_LOCK_TIMEOUT_MS,
                MIN_LOCK_TIMEOUT_MS,
                MAX_LOCK_TIMEOUT_MS,
            ),
            transfer_lock_order=_choice(
                env, "BANK_TRANSFER_LOCK_ORDER", "sorted", TRANSFER_LOCK_ORDERS
            ),
            bind=_bind(env, "BANK_BIND"),
            workers=_integer(env, "BANK_WORKERS", DEFAULT_WORKERS, 1, MAX_WORKERS),
            threads=_integer(env, "BANK_THREADS", DEFAULT_THREADS, 1, MAX_THREADS),
            idempotency_ttl_hours=_integer(
                env, "BANK_IDEMPOTENCY_TTL_HOURS", DEFAULT_TTL_HOURS, 1, MAX_TTL_HOURS
            ),
            api_tokens=_api_tokens(env, "BANK_API_TOKENS"),
            admin_only_reads=_flag(env, "BANK_ADMIN_ONLY_READS"),
            cors_origins=_cors_origins(env, "BANK_CORS_ORIGINS"),
            redis_url=_redis_url(env, "BANK_REDIS_URL"),
            redis_lock_ttl_ms=_integer(
                env,
                "BANK_REDIS_LOCK_TTL_MS",
                DEFAULT_REDIS_LOCK_TTL_MS,
                MIN_REDIS_LOCK_TTL_MS,
                MAX_REDIS_LOCK_TTL_MS,
            ),
            redis_prefix=_redis_prefix(env, "BANK_REDIS_PREFIX"),
            queue_max_requests=_integer(
                env,
                "BANK_QUEUE_MAX_REQUESTS",
                DEFAULT_QUEUE_MAX_REQUESTS,
                1,
                MAX_QUEUE_MAX_REQUESTS,
            ),
            queue_wait_max_ms=_integer(
                env,
                "BANK_QUEUE_WAIT_MAX_MS",
                DEFAULT_QUEUE_WAIT_MAX_MS,
                MIN_QUEUE_WAIT_MAX_MS,
                MAX_QUEUE_WAIT_MAX_MS,
            ),
        )
        config.validate()
        return config

    def validate(self) -> None:
        """Cross-field rules; also run for configs built in code (tests)."""
        if self.lock_mode.is_unsafe and not self.allow_unsafe_modes:
            raise ConfigError(
                f"BANK_LOCK_MODE={self.lock_mode.value} is an unsafe mode; "
                "set BANK_ALLOW_UNSAFE_MODES=1 to allow it"
            )
        if self.admin_token is not None and not ADMIN_TOKEN_PATTERN.fullmatch(self.admin_token):
            # A header value cannot carry edge whitespace or control characters,
            # so such a token could never be presented.
            raise ConfigError(
                "BANK_ADMIN_TOKEN must be 8 to 512 printable characters without spaces"
            )
        _database_url({"BANK_DATABASE_URL": self.database_url}, "BANK_DATABASE_URL")
        _redis_url({"BANK_REDIS_URL": self.redis_url}, "BANK_REDIS_URL")
        _redis_prefix({"BANK_REDIS_PREFIX": self.redis_prefix}, "BANK_REDIS_PREFIX")
        for token in self.api_tokens:
            if not API_TOKEN_PATTERN.fullmatch(token):
                raise ConfigError(
                    "BANK_API_TOKENS: each token must be 8 to 512 printable characters "
                    "without spaces or commas"
                )
        if self.admin_only_reads and self.admin_token is None:
            raise ConfigError("BANK_ADMIN_ONLY_READS=1 needs BANK_ADMIN_TOKEN")

    @property
    def is_memory(self) -> bool:
        return self.database_url == MEMORY_DATABASE_URL

    @property
    def initial_mode(self) -> ModeSetting:
        return ModeSetting(self.lock_mode, self.race_window_ms)

    def with_overrides(self, **changes: object) -> Config:
        updated = replace(self, **changes)  # type: ignore[arg-type]
        updated.validate()
        return updated

    def shown_settings(self) -> dict[str, object]:
        """Every setting as a person may see it: the secrets masked."""
        shown: dict[str, object] = {item.name: getattr(self, item.name) for item in fields(self)}
        shown["database_url"] = redacted_url(self.database_url)
        shown["admin_token"] = HIDDEN if self.admin_token else None
        shown["api_tokens"] = f"{len(self.api_tokens)} tokens {HIDDEN}" if self.api_tokens else ()
        shown["redis_url"] = redacted_redis_url(self.redis_url)
        return shown

    def __repr__(self) -> str:
        settings = ", ".join(f"{name}={value!r}" for name, value in self.shown_settings().items())
        return f"Config({settings})"


def redacted_url(url: str) -> str:
    """The database URL with its password (in the user part or the query) replaced by ***."""
    if url == MEMORY_DATABASE_URL:
        return url
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        return HIDDEN  # not a URL: nothing in it can be shown safely
    hidden_query = {key: HIDDEN for key in SECRET_QUERY_KEYS if key in parsed.query}
    shown = parsed.update_query_dict(hidden_query).render_as_string(hide_password=True)
    return shown.replace(quote(HIDDEN, safe=""), HIDDEN)  # the query part is percent-encoded


def redacted_redis_url(url: str) -> str:
    """The Redis URL with its password (user part) replaced by ***."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
    except ValueError:
        return HIDDEN
    if "@" in netloc:
        credentials, _, host = netloc.rpartition("@")
        user = credentials.partition(":")[0]
        netloc = f"{user}:{HIDDEN}@{host}" if ":" in credentials else f"{HIDDEN}@{host}"
    return parts._replace(netloc=netloc).geturl()


def _text(env: Mapping[str, str], name: str, default: str) -> str:
    value = env.get(name, "").strip()
    return value or default


def _integer(env: Mapping[str, str], name: str, default: int, minimum: int, maximum: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    # Length first: int() of a string thousands of digits long raises its own error.
    if not re.fullmatch(r"[0-9]{1,12}", raw):
        raise ConfigError(f"{name}={raw!r} must be a whole number from {minimum} to {maximum}")
    value = int(raw)
    if not minimum <= value <= maximum:
        raise ConfigError(f"{name}={value} must be from {minimum} to {maximum}")
    return value


def _flag(env: Mapping[str, str], name: str) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw in ("", "0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise ConfigError(f"{name}={raw!r} must be 1 or 0")


def _choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    value = _text(env, name, default)
    if value not in choices:
        raise ConfigError(f"{name}={value!r} must be one of {', '.join(choices)}")
    return value


def _lock_mode(env: Mapping[str, str], name: str) -> LockMode:
    value = _choice(env, name, LockMode.LOCKED.value, tuple(mode.value for mode in LockMode))
    return LockMode(value)


def _bind(env: Mapping[str, str], name: str) -> str:
    value = _text(env, name, DEFAULT_BIND)
    match = BIND_PATTERN.fullmatch(value)
    if not match or (match.group("port") and not 1 <= int(match.group("port")) <= MAX_PORT):
        raise ConfigError(f"{name}={value!r} must be HOST:PORT with a port from 1 to {MAX_PORT}")
    return value


def _database_url(env: Mapping[str, str], name: str) -> str:
    """memory://, SQLite, or PostgreSQL through psycopg 3 (`postgresql://` means psycopg)."""
    value = _text(env, name, DEFAULT_DATABASE_URL)
    if value == MEMORY_DATABASE_URL:
        return value
    hint = "use sqlite:///path.db, postgresql+psycopg://user:password@host/database or memory://"
    try:
        url = make_url(value)  # ValueError: a port that is not a number
    except (ArgumentError, ValueError):
        # Never echo the value: it may carry a password.
        raise ConfigError(f"{name} is not a database URL: {hint}") from None
    if url.port is not None and not 1 <= url.port <= MAX_PORT:
        raise ConfigError(f"{name} has a port outside 1 to {MAX_PORT}")
    backend, _, driver = url.drivername.partition("+")
    if backend not in SUPPORTED_DATABASES:
        raise ConfigError(f"{name} names an unsupported database {backend!r}: {hint}")
    if backend == "sqlite" and url.database in (None, "", ":memory:"):
        # Each pooled connection would get its own empty database.
        raise ConfigError(f"{name} needs an SQLite file (or memory:// for the in-memory store)")
    if backend == "postgresql" and "+" not in url.drivername:
        return url.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    if driver and driver not in SUPPORTED_DATABASES[backend]:
        raise ConfigError(f"{name} names an unsupported driver {driver!r}: {hint}")
    return value


def _redis_url(env: Mapping[str, str], name: str) -> str:
    """redis://[[user]:password@]host[:port][/db], rediss://… or unix:///path; never echoed."""
    value = _text(env, name, DEFAULT_REDIS_URL)
    hint = "use redis://host:port/db, rediss://host:port/db or unix:///path/to/redis.sock"
    try:
        parts = urlsplit(value)
        port = parts.port  # ValueError when not a number or out of range
    except ValueError:
        raise ConfigError(f"{name} is not a Redis URL: {hint}") from None
    if parts.scheme not in REDIS_SCHEMES:
        raise ConfigError(f"{name} is not a Redis URL: {hint}")
    if parts.scheme == "unix":
        if not parts.path.startswith("/"):
            raise ConfigError(f"{name} needs the socket's absolute path: {hint}")
        return value
    if not parts.hostname:
        raise ConfigError(f"{name} has no host: {hint}")
    if port is not None and not 1 <= port <= MAX_PORT:
        raise ConfigError(f"{name} has a port outside 1 to {MAX_PORT}")
    database = parts.path.lstrip("/")
    if database and not re.fullmatch(r"[0-9]{1,4}", database):
        raise ConfigError(f"{name} names database {database!r}; it must be a number")
    return value


def _redis_prefix(env: Mapping[str, str], name: str) -> str:
    value = _text(env, name, DEFAULT_REDIS_PREFIX)
    if not REDIS_PREFIX_PATTERN.fullmatch(value):
        shown = value if len(value) <= MAX_REDIS_PREFIX_CHARACTERS else value[:20] + "..."
        raise ConfigError(
            f"{name}={shown!r} must be 1 to {MAX_REDIS_PREFIX_CHARACTERS} letters, digits, "
            "'.', '_', '-' or ':' (not at either end)"
        )
    return value


def _api_tokens(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    """A comma-separated list of tokens, or the absolute path of a file of them.

    The file holds one token per line; blank lines and lines starting with
    `#` are skipped. It is read once, at start-up. No message shows a token.
    """
    raw = env.get(name, "").strip()
    if not raw:
        return ()
    if raw.startswith("/"):
        try:
            lines = Path(raw).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as error:
            reason = error.strerror if isinstance(error, OSError) else "not UTF-8 text"
            raise ConfigError(f"{name}: cannot read the token file {raw}: {reason}") from None
        candidates = [line.strip() for line in lines]
        tokens = [line for line in candidates if line and not line.startswith("#")]
        where = f"the token file {raw}"
    else:
        tokens = [item.strip() for item in raw.split(",")]
        where = "the list"
    if not tokens or len(tokens) > MAX_API_TOKENS:
        raise ConfigError(f"{name}: {where} must hold 1 to {MAX_API_TOKENS} tokens")
    for position, token in enumerate(tokens, start=1):
        if not API_TOKEN_PATTERN.fullmatch(token):
            raise ConfigError(
                f"{name}: token {position} of {where} must be 8 to 512 printable characters "
                "without spaces or commas"
            )
    return tuple(dict.fromkeys(tokens))


def _cors_origins(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    """Exact origins (`https://app.example:8443`), comma-separated; no wildcard."""
    raw = env.get(name, "").strip()
    if not raw:
        return ()
    origins = [item.strip() for item in raw.split(",")]
    for origin in origins:
        if not CORS_ORIGIN_PATTERN.fullmatch(origin):
            raise ConfigError(
                f"{name}={origin!r} must be exact origins like https://app.example:8443, "
                "comma-separated (no wildcard, no path)"
            )
    return tuple(dict.fromkeys(origins))
