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
queue (`RequestJob.withdraw`, which fails once a thread has claimed it) and
hands it to the refusal thread (`shed_overdue`).

Writes: an answer's writes wait at most WRITE_TIMEOUT_SECONDS in all for a
client that does not read them, or reads them slowly
(`WorkerResponse.send`).

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
import queue
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from contextlib import suppress
from typing import Any, cast

from service.config import Config
from service.gunicorn_internals import (
    DEFER,
    BaseSocketUnreader,
    BodyLengthReader,
    GthreadConnection,
    GthreadWorker,
    GunicornLogger,
    HttpResponse,
    install_error_writer,
    install_response_class,
    to_bytestring,
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
# An answer's writes wait at most this in all for a client that does not read them.
WRITE_TIMEOUT_SECONDS = 10
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
# The worker's heartbeat to the arbiter (gunicorn's timeout is 30 s) at most this often.
HEARTBEAT_INTERVAL_SECONDS = 0.5
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
        if remaining_seconds > 0:
            # What is already there is read at once, without arming the timeout: a
            # timed read costs three more system calls (the timeout set, a poll
            # before the read, blocking mode back), each letting go of the GIL.
            try:
                return cast(bytes, self.sock.recv(self._read_size(size_hint), socket.MSG_DONTWAIT))
            except (BlockingIOError, InterruptedError):
                pass  # nothing yet: wait for it, within the deadline
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

    def _read_size(self, size_hint: int | None) -> int:
        """As much as gunicorn's own read asks for (SocketUnreader.chunk)."""
        if size_hint and size_hint > self.mxchunk:
            return min(size_hint, cast(int, self.max_body_chunk))
        return cast(int, self.mxchunk)


class WorkerResponse(HttpResponse):  # type: ignore[misc]
    """gunicorn's HTTP/1 response, without a banner, closing when the application says so.

    gunicorn writes `Server: gunicorn` on every response and drops the
    application's `Connection` header; here the banner goes, and an
    application's `Connection: close` (a refused request, service/overload.py)
    closes the connection after the response, as does a body that ran out of
    time (the rest of it may still be coming: where the next request starts
    is unknown).
    """

    headers_sent: bool  # gunicorn's own attributes, set in its __init__ (typed for mypy)
    sock: Any  # the connection's socket; an AnswerSocket around it for gunicorn's writes
    # When this answer's writes must end: set by the first write that has to wait.
    write_deadline: float | None = None

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
            self.send_gunicorns_writes_here()  # chunked, no body, or a later write
            super().write(arg)
            return
        lines = self.default_headers()
        lines.extend(f"{name}: {value}\r\n" for name, value in self.headers)
        head = to_bytestring("".join(lines) + "\r\n", "latin-1")
        self.headers_sent = True
        body = arg[: self.response_length]  # never more than Content-Length, as gunicorn
        self.sent += len(body)
        self.send(self.sock, head + body)

    def send(self, sock: socket.socket, data: bytes | memoryview) -> None:
        """One send that does not wait; what did not fit, within the answer's write deadline.

        The common answer fits the socket's buffer and leaves in that one
        send, with no timeout armed (a timed send is three more system calls,
        each letting go of the GIL: the timeout set, a poll before the send,
        blocking mode back). A client that is not reading fast enough makes
        the answer's writes wait: from the first wait they have
        WRITE_TIMEOUT_SECONDS in all, then fail with a TimeoutError (gthread
        closes the connection). A client that reads a little now and then
        cannot stretch that, as it would stretch the kernel's send timeout
        (`bound_sends`), which counts only time without progress.
        """
        if self.write_deadline is None:
            try:
                sent = sock.send(data, socket.MSG_DONTWAIT)
            except BlockingIOError:
                sent = 0
            if sent == len(data):
                return
            data = memoryview(data)[sent:]
            self.write_deadline = time.monotonic() + WRITE_TIMEOUT_SECONDS
        remaining_seconds = self.write_deadline - time.monotonic()
        if remaining_seconds <= 0:
            raise TimeoutError(f"the answer was not read within {WRITE_TIMEOUT_SECONDS} s")
        sock.settimeout(remaining_seconds)  # gthread sets it blocking again for the next request
        sock.sendall(data)  # the timeout bounds the whole sendall, not each send in it

    def send_gunicorns_writes_here(self) -> None:
        """gunicorn's own writes of this answer (head, chunks, last chunk) go through `send`."""
        if not isinstance(self.sock, AnswerSocket):
            self.sock = AnswerSocket(self.sock, self)

    def close(self) -> None:
        if not self.headers_sent or self.chunked:  # gunicorn still writes the head or last chunk
            self.send_gunicorns_writes_here()
        super().close()

    def write_file(self, respiter: Any) -> None:
        """A file's writes within the deadline too (sendfile waits for what is left, per wait)."""
        self.send_gunicorns_writes_here()
        if self.write_deadline is None:
            self.write_deadline = time.monotonic() + WRITE_TIMEOUT_SECONDS
        # sendfile on a blocking socket would wait for the client for ever
        self.sock.settimeout(max(self.write_deadline - time.monotonic(), 0.001))
        super().write_file(respiter)


class AnswerSocket:
    """A connection's socket as gunicorn's writes of one answer see it: `sendall` is `send`.

    gunicorn writes a chunked answer, a head without a body and the last
    chunk with `sock.sendall` (util.write, util.write_chunk); through this
    wrapper each such write is the response's `send`. Built only for those
    answers, not for the common one `WorkerResponse.write` sends itself.
    """

    __slots__ = ("_response", "_sock")

    def __init__(self, sock: socket.socket, response: WorkerResponse) -> None:
        self._sock = sock
        self._response = response

    def sendall(self, data: bytes) -> None:
        self._response.send(self._sock, data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def bound_sends(client_socket: socket.socket) -> None:
    """Every blocking send on this connection waits at most WRITE_TIMEOUT_SECONDS without progress.

    The kernel's send timeout (SO_SNDTIMEO), set once per connection: a send
    to a client that does not read fails instead of waiting for ever. It
    counts only time without progress, so it is the backstop for the writes
    outside an answer (gunicorn's error pages, `100 Continue`);
    `WorkerResponse.send` bounds each answer's writes in all.
    """
    seconds = int(WRITE_TIMEOUT_SECONDS)
    microseconds = int((WRITE_TIMEOUT_SECONDS - seconds) * 1_000_000)
    client_socket.setsockopt(
        socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", seconds, microseconds)
    )


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


class RequestJob:
    """A connection's turn in a `RequestPool`: served by a thread or withdrawn, never both.

    The claim is a one-item list that the serving thread or `withdraw` pops:
    a list's pop is atomic, so exactly one of them gets the item, with no
    lock taken (a Future takes its condition's lock for every state change
    and query, five or six times per request). gthread's `finish_request`
    reads the outcome through `cancelled()` and `result()`, as of a Future.
    """

    __slots__ = ("_claim", "_error", "_result", "connection", "ticket")

    def __init__(self, connection: HeadBoundedConnection, ticket: Ticket | None) -> None:
        self.connection = connection
        self.ticket = ticket
        self._claim = [True]
        self._result: Any = False
        self._error: BaseException | None = None

    def claim(self) -> bool:
        """Take the job (True), unless a thread or `withdraw` already has."""
        try:
            return self._claim.pop()
        except IndexError:
            return False

    withdraw = claim  # the main loop takes it back before any thread does: not served

    @property
    def taken(self) -> bool:
        return not self._claim

    def cancelled(self) -> bool:
        return False  # a withdrawn job is never finished (shed_overdue refuses it)

    def result(self) -> Any:
        if self._error is not None:
            raise self._error
        return self._result


class RequestPool:
    """The threads that serve requests: gthread's `ThreadPoolExecutor` without its Futures.

    A job goes on a queue; a thread takes it (`RequestJob.claim`), serves it
    and hands it to `finished`, in the thread, as the executor's done
    callback did. Per request that is one queue put and get, where the
    executor and its Future took some ten locks (two to submit, one to
    build the Future's condition, the state changes, the idle semaphore)
    and a lock per query of the Future's state. Threads start on the first
    job, as the executor's do. `shutdown` lets queued jobs run, then the
    threads end; they are not daemons, so the process waits for them at
    exit, as for the executor's.
    """

    def __init__(
        self,
        threads: int,
        name: str,
        serve: Callable[[HeadBoundedConnection], Any],
        finished: Callable[[RequestJob], None],
    ) -> None:
        self.threads = threads
        self.name = name
        self._serve = serve
        self._finished = finished
        self._jobs: queue.SimpleQueue[RequestJob | None] = queue.SimpleQueue()
        self._running: list[threading.Thread] = []
        self._shut_down = False

    def submit(self, job: RequestJob) -> None:
        if self._shut_down:
            raise RuntimeError("cannot serve new requests after shutdown")
        if not self._running:
            self._start()
        self._jobs.put(job)

    def shutdown(self, wait: bool = True) -> None:
        if not self._shut_down:
            self._shut_down = True
            for _ in self._running:
                self._jobs.put(None)  # after every queued job
        if wait:
            for thread in self._running:
                thread.join()

    def _start(self) -> None:
        for number in range(self.threads):
            thread = threading.Thread(target=self._work, name=f"{self.name}_{number}")
            thread.start()
            self._running.append(thread)

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            if not job.claim():
                continue  # withdrawn by the main loop, which refuses it
            try:
                job._result = self._serve(job.connection)
            except BaseException as error:  # as the executor: kept for result(), thread goes on
                job._error = error
            self._finished(job)
            del job


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
        self.queued: deque[RequestJob] = deque()
        self.refusal_pool = RequestPool(REFUSAL_THREADS, "refusal", self.handle, self._finished)
        self.last_heartbeat = -HEARTBEAT_INTERVAL_SECONDS  # the first turn beats
        super().init_process()  # the pool (get_thread_pool), the app (load_wsgi), the loop

    def get_thread_pool(self) -> RequestPool:
        """gthread's hook for its pool: one that serves `RequestJob`s (enqueue_req)."""
        return RequestPool(self.cfg.threads, "request", self.handle, self._finished)

    def notify(self) -> None:
        """The heartbeat the arbiter watches, at most every HEARTBEAT_INTERVAL_SECONDS.

        gthread's loop beats on every turn, a system call (`utime` on the
        heartbeat file) each, about two per request under load; the arbiter
        only needs one within its `timeout` (30 s).
        """
        now = time.monotonic()
        if now - self.last_heartbeat >= HEARTBEAT_INTERVAL_SECONDS:
            self.last_heartbeat = now
            super().notify()

    def run(self) -> None:
        try:
            super().run()
        finally:
            self.tpool.shutdown(wait=False)  # gthread's run does too, unless it raised
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
        job = RequestJob(connection, ticket)
        self.queued.append(job)
        self.tpool.submit(job)

    def _refuse_in_refusal_pool(self, connection: HeadBoundedConnection) -> None:
        connection.in_refusal_pool = True
        self.refusal_pool.submit(RequestJob(connection, None))

    def _finished(self, job: RequestJob) -> None:
        """In the thread that served it: gthread's main loop takes the connection back."""
        self.method_queue.defer(self.finish_request, job.connection, job)

    def shed_overdue(self) -> float:
        """Refuse the requests that waited their bound for a thread; seconds until the next is due.

        On the main thread, like `enqueue_req`: the oldest waiters are at the
        front, in the order the pool's threads take them. A withdrawn job is
        skipped by the threads, so each request is either taken by a thread
        (which decides its verdict) or refused here, never both.
        """
        while self.queued:
            job = self.queued[0]
            if job.taken:  # a thread took it
                self.queued.popleft()
                continue
            assert job.ticket is not None  # every queued job was admitted with one
            due_in_seconds = self.admission.overdue_in(job.ticket)
            if due_in_seconds > 0:
                return due_in_seconds
            self.queued.popleft()
            if job.withdraw():
                connection = job.connection
                connection.ticket = None
                connection.verdict = self.admission.expire(job.ticket)
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
        bound_sends(client_socket)
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
            if keepalive and _body_read_whole(connection.parser):
                # Nothing left to drain: gthread's drain would still set and reset
                # the socket's timeout (two system calls) to read nothing.
                return True
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
        self.gate.decide(verdict)
        try:
            return bool(super().handle_request(request, connection))
        finally:
            self.gate.decided()
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


def _body_read_whole(parser: Any) -> bool:
    """Whether the request's body (one of a known length: none, for a GET) is all read, cleanly."""
    body = getattr(getattr(parser, "mesg", None), "body", None)
    reader = getattr(body, "reader", None)
    return (
        isinstance(reader, BodyLengthReader)
        and reader.length == 0
        and getattr(body, "failed", True) is False
    )


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
