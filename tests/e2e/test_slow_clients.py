"""Clients that stall while sending a request head cannot hold gunicorn's threads.

gthread reads a request head with a blocking socket: a client that sends
part of its headers and then nothing held a thread forever, and as many such
clients as threads took the service down. The worker of
service/gunicorn_worker.py gives every head a deadline, answers 408 and
closes the connection.
"""

from __future__ import annotations

import http.client
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from service.gunicorn_worker import REQUEST_TIMEOUT_SECONDS
from tests.support.servers import ServerProcess

pytestmark = pytest.mark.e2e

THREADS = 2
STALLED_CONNECTIONS = 2 * THREADS + 1
STALLED_HEAD = b"POST /accounts HTTP/1.1\r\nHost: x\r\n"
MARGIN_SECONDS = 10
BOUND_SECONDS = REQUEST_TIMEOUT_SECONDS + MARGIN_SECONDS


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    # The normal request waits a head timeout behind the stallers: past the default
    # queue-wait bound, it would be shed (503 overloaded, tests/e2e/test_overload.py).
    # This test is about head deadlines, so its bound is far beyond that wait.
    settings = {
        "BANK_WORKERS": "1",
        "BANK_THREADS": str(THREADS),
        "BANK_QUEUE_WAIT_MAX_MS": str((BOUND_SECONDS + MARGIN_SECONDS) * 1000),
    }
    with ServerProcess(workdir=tmp_path, settings=settings) as started:
        yield started


def read_until_closed(connection: socket.socket, deadline: float) -> bytes:
    """Everything the server sends until it closes (fails at the deadline)."""
    received = b""
    while True:
        connection.settimeout(max(deadline - time.monotonic(), 0.001))
        try:
            chunk = connection.recv(65536)
        except TimeoutError:
            pytest.fail(f"a stalled connection was still open after {BOUND_SECONDS} s")
        if not chunk:
            return received
        received += chunk


def test_stalled_heads_are_closed_and_others_are_served(server: ServerProcess) -> None:
    """More head-stallers than threads: a normal request is served; each gets 408 and is closed."""
    stalled = [
        socket.create_connection(("127.0.0.1", server.port)) for _ in range(STALLED_CONNECTIONS)
    ]
    try:
        for connection in stalled:
            connection.sendall(STALLED_HEAD)
        started = time.monotonic()
        try:
            served = requests.get(f"{server.url}/accounts", timeout=BOUND_SECONDS)
        except requests.Timeout:
            pytest.fail(
                f"{STALLED_CONNECTIONS} stalled clients held every thread past {BOUND_SECONDS} s"
            )
        served_after = time.monotonic() - started
        assert served.status_code == 200
        answers = [read_until_closed(connection, started + BOUND_SECONDS) for connection in stalled]
        closed_after = time.monotonic() - started
    finally:
        for connection in stalled:
            connection.close()
    print(
        f"{STALLED_CONNECTIONS} stalled heads, {THREADS} threads: a normal request served after "
        f"{served_after:.1f} s, every staller closed after {closed_after:.1f} s "
        f"(head timeout {REQUEST_TIMEOUT_SECONDS} s)"
    )
    for answer in answers:
        assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
        assert b"application/problem+json" in answer and b'"code": "request_timeout"' in answer


def test_keep_alive_and_pipelining_still_work(server: ServerProcess) -> None:
    """Two requests on one kept-alive connection, then two pipelined in one write, are answered."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        connection.request("GET", "/healthz")
        first = connection.getresponse()
        first.read()
        assert connection.sock is not None
        local_address = connection.sock.getsockname()
        connection.request("GET", "/accounts")
        second = connection.getresponse()
        second.read()
        assert (first.status, second.status) == (200, 200)
        assert connection.sock.getsockname() == local_address  # the same TCP connection
    finally:
        connection.close()
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as pipelined:
        request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
        pipelined.sendall(request + request[:-2] + b"Connection: close\r\n\r\n")
        answers = read_until_closed(pipelined, time.monotonic() + BOUND_SECONDS)
    assert answers.count(b"HTTP/1.1 200 ") == 2, answers
