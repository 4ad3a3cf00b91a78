"""A database network that dies silently: a request is answered 503 within a bound.

Packet loss (iptables on the proxy's port, both directions) is a dead
network: no FIN, no RST, nothing acknowledged. The service's kernel notices
through TCP keepalive and the user timeout (service/stores/engines.py), so a
request is answered 503 within a bound instead of holding a thread for the
kernel's default 15 minutes of retransmissions or 2 hours of keepalive.
(A peer that stays alive but stops answering is not bounded on the client;
see the engines module docstring.)
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from service.stores.engines import CONNECT_TIMEOUT_SECONDS, DEAD_PEER_NOTICED_SECONDS
from tests.support.packet_loss import dropped_packets
from tests.support.postgres import server_behind_proxy
from tests.support.servers import ServerProcess, wait_for_status
from tests.support.tcp_proxy import TcpProxy

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

# The write's pooled connection fails its first statement (user timeout), one
# reconnect times out, and the mode may be re-read first: a few bounds in a row.
ANSWER_DEADLINE_SECONDS = 3 * (DEAD_PEER_NOTICED_SECONDS + CONNECT_TIMEOUT_SECONDS)
RECOVERY_DEADLINE_SECONDS = 30


@pytest.fixture
def proxied_server(tmp_path: Path) -> Iterator[tuple[ServerProcess, TcpProxy]]:
    """One worker with two threads whose only path to PostgreSQL is a TcpProxy."""
    settings = {"BANK_WORKERS": "1", "BANK_THREADS": "2", "BANK_LOCK_TIMEOUT_MS": "1000"}
    with server_behind_proxy(tmp_path, settings) as started:
        yield started


def open_account(server: ServerProcess, opening_balance: int) -> int:
    created = requests.post(
        f"{server.url}/accounts",
        json={"owner": "dead-network", "opening_balance": opening_balance},
        timeout=30,
    )
    assert created.status_code == 201, created.text
    return int(created.json()["id"])


def deposit(server: ServerProcess, account: int, timeout_seconds: float) -> requests.Response:
    return requests.post(
        f"{server.url}/accounts/{account}/deposit", json={"amount": 1}, timeout=timeout_seconds
    )


def test_silent_packet_loss_is_answered_503_within_the_bound(
    proxied_server: tuple[ServerProcess, TcpProxy],
) -> None:
    """Every packet to and from PostgreSQL vanishes: a write gets 503, not a hung thread."""
    server, proxy = proxied_server
    account = open_account(server, 10)
    with dropped_packets(proxy.port):
        started = time.monotonic()
        try:
            refused = deposit(server, account, ANSWER_DEADLINE_SECONDS)
        except requests.Timeout:
            pytest.fail(f"no answer within {ANSWER_DEADLINE_SECONDS} s: the thread hangs")
        waited_seconds = time.monotonic() - started
    print(
        f"dead network: {refused.status_code} after {waited_seconds:.1f} s "
        f"(dead peer noticed within {DEAD_PEER_NOTICED_SECONDS} s, "
        f"connect timeout {CONNECT_TIMEOUT_SECONDS} s)"
    )
    assert refused.status_code == 503, refused.text
    assert refused.json()["code"] == "store_unavailable" and "Retry-After" in refused.headers
    ready = wait_for_status(
        f"{server.url}/readyz",
        200,
        deadline_seconds=RECOVERY_DEADLINE_SECONDS,
        request_timeout_seconds=30,
    )
    assert ready.status_code == 200, "the service never became ready again"
    assert deposit(server, account, 30).status_code == 201
    balance = requests.get(f"{server.url}/accounts/{account}", timeout=30).json()["balance"]
    assert balance == 11  # the refused deposit changed nothing
