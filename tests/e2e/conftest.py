"""Real servers for end-to-end tests: `bankrace serve` under gunicorn, per backend."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from service.schema import upgrade
from tests.support.postgres import fresh_database
from tests.support.redis_service import client_for, redis_url_for_database
from tests.support.servers import ServerProcess

E2E_ADMIN_TOKEN = "e2e-admin-token"
StartServer = Callable[..., ServerProcess]
REDIS_MODES = frozenset({"redis-lock", "fenced"})
# Database 13 and 14 belong to tests/e2e/test_distributed_locks.py.
E2E_REDIS_DATABASE = 12


def redis_settings(lock_mode: str) -> dict[str, str]:
    """BANK_REDIS_URL of an emptied test database, for a server starting in a Redis mode.

    Emptied so that no lock left by an earlier test's killed worker delays
    this one; a restart of the same server keeps it (its tokens and locks).
    """
    if lock_mode not in REDIS_MODES:
        return {}
    url = redis_url_for_database(E2E_REDIS_DATABASE)
    client = client_for(url)
    try:
        client.flushdb()
    finally:
        client.close()
    return {"BANK_REDIS_URL": url}


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def server_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def server_database_url(server_backend: str, tmp_path: Path) -> Iterator[str]:
    if server_backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'bank.db'}"
    else:
        with fresh_database() as url:
            upgrade(url)
            yield url


@pytest.fixture
def start_server(tmp_path: Path, server_database_url: str) -> Iterator[StartServer]:
    """Start `bankrace serve` with BANK_* settings; every server is stopped at teardown."""
    with ExitStack() as stack:

        def start(**settings: object) -> ServerProcess:
            environment = {
                "BANK_DATABASE_URL": server_database_url,
                "BANK_ALLOW_UNSAFE_MODES": "1",
                "BANK_ADMIN_TOKEN": E2E_ADMIN_TOKEN,
                "BANK_WORKERS": "2",
                "BANK_THREADS": "8",
            }
            environment.update(
                {f"BANK_{key.upper()}": str(value) for key, value in settings.items()}
            )
            environment.update(redis_settings(str(settings.get("lock_mode", ""))))
            server = ServerProcess(workdir=tmp_path, settings=environment)
            stack.callback(server.stop)
            return server.start()

        yield start
