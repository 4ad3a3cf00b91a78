"""gunicorn's gthread worker with a deadline on every request head.

gthread waits at most 5 s in a thread for a connection's first byte (then
hands the connection to its poller), but reads the rest of the request
line and headers on a blocking socket with no deadline: a client that
sends part of its headers and stops holds a thread forever, and as many
such clients as threads stop the worker. Here the whole head must arrive
within REQUEST_HEAD_TIMEOUT_SECONDS, counted from the moment the connection
was accepted (or, on a kept-alive connection, from the end of the previous
response or the next byte's arrival, whichever is later). When it runs out
the client gets a 408 problem and the connection is closed. A connection
that waited in the thread pool's queue past its deadline (behind stalled
ones) gets QUEUED_HEAD_GRACE_SECONDS more: a head that arrived meanwhile is
read at once, a stalled one is refused quickly, so stalled clients cannot
queue up in front of good ones for more than one deadline.

After the head, the socket is blocking again as gthread expects; the body
read has its own deadline (`BODY_READ_TIMEOUT_SECONDS` in service/__init__.py).

Closing: gthread closes a connection it will not keep alive "gracefully"
(FIN, then up to 2 s draining until the client closes) on its main thread,
which meanwhile accepts and dispatches nothing; a client that never closes,
such as one refused with 408 here, would freeze the whole worker for 2 s
each. That linger (CLOSE_LINGER_SECONDS) is done in the request's own
thread instead, and the main thread only closes the socket.

This relies on gthread internals (TConn, accept, the two readable callbacks,
handle_request, handle_error) of gunicorn 27; the end-to-end tests in
tests/e2e/test_slow_clients.py fail if a gunicorn upgrade changes them.
"""

from __future__ import annotations

import json
import socket
import time
from contextlib import suppress
from typing import Any, cast

from gunicorn.http.unreader import SocketUnreader
from gunicorn.util import write_nonblock
from gunicorn.workers.gthread import TConn, ThreadWorker

REQUEST_HEAD_TIMEOUT_SECONDS = 10
QUEUED_HEAD_GRACE_SECONDS = 0.5
CLOSE_LINGER_SECONDS = 2.0
CLOSE_DRAIN_MAX_BYTES = 65536


class RequestHeadTimeout(Exception):
    """The request line and headers did not arrive before the deadline."""


class HeadDeadlineUnreader(SocketUnreader):  # type: ignore[misc]
    """Socket reads bounded by a deadline while a request head is being read."""

    deadline: float | None = None
    timed_out = False

    def chunk(self, size_hint: int | None = None) -> bytes:
        if self.deadline is None:
            return cast(bytes, super().chunk(size_hint))
        remaining_seconds = self.deadline - time.monotonic()
        try:
            if remaining_seconds <= 0:
                raise TimeoutError
            self.sock.settimeout(remaining_seconds)
            return cast(bytes, super().chunk(size_hint))
        except TimeoutError:
            self.timed_out = True
            raise RequestHeadTimeout from None
        finally:
            self.sock.setblocking(True)


class HeadBoundedConnection(TConn):  # type: ignore[misc]
    """A gthread connection whose next request head has a deadline."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.head_started = time.monotonic()
        self.lingered = False

    def init(self) -> None:
        """gthread calls this in the worker thread right before reading each request."""
        super().init()
        if self.is_http2:
            return
        if not isinstance(self.parser.unreader, HeadDeadlineUnreader):
            unreader = HeadDeadlineUnreader(self.sock)
            unreader.buf = self.parser.unreader.buf  # keep anything already read ahead
            self.parser.unreader = unreader
        self.parser.unreader.deadline = max(
            self.head_started + REQUEST_HEAD_TIMEOUT_SECONDS,
            time.monotonic() + QUEUED_HEAD_GRACE_SECONDS,
        )

    def head_timed_out(self) -> bool:
        return bool(getattr(getattr(self.parser, "unreader", None), "timed_out", False))

    def head_received(self) -> None:
        if isinstance(getattr(self.parser, "unreader", None), HeadDeadlineUnreader):
            self.parser.unreader.deadline = None

    def restart_head_clock(self) -> None:
        self.head_started = time.monotonic()

    def linger_before_close(self, linger_seconds: float = CLOSE_LINGER_SECONDS) -> None:
        """In the request's thread: FIN, then drain until the client closes or time runs out."""
        deadline = time.monotonic() + linger_seconds
        drained_bytes = 0
        with suppress(OSError):  # TimeoutError included: the client is gone or silent
            self.sock.shutdown(socket.SHUT_WR)
            while drained_bytes < CLOSE_DRAIN_MAX_BYTES:
                remaining_seconds = deadline - time.monotonic()
                if remaining_seconds <= 0:
                    break
                self.sock.settimeout(remaining_seconds)
                chunk = self.sock.recv(4096)
                if not chunk:
                    break
                drained_bytes += len(chunk)
        self.lingered = True

    def close(self, graceful: bool = False) -> None:
        super().close(graceful=graceful and not self.lingered)


class HeadBoundedThreadWorker(ThreadWorker):  # type: ignore[misc]
    """gthread, with `HeadBoundedConnection`s and a 408 when a head is late."""

    def set_accept_enabled(self, enabled: bool) -> None:
        super().set_accept_enabled(enabled)
        if not enabled and not self.alive:
            # Stopping: close the listeners now, so a new connection is refused at
            # once instead of waiting in the backlog to be reset when the drain ends.
            for listener in self.sockets:
                listener.close()

    def accept(self, listener: Any) -> None:
        # ThreadWorker.accept with this module's connection class.
        try:
            client_socket, client_address = listener.accept()
        except BlockingIOError:
            return  # another worker took it
        except ConnectionAbortedError:
            return
        self.nr_conns += 1
        client_socket.setblocking(True)
        connection = HeadBoundedConnection(
            self.cfg, client_socket, client_address, listener.getsockname()
        )
        self.enqueue_req(connection)

    def handle(self, connection: HeadBoundedConnection) -> Any:
        result = super().handle(connection)
        if result is False:  # gthread will close it: linger here, not on its main thread
            # A late head was read to its last byte: nothing to drain, and no more
            # thread time for a client that already had its deadline.
            late = connection.head_timed_out()
            connection.linger_before_close(0 if late else CLOSE_LINGER_SECONDS)
        return result

    def on_client_socket_readable(self, connection: HeadBoundedConnection, client: Any) -> None:
        connection.restart_head_clock()  # a kept-alive connection's next request begins
        super().on_client_socket_readable(connection, client)

    def on_pending_socket_readable(self, connection: HeadBoundedConnection, client: Any) -> None:
        connection.restart_head_clock()  # its first byte came after gthread's wait
        super().on_pending_socket_readable(connection, client)

    def handle_request(self, request: Any, connection: HeadBoundedConnection) -> bool:
        connection.head_received()
        try:
            return bool(super().handle_request(request, connection))
        finally:
            connection.restart_head_clock()  # for a request pipelined behind this one

    def handle_error(self, request: Any, client: Any, address: Any, error: BaseException) -> None:
        if not isinstance(error, RequestHeadTimeout):
            super().handle_error(request, client, address, error)
            return
        self.log.warning(
            "Request head from %s not received within %s s: answered 408, connection closed",
            address[0] if isinstance(address, tuple) else "a unix socket",
            REQUEST_HEAD_TIMEOUT_SECONDS,
        )
        with suppress(OSError):  # the client is gone; the connection is closed either way
            write_nonblock(client, _request_timeout_response())


def _request_timeout_response() -> bytes:
    """The service's 408 problem (DESIGN §3), written before any request exists."""
    body = json.dumps(
        {
            "type": "urn:bankrace:problem:request_timeout",
            "title": "Request timeout",
            "status": 408,
            "detail": f"the request head did not arrive within {REQUEST_HEAD_TIMEOUT_SECONDS} s",
            "code": "request_timeout",
            "instance": None,
        }
    ).encode()
    head = (
        "HTTP/1.1 408 Request Timeout\r\n"
        "Connection: close\r\n"
        "Content-Type: application/problem+json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("latin-1") + body
