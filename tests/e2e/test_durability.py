"""Invariant 4: every operation acknowledged with a 2xx survives `kill -9` and a restart."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests

from tests.e2e.conftest import StartServer
from tests.support.load import audit_of, balance_of, open_account

pytestmark = pytest.mark.e2e

CLIENTS = 8
DEPOSITS_PER_CLIENT = 60
KILL_AFTER_ACKNOWLEDGED = 150


def test_acknowledged_deposits_survive_sigkill(start_server: StartServer) -> None:
    """Kill the whole server mid-load; after restart every acknowledged deposit is there."""
    server = start_server(lock_mode="locked")
    account = open_account(server.url, 0)
    acknowledged: list[dict[str, Any]] = []
    guard = threading.Lock()
    enough = threading.Event()

    def client() -> None:
        with requests.Session() as session:
            for _ in range(DEPOSITS_PER_CLIENT):
                try:
                    response = session.post(
                        f"{server.url}/accounts/{account}/deposit", json={"amount": 1}, timeout=10
                    )
                except requests.RequestException:
                    return  # the server is gone: this deposit's fate is unknown, not acknowledged
                if response.status_code == 201:
                    with guard:
                        acknowledged.append(response.json())
                        if len(acknowledged) >= KILL_AFTER_ACKNOWLEDGED:
                            enough.set()

    with ThreadPoolExecutor(max_workers=CLIENTS) as pool:
        futures = [pool.submit(client) for _ in range(CLIENTS)]
        assert enough.wait(timeout=60), "the server never acknowledged enough deposits"
        server.kill()  # SIGKILL to master and workers while deposits are in flight
        for future in futures:
            future.result()

    with guard:
        survivors_expected = list(acknowledged)
    assert len(survivors_expected) >= KILL_AFTER_ACKNOWLEDGED
    server.start()
    for entry in survivors_expected:
        stored = requests.get(f"{server.url}/transactions/{entry['id']}", timeout=10)
        assert stored.status_code == 200, entry
        assert stored.json() == entry
    # Deposits in flight at the kill may have committed without an answer: the
    # balance may exceed what was acknowledged, never fall short of it.
    assert balance_of(server.url, account) >= len(survivors_expected)
    assert audit_of(server.url)["consistent"] is True
