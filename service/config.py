"""Configuration: the only module that reads the environment.

`Config.from_env()` validates every BANK_* variable of DESIGN §4 and raises
`ConfigError` with one line naming the first bad variable, so a bad value
stops start-up instead of surfacing later as a 500.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace

from service.domain import (
    MAX_RACE_WINDOW_MS,
    LockMode,
    ModeSetting,
)

DEFAULT_DATABASE_URL = "sqlite:///var/bank.db"
MEMORY_DATABASE_URL = "memory://"
DEFAULT_BIND = "127.0.0.1:8000"
DEFAULT_WORKERS = 2
DEFAULT_THREADS = 8
MAX_WORKERS = 64
MAX_THREADS = 256
DEFAULT_LOCK_TIMEOUT_MS = 5000
MIN_LOCK_TIMEOUT_MS = 10
MAX_LOCK_TIMEOUT_MS = 60_000
TRANSFER_LOCK_ORDERS = ("sorted", "request")
BIND_PATTERN = re.compile(r"(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.\-]+):\d{1,5}|unix:/\S+")


class ConfigError(ValueError):
    """One bad setting; the message names the variable."""


@dataclass(frozen=True)
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

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Config:
        env = os.environ if environ is None else environ
        config = cls(
            database_url=_text(env, "BANK_DATABASE_URL", DEFAULT_DATABASE_URL),
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
        if self.admin_token is not None and len(self.admin_token) < 8:
            raise ConfigError("BANK_ADMIN_TOKEN must be at least 8 characters")
        if not (self.is_memory or "://" in self.database_url):
            raise ConfigError(
                f"BANK_DATABASE_URL={self.database_url!r} is not a database URL "
                "(try sqlite:///var/bank.db, postgresql+psycopg://..., or memory://)"
            )

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


def _text(env: Mapping[str, str], name: str, default: str) -> str:
    value = env.get(name, "").strip()
    return value or default


def _integer(env: Mapping[str, str], name: str, default: int, minimum: int, maximum: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    if not re.fullmatch(r"\d+", raw):
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
    if not BIND_PATTERN.fullmatch(value):
        raise ConfigError(f"{name}={value!r} must be HOST:PORT (e.g. 127.0.0.1:8000)")
    return value
