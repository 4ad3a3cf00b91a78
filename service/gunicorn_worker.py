"""gunicorn's gthread worker with a deadline on every request, head and body.

gthread waits at most 5 s in a thread for a connection's first byte (then
hands the connection to its poller), but reads the rest of the request
line and headers on a blocking socket with no deadline: a client that
sends part of its headers and stops holds a thread forever, and as many
such clients as threads stop the worker. A per-read timeout is no cure: a
client sending a byte every few seconds never trips it (a 13-byte body
dribbled that way was run and answered 201 after 23 s). Here the head and
the whole body must arrive within REQUEST_TIMEOUT_SECONDS, one deadline
counted from the moment the connection was accepted (or, on a kept-alive
connection, from the end of the previous response or the next byte's
arrival, whichever is later); every socket read of the request waits at
most for what is left of it. A late head gets a 408 problem written here;
a late body makes the application's read fail (`RequestBodyTimeout`, a
TimeoutError), which it answers 408 having changed nothing
(service/api/parsing.py); either way the connection is closed. A
connection that waited in the thread pool's queue past its deadline (behind
stalled ones) gets QUEUED_HEAD_GRACE_SECONDS more: a head that arrived
meanwhile is read at once, a stalled one is refused quickly, so stalled
clients cannot queue up in front of good ones for more than one deadline.

Closing: gthread closes a connection it will not keep alive "gracefully"
(FIN, then up to 2 s draining until the client closes) on its main thread,
which meanwhile accepts and dispatches nothing; a client that never closes,
such as one refused with 408 here, would freeze the whole worker for 2 s
each. That linger (CLOSE_LINGER_SECONDS) is done in the request's own
thread instead, and the main thread only closes the socket.

Overload: every request joins the thread pool's queue through
`enqueue_req`, where an `AdmissionQueue` gives it a ticket, and when a
thread takes it (`handle`) the ticket becomes a verdict: serve it, or answer
503 `overloaded` without calling the application because too many were
waiting or it waited too long (service/overload.py, docs/overload.md). The
application is wrapped in the `OverloadGate` that answers the refusals.
The wait bound must hold even while no thread comes free (every thread
held by slow requests, up to their own bounds): the main loop wakes when
the oldest waiting request's time runs out, takes it back from the pool's
queue (`Future.cancel`, which fails once a thread has it) and hands it to
the refusal thread (`shed_overdue`).

No banner: gunicorn writes `Server: gunicorn` on every response it frames.
`WorkerResponse` leaves the header out; gunicorn's own error pages
(400, 431, ...) never had one, nor do the 408 and 503 written here.

This relies on gthread internals of gunicorn 27: every one is imported or
replaced through service/gunicorn_internals.py, which lists them, and
tests/unit/test_gunicorn_internals.py fails, naming what to re-check, when a
gunicorn release changes one (docs/worker.md: why the worker stays, and the
upgrade procedure); the end-to-end tests in tests/e2e/test_slow_clients.py
and tests/e2e/test_overload.py check the behaviour.
"""

from __future__ import annotations

import json
import socket
import time
from collections import deque
from concurrent import futures
from contextlib import suppress
from functools import partial
from typing import Any, cast

from service.config import Config
from service.gunicorn_internals import (
    DEFER,
    BaseSocketUnreader,
    GthreadConnection,
    GthreadWorker,
    GunicornLogger,
    HttpResponse,
    install_error_writer,
    install_response_class,
    to_bytestring,
    write,
    write_nonblock,
)
from service.http_problems import write_problem
from service.overload import (
    SERVE_AT_ONCE,
    AdmissionQueue,
    OverloadGate,
    OverloadLimits,
    Ticket,
    WsgiApp,
)
from service.single_process import wait_for_the_previous_worker

# The head and the whole body of a request (DESIGN §3, 408 request_timeout).
REQUEST_TIMEOUT_SECONDS = 10
QUEUED_HEAD_GRACE_SECONDS = 0.5
CLOSE_LINGER_SECONDS = 2.0
# A request that ran out of time may still be sending: a short wait for its
# client to read the 408 and close, so the close is not a reset that could
# destroy the answer in flight.
TIMED_OUT_LINGER_SECONDS = 0.5
# Threads that answer 503 overloaded, apart from the pool that serves: a refusal
# never waits behind a request being served, nor a served one behind refusals.
REFUSAL_THREADS = 1
# Each socket wait of a refusal (head, body drain, linger) ends this soon, so
# a stalled client holds the refusal thread briefly.
REFUSAL_IO_SECONDS = 0.5
# After each refusal the refusal thread rests as long as the refusal took (up to
# a cap): refusing takes at most about half of its time, so that clients retrying
# at once cannot take the worker's CPU from the requests it serves (measured:
# under 256 connections retrying at once, twice the deposits served).
REFUSAL_REST_RATIO = 1.0
REFUSAL_REST_MAX_SECONDS = 0.005
# How long the main loop may sleep when no request waits for a thread (gthread's own).
IDLE_SHED_CHECK_SECONDS = 1.0
# A new lone worker waits for the previous one at most its graceful timeout plus this.
HANDOVER_MARGIN_SECONDS = 5
CLOSE_DRAIN_MAX_BYTES = 65536


class RequestHeadTimeout(Exception):
    """The request line and headers did not arrive before the deadline.

    Not an OSError: gthread would take it for a socket failure and close
    without a word, where `handle_error` answers 408.
    """


class RequestBodyTimeout(TimeoutError):
    """The body did not arrive in full before the request's deadline.

    Raised to the application from its body read, as a socket timeout is:
    it answers 408 and changes nothing.
    """


class DeadlineUnreader(BaseSocketUnreader):  # type: ignore[misc]
    """Socket reads bounded by one deadline while a request's head and body are read."""

    deadline: float | None = None
    reading_body = False
    timed_out = False

    def chunk(self, size_hint: int | None = None) -> bytes:
        if self.deadline is None:
            return cast(bytes, super().chunk(size_hint))
        remaining_seconds = self.deadline - time.monotonic()
        try:
            if remaining_seconds <= 0:
                raise TimeoutError
            # One wait for whatever is left of the deadline: a byte arriving wakes
            # the thread, but never extends the request's time.
            self.sock.settimeout(remaining_seconds)
            return cast(bytes, super().chunk(size_hint))
        except TimeoutError:
            self.timed_out = True
            if self.reading_body:
                raise RequestBodyTimeout from None
            raise RequestHeadTimeout from None
        finally:
            self.sock.setblocking(True)


class WorkerResponse(HttpResponse):  # type: ignore[misc]
    """gunicorn's HTTP/1 response, without a banner, closing when the application says so.

    gunicorn writes `Server: gunicorn` on every response and drops the
    application's `Connection` header; here the banner goes, and an
    application's `Connection: close` (a refused request, service/overload.py)
    closes the connection after the response, as does a body that ran out of
    time (the rest of it may still be coming: where the next request starts
    is unknown).
    """

    headers_sent: bool  # gunicorn's own attribute, set in its __init__ (typed for mypy)

    def should_close(self) -> bool:
        timed_out = getattr(getattr(self.req, "unreader", None), "timed_out", False)
        return bool(super().should_close()) or timed_out is True

    def default_headers(self) -> list[str]:
        headers = cast(list[str], super().default_headers())
        return [line for line in headers if not line.lower().startswith("server:")]

    def process_headers(self, headers: list[tuple[str, str]]) -> None:
        super().process_headers(headers)
        for name, value in headers:
            if name.lower() == "connection" and value.strip(" \t").lower() == "close":
                self.force_close()

    def write(self, arg: bytes) -> None:
        """The head and the first body chunk in one socket write.

        gunicorn sends the head, then the body, as two writes; for the small
        answers of this service that second system call was a tenth of a
        request's CPU (docs/performance.md). Only a known-length, unchunked
        answer is joined; anything else goes gunicorn's way.
        """
        if (
            self.headers_sent
            or self.chunked
            or self._omits_body
            or self.response_length is None
            or not isinstance(arg, bytes)
        ):
            super().write(arg)
            return
        lines = self.default_headers()
        lines.extend(f"{name}: {value}\r\n" for name, value in self.headers)
        head = to_bytestring("".join(lines) + "\r\n", "latin-1")
        self.headers_sent = True
        body = arg[: self.response_length]  # never more than Content-Length, as gunicorn
        self.sent += len(body)
        write(self.sock, head + body)


class QuietAccessLogger(GunicornLogger):  # type: ignore[misc]
    """gunicorn's logger without its access log, which the service writes itself.

    With a `logconfig_dict`, gunicorn formats an access-log record for every
    response (an eighth of the CPU time of a refused request, measured) even
    though service/logs.py sends that logger nowhere.
    """

    @property
    def access_log_enabled(self) -> bool:
        return False

    def access(self, *arguments: Any) -> None:
        return None


class HeadBoundedConnection(GthreadConnection):  # type: ignore[misc]
    """A gthread connection whose next request (head and body) has a deadline."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.head_started = time.monotonic()
        self.lingered = False
        self.ticket: Ticket | None = None  # its place in the thread pool's queue
        self.verdict = SERVE_AT_ONCE
        self.refusing = False  # its verdict was to shed it: every socket wait is short
        self.in_refusal_pool = False

    def init(self) -> None:
        """gthread calls this in the worker thread right before reading each request."""
        super().init()
        if self.is_http2:
            return
        if not isinstance(self.parser.unreader, DeadlineUnreader):
            unreader = DeadlineUnreader(self.sock)
            unreader.buf = self.parser.unreader.buf  # keep anything already read ahead
            self.parser.unreader = unreader
        self.parser.unreader.reading_body = False
        self.parser.unreader.deadline = max(
            self.head_started + REQUEST_TIMEOUT_SECONDS,
            time.monotonic() + QUEUED_HEAD_GRACE_SECONDS,
        )
        if self.refusing:
            self.parser.unreader.deadline = time.monotonic() + REFUSAL_IO_SECONDS

    def timed_out(self) -> bool:
        return bool(getattr(getattr(self.parser, "unreader", None), "timed_out", False))

    def head_received(self) -> None:
        """The body's reads keep the head's deadline (and a late one is a RequestBodyTimeout)."""
        if isinstance(getattr(self.parser, "unreader", None), DeadlineUnreader):
            self.parser.unreader.reading_body = True

    def request_done(self) -> None:
        """The application returned: gthread's own drain of an unread body bounds itself."""
        if isinstance(getattr(self.parser, "unreader", None), DeadlineUnreader):
            self.parser.unreader.deadline = None
        self.restart_head_clock()  # for a request pipelined behind this one

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


class HeadBoundedThreadWorker(GthreadWorker):  # type: ignore[misc]
    """gthread, with `HeadBoundedConnection`s, a 408 when a head is late, and load shedding."""

    def init_process(self) -> None:
        # In the worker process, after the fork: every response gunicorn frames here
        # (gthread builds them through wsgi.create, which looks the class up by name).
        install_response_class(WorkerResponse)
        # gunicorn's own refusals (400, 414, 431, ...) as problems, not HTML pages
        # (service/http_problems.py).
        install_error_writer(write_problem)
        config = getattr(self.app, "bank_config", None)
        self.overload_limits = OverloadLimits.from_config(
            config if isinstance(config, Config) else Config()
        )
        self.admission = AdmissionQueue(self.overload_limits)
        # Requests in the thread pool's queue, oldest first (main thread only).
        self.queued: deque[tuple[HeadBoundedConnection, Ticket, futures.Future[Any]]] = deque()
        self.refusal_pool = futures.ThreadPoolExecutor(
            max_workers=REFUSAL_THREADS, thread_name_prefix="refusal"
        )
        super().init_process()  # loads the app (load_wsgi), then runs the loop

    def run(self) -> None:
        try:
            super().run()
        finally:
            self.refusal_pool.shutdown(wait=False)

    def handle_quit(self, sig: Any, frame: Any) -> None:
        self.refusal_pool.shutdown(wait=False)
        super().handle_quit(sig, frame)

    def load_wsgi(self) -> None:
        super().load_wsgi()
        application: WsgiApp = getattr(self, "wsgi")  # noqa: B009 (set by gunicorn, untyped)
        self.gate = OverloadGate(application, self.overload_limits, worker=f"worker {self.pid}")
        self.wsgi = self.gate
        if self.cfg.workers == 1:
            self._take_over_from_the_previous_worker()

    def _take_over_from_the_previous_worker(self) -> None:
        """With one worker, accept nothing while a previous one (a HUP reload) still serves.

        `process-lock` holds only within one process (service/single_process.py).
        """
        timeout_seconds = self.cfg.graceful_timeout + HANDOVER_MARGIN_SECONDS
        waited_seconds = wait_for_the_previous_worker(timeout_seconds)
        if waited_seconds is None:
            self.log.error(
                "worker %s: the previous worker still runs after %.0f s; exiting to be restarted",
                self.pid,
                timeout_seconds,
            )
            raise SystemExit(1)  # not a boot error: gunicorn starts another worker
        if waited_seconds > 0:
            self.log.info(
                "worker %s: waited %.2f s for the previous worker to exit", self.pid, waited_seconds
            )

    def enqueue_req(self, connection: HeadBoundedConnection) -> None:
        """ThreadWorker.enqueue_req, with a ticket: refused requests go to the refusal pool."""
        ticket = connection.ticket = self.admission.arrive()
        connection.in_refusal_pool = not ticket.admitted
        if not ticket.admitted:
            self._refuse_in_refusal_pool(connection)
            return
        future = self.tpool.submit(self.handle, connection)
        self.queued.append((connection, ticket, future))
        future.add_done_callback(partial(self._request_finished, connection))

    def _refuse_in_refusal_pool(self, connection: HeadBoundedConnection) -> None:
        connection.in_refusal_pool = True
        future = self.refusal_pool.submit(self.handle, connection)
        future.add_done_callback(partial(self._request_finished, connection))

    def _request_finished(self, connection: HeadBoundedConnection, done: Any) -> None:
        if done.cancelled():  # taken back from the pool's queue: `shed_overdue` refuses it
            return
        self.method_queue.defer(self.finish_request, connection, done)

    def shed_overdue(self) -> float:
        """Refuse the requests that waited their bound for a thread; seconds until the next is due.

        On the main thread, like `enqueue_req`: the oldest waiters are at the
        front, in the order the pool's threads take them. A cancelled future's
        job never runs, so each request is either taken by a thread (which
        decides its verdict) or refused here, never both.
        """
        while self.queued:
            connection, ticket, future = self.queued[0]
            if future.running() or future.done():  # a thread took it
                self.queued.popleft()
                continue
            due_in_seconds = self.admission.overdue_in(ticket)
            if due_in_seconds > 0:
                return due_in_seconds
            self.queued.popleft()
            if future.cancel():
                connection.ticket = None
                connection.verdict = self.admission.expire(ticket)
                self._refuse_in_refusal_pool(connection)
        return IDLE_SHED_CHECK_SECONDS

    def wait_for_and_dispatch_events(self, timeout: float) -> None:
        # Wake up when the oldest waiting request's time runs out, not a second later.
        super().wait_for_and_dispatch_events(min(timeout, self.shed_overdue()))

    def set_accept_enabled(self, enabled: bool) -> None:
        super().set_accept_enabled(enabled)
        if not enabled and not self.alive:
            # Stopping: close the listeners now, so a new connection is refused at
            # once instead of waiting in the backlog to be reset when the drain ends.
            for listener in self.sockets:
                if self.cfg.reuse_port:
                    # This worker's own listener (service/cli.py): what the kernel queued
                    # on it no other worker can take, and closing it would reset those
                    # connections. They are served, with `Connection: close`.
                    for _ in range(self.cfg.backlog):
                        if not self.accept(listener):
                            break
                listener.close()

    def accept(self, listener: Any) -> bool:
        """ThreadWorker.accept with this module's connection class; whether it took one."""
        try:
            client_socket, client_address = listener.accept()
        except BlockingIOError:
            return False  # another worker took it, or none is queued
        except ConnectionAbortedError:
            return False
        self.nr_conns += 1
        client_socket.setblocking(True)
        connection = HeadBoundedConnection(
            self.cfg, client_socket, client_address, listener.getsockname()
        )
        self.enqueue_req(connection)
        return True

    def handle(self, connection: HeadBoundedConnection) -> Any:
        if connection.ticket is not None:  # a thread took it from the queue: serve or shed?
            connection.verdict = self.admission.leave(connection.ticket)
            connection.ticket = None
        connection.refusing = connection.verdict.shed_reason is not None
        if connection.refusing and not (connection.initialized or connection.data_ready):
            # A new connection refused: no waiting for its first byte in this thread;
            # if none is there yet, gthread's poller hands it back when readable.
            if not _readable_now(connection.sock):
                return DEFER
            connection.data_ready = True
        in_refusal_thread = connection.in_refusal_pool
        started = time.perf_counter()
        result = super().handle(connection)
        if result is False:  # gthread will close it: linger here, not on its main thread
            # A refused request's body was drained: nothing left to drain, and no more
            # thread time for it. A request out of time may still be dribbling.
            if connection.refusing:
                linger_seconds = 0.0
            elif connection.timed_out():
                linger_seconds = TIMED_OUT_LINGER_SECONDS
            else:
                linger_seconds = CLOSE_LINGER_SECONDS
            connection.linger_before_close(linger_seconds)
        if in_refusal_thread:
            rest_seconds = (time.perf_counter() - started) * REFUSAL_REST_RATIO
            time.sleep(min(rest_seconds, REFUSAL_REST_MAX_SECONDS))  # a CPU budget, not a wait
        return result

    def _keepalive_after(self, connection: HeadBoundedConnection, keepalive: bool) -> bool:
        if not connection.refusing:
            return bool(super()._keepalive_after(connection, keepalive))
        # Refused (or a probe served out of turn): the unread body is read and dropped
        # within the refusal's short wait, even when the connection closes, so the
        # close is a FIN, not a reset that could destroy the answer in flight.
        drained = connection.parser.finish_body(deadline=time.monotonic() + REFUSAL_IO_SECONDS)
        return bool(keepalive and drained)

    def on_client_socket_readable(self, connection: HeadBoundedConnection, client: Any) -> None:
        connection.restart_head_clock()  # a kept-alive connection's next request begins
        super().on_client_socket_readable(connection, client)

    def on_pending_socket_readable(self, connection: HeadBoundedConnection, client: Any) -> None:
        connection.restart_head_clock()  # its first byte came after gthread's wait
        super().on_pending_socket_readable(connection, client)

    def handle_request(self, request: Any, connection: HeadBoundedConnection) -> bool:
        connection.head_received()
        verdict, connection.verdict = connection.verdict, SERVE_AT_ONCE
        try:
            with self.gate.deciding(verdict):
                return bool(super().handle_request(request, connection))
        finally:
            connection.request_done()

    def handle_error(self, request: Any, client: Any, address: Any, error: BaseException) -> None:
        if not isinstance(error, RequestHeadTimeout):
            super().handle_error(request, client, address, error)
            return
        self.log.warning(
            "Request head from %s not received within %s s: answered 408, connection closed",
            address[0] if isinstance(address, tuple) else "a unix socket",
            REQUEST_TIMEOUT_SECONDS,
        )
        with suppress(OSError):  # the client is gone; the connection is closed either way
            write_nonblock(client, _request_timeout_response())


def _readable_now(client_socket: socket.socket) -> bool:
    """Whether a byte (or the end of the stream) is there to read, without waiting.

    One peek, where gthread's own wait builds and closes a selector.
    """
    try:
        client_socket.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except (BlockingIOError, InterruptedError):
        return False
    except OSError:
        return True  # reset or gone: gthread meets the error when it reads, as usual
    return True


def _request_timeout_response() -> bytes:
    """The service's 408 problem (DESIGN §3), written before any request exists."""
    body = json.dumps(
        {
            "type": "urn:bankrace:problem:request_timeout",
            "title": "Request timeout",
            "status": 408,
            "detail": f"the request head did not arrive within {REQUEST_TIMEOUT_SECONDS} s",
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
