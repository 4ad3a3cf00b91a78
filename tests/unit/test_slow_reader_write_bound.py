"""An answer's writes end within WRITE_TIMEOUT_SECONDS in all, even for a client that reads slowly.

The kernel's send timeout (SO_SNDTIMEO, `bound_sends`) ends a send only when
it makes no progress for that long. A client that left earlier answers
unread (the socket's buffer is full) and then reads a few KiB now and then
keeps every send making progress, so the kernel alone would let it hold a
request thread for as long as it keeps reading. The worker bounds the whole
answer: its writes fail (gthread closes the connection on the OSError) once
WRITE_TIMEOUT_SECONDS have passed since the first write that had to wait.

Real connected sockets (a Unix socket pair and TCP over loopback), the
worker's own response class; the bound is shortened to keep the test fast.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from gunicorn.config import Config as GunicornConfig
from gunicorn.http import wsgi

from service import gunicorn_internals as internals
from service import gunicorn_worker
from service.gunicorn_worker import HeadBoundedConnection, WorkerResponse

WRITE_BOUND_SECONDS = 0.5
MARGIN_SECONDS = 1.0
# The slow client: this many bytes at a time, one read every READ_PACE_SECONDS
# (well within the send timeout, so the kernel always sees progress), for up
# to SLOW_READER_SECONDS (long past the bound).
READ_STEP_BYTES = 2048
READ_PACE_SECONDS = 0.1
SLOW_READER_SECONDS = 4 * (WRITE_BOUND_SECONDS + MARGIN_SECONDS)
ANSWER_BYTES = 60 * 1024  # an answer of this service is a few hundred bytes to a few KiB
BUFFER_BYTES = 8192  # both sides' socket buffers, so little is held in flight


def _tcp_pair() -> tuple[socket.socket, socket.socket]:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, BUFFER_BYTES)
        client.connect(listener.getsockname())
        server, _ = listener.accept()
    return server, client


def _unix_pair() -> tuple[socket.socket, socket.socket]:
    return socket.socketpair()


@pytest.fixture(params=[_unix_pair, _tcp_pair], ids=["unix", "tcp"])
def connected(request: pytest.FixtureRequest) -> Iterator[tuple[socket.socket, socket.socket]]:
    server, client = request.param()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, BUFFER_BYTES)
    yield server, client
    server.close()
    client.close()


def _response_to_a_get(
    server: socket.socket, client: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> Any:
    """The worker's response to a GET that `client` sent on `server`, as gthread builds it."""
    monkeypatch.setattr(wsgi, "Response", wsgi.Response)  # restored after the test
    internals.install_response_class(WorkerResponse)
    connection = HeadBoundedConnection(GunicornConfig(), server, ("127.0.0.1", 1), ("127.0.0.1", 2))
    client.sendall(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
    connection.init()
    request = next(connection.parser)
    connection.head_received()
    response, _ = wsgi.create(request, server, connection.client, connection.server, connection.cfg)
    return response


def _fill_send_buffer(server: socket.socket) -> None:
    """Earlier answers the client left unread: nothing more fits until it reads."""
    while True:
        try:
            server.send(b"e" * 4096, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return


def _read_exactly(client: socket.socket, count: int) -> int:
    """Read `count` bytes, fewer only if none come for a while (the writer gave up)."""
    view = memoryview(bytearray(count))
    got = 0
    while got < count:
        try:
            read = client.recv_into(view[got:])
        except TimeoutError:
            break
        if not read:
            break
        got += read
    return got


@pytest.mark.parametrize("chunked", [False, True], ids=["known length", "chunked"])
def test_a_slow_reader_cannot_hold_the_thread_past_the_write_bound(
    connected: tuple[socket.socket, socket.socket],
    monkeypatch: pytest.MonkeyPatch,
    chunked: bool,
) -> None:
    server, client = connected
    monkeypatch.setattr(gunicorn_worker, "WRITE_TIMEOUT_SECONDS", WRITE_BOUND_SECONDS)
    gunicorn_worker.bound_sends(server)  # as the worker's accept does
    response = _response_to_a_get(server, client, monkeypatch)
    headers = [] if chunked else [("Content-Length", str(ANSWER_BYTES))]
    response.start_response("200 OK", headers)
    _fill_send_buffer(server)

    outcome: dict[str, Any] = {}

    def answer() -> None:
        started = time.monotonic()
        try:
            response.write(b"x" * ANSWER_BYTES)
            response.close()
        except OSError as error:  # what gthread closes the connection on
            outcome["error"] = error
        outcome["seconds"] = time.monotonic() - started

    writer = threading.Thread(target=answer)
    writer.start()
    client.settimeout(2 * READ_PACE_SECONDS)
    read_bytes = 0
    reading_until = time.monotonic() + SLOW_READER_SECONDS
    while writer.is_alive() and time.monotonic() < reading_until:
        read_bytes += _read_exactly(client, READ_STEP_BYTES)
        writer.join(READ_PACE_SECONDS)  # the client's pace; ends early when the writer does
    writer.join(WRITE_BOUND_SECONDS + 2 * MARGIN_SECONDS)
    assert not writer.is_alive(), "the answer's write still blocks after the slow reader stopped"

    assert read_bytes > 0  # it did read: a slow client, not a stopped one
    assert "error" in outcome, (
        f"the slow reader got the whole answer after {outcome['seconds']:.1f} s "
        f"(bound {WRITE_BOUND_SECONDS} s): the write never timed out"
    )
    assert outcome["seconds"] <= WRITE_BOUND_SECONDS + MARGIN_SECONDS
