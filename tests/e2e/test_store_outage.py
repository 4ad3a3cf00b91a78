"""PostgreSQL going away: /readyz and writes answer 503, and recover without a restart."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests

from tests.support.postgres import server_behind_proxy
from tests.support.servers import wait_for_status

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

RECOVERY_DEADLINE_SECONDS = 20


def test_readiness_follows_the_database(tmp_path: Path) -> None:
    """Cut the path to PostgreSQL: 503 store_unavailable with Retry-After; restore: 200 again."""
    with server_behind_proxy(tmp_path, {"BANK_LOCK_TIMEOUT_MS": "1000"}) as (server, proxy):
        account = requests.post(
            f"{server.url}/accounts", json={"owner": "outage", "opening_balance": 5}, timeout=10
        ).json()["id"]

        proxy.cut()
        down = wait_for_status(
            f"{server.url}/readyz", 503, deadline_seconds=RECOVERY_DEADLINE_SECONDS
        )
        assert down.status_code == 503
        assert down.json()["code"] == "store_unavailable" and "Retry-After" in down.headers
        refused = requests.post(
            f"{server.url}/accounts/{account}/deposit", json={"amount": 1}, timeout=30
        )
        assert refused.status_code == 503 and "Retry-After" in refused.headers
        assert "Traceback" not in refused.text and "psycopg" not in refused.text

        proxy.restore()
        up = wait_for_status(
            f"{server.url}/readyz", 200, deadline_seconds=RECOVERY_DEADLINE_SECONDS
        )
        assert up.status_code == 200
        deposited = requests.post(
            f"{server.url}/accounts/{account}/deposit", json={"amount": 1}, timeout=30
        )
        assert deposited.status_code == 201
        assert requests.get(f"{server.url}/accounts/{account}", timeout=10).json()["balance"] == 6
