"""An operator can switch out of `locked` while SQLite is saturated by locked writes.

With a 20 ms race window, `locked` holds SQLite's one write lock for the whole
window of every request, back to back. A `PUT /mode` is a write too: it must
queue with them and be answered, not poll for the lock until it gives up with
503 (which is what it did when it bypassed the writers' queue).
"""

from __future__ import annotations

import threading
import time

import pytest
import requests

from tests.e2e.conftest import E2E_ADMIN_TOKEN, StartServer
from tests.support.load import NEW_CONNECTION_PER_REQUEST, open_account

pytestmark = pytest.mark.e2e

CLIENTS = 20
SWITCHES = 3
LOAD_DEADLINE_SECONDS = 60


@pytest.mark.parametrize("server_backend", ["sqlite"], indirect=True)
def test_put_mode_is_answered_while_locked_writes_saturate_sqlite(
    start_server: StartServer,
) -> None:
    """Three switches locked -> atomic -> locked under 20 clients: every PUT answers 200."""
    server = start_server(lock_mode="locked", race_window_ms=20, lock_timeout_ms=5000)
    account = open_account(server.url, 0)
    stop = threading.Event()
    load_deadline = time.monotonic() + LOAD_DEADLINE_SECONDS

    def deposit_until_stopped() -> None:
        while not stop.is_set() and time.monotonic() < load_deadline:
            requests.post(
                f"{server.url}/accounts/{account}/deposit",
                json={"amount": 1},
                headers=NEW_CONNECTION_PER_REQUEST,
                timeout=30,
            )

    clients = [threading.Thread(target=deposit_until_stopped) for _ in range(CLIENTS)]
    for client in clients:
        client.start()
    statuses: list[int] = []
    try:
        for target in ["atomic", "locked"] * SWITCHES:
            answer = requests.put(
                f"{server.url}/mode",
                json={"lock_mode": target, "race_window_ms": 20},
                headers={"Authorization": f"Bearer {E2E_ADMIN_TOKEN}"},
                timeout=30,
            )
            statuses.append(answer.status_code)
    finally:
        stop.set()
        for client in clients:
            client.join(LOAD_DEADLINE_SECONDS)
    print(f"PUT /mode under load: {statuses}")
    assert statuses == [200] * (2 * SWITCHES)
    audit = requests.get(f"{server.url}/accounts/{account}/audit", timeout=30).json()
    assert audit["consistent"] is True
