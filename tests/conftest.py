"""Shared fixtures: stores and apps for every backend, real servers, fresh databases.

`backend` parametrizes a test over the in-memory store, SQLite and (when
BANK_TEST_POSTGRES_URL is set) PostgreSQL; each test gets an empty, migrated
store of its own.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from service import create_app
from service.config import Config
from service.domain import LockMode
from service.schema import upgrade
from service.stores.base import Store
from service.stores.memory import MemoryStore
from service.stores.sql import SqlStore
from tests.support.postgres import fresh_database

BACKENDS = ["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
SQL_BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
TEST_LOCK_TIMEOUT_MS = 2000
ADMIN_TOKEN = "test-admin-token"


@pytest.fixture
def database_url(backend: str, tmp_path: Path) -> Iterator[str]:
    """A migrated, empty database URL for the backend (narrow it with indirect parametrize)."""
    if backend == "memory":
        yield "memory://"
    elif backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'bank.db'}"
        upgrade(url)
        yield url
    else:
        with fresh_database() as url:
            upgrade(url)
            yield url


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    built: Store
    if database_url == "memory://":
        built = MemoryStore(lock_timeout_ms=TEST_LOCK_TIMEOUT_MS)
    else:
        built = SqlStore(database_url, lock_timeout_ms=TEST_LOCK_TIMEOUT_MS, pool_size=8)
    yield built
    built.close()


def make_config(database_url: str, **overrides: object) -> Config:
    settings: dict[str, object] = {
        "database_url": database_url,
        "lock_timeout_ms": TEST_LOCK_TIMEOUT_MS,
        "admin_token": ADMIN_TOKEN,
        "allow_unsafe_modes": True,
        "lock_mode": LockMode.LOCKED,
    }
    settings.update(overrides)
    return Config().with_overrides(**settings)


@pytest.fixture
def app(database_url: str) -> Iterator[Flask]:
    application = create_app(make_config(database_url))
    yield application
    application.extensions["bankrace"].store.close()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()
