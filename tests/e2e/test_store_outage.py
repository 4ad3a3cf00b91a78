"""PostgreSQL going away: /readyz and writes answer 503, and recover without a restart."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import requests
from sqlalchemy.engine import make_url

from service.schema import upgrade
from tests.support.postgres import fresh_database
from tests.support.servers import ServerProcess
from tests.support.tcp_proxy import TcpProxy

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

RECOVERY_DEADLINE_SECONDS = 20


def wait_for_status(url: str, status: int) -> requests.Response:
    """Poll until `url` answers `status` (or fail at the deadline)."""
    deadline = time.monotonic() + RECOVERY_DEADLINE_SECONDS
    while True:
        response = requests.get(url, timeout=10)
        if response.status_code == status or time.monotonic() > deadline:
            return response
        time.sleep(0.1)  # polling interval, not synchronisation


def test_readiness_follows_the_database(tmp_path: Path) -> None:
    """Cut the path to PostgreSQL: 503 store_unavailable with Retry-After; restore: 200 again."""
    with fresh_database() as database_url:
        upgrade(database_url)
        url = make_url(database_url)
        proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432)
        proxied = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
        server = ServerProcess(
            workdir=tmp_path,
            settings={"BANK_DATABASE_URL": proxied, "BANK_LOCK_TIMEOUT_MS": "1000"},
        )
        try:
            server.start()
            account = requests.post(
                f"{server.url}/accounts", json={"owner": "outage", "opening_balance": 5}, timeout=10
            ).json()["id"]

            proxy.cut()
            down = wait_for_status(f"{server.url}/readyz", 503)
            assert down.status_code == 503
            assert down.json()["code"] == "store_unavailable" and "Retry-After" in down.headers
            refused = requests.post(
                f"{server.url}/accounts/{account}/deposit", json={"amount": 1}, timeout=30
            )
            assert refused.status_code == 503 and "Retry-After" in refused.headers
            assert "Traceback" not in refused.text and "psycopg" not in refused.text

            proxy.restore()
            assert wait_for_status(f"{server.url}/readyz", 200).status_code == 200
            deposited = requests.post(
                f"{server.url}/accounts/{account}/deposit", json={"amount": 1}, timeout=30
            )
            assert deposited.status_code == 201
            assert (
                requests.get(f"{server.url}/accounts/{account}", timeout=10).json()["balance"] == 6
            )
        finally:
            server.stop()
            proxy.close()
