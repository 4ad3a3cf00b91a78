"""The cheaper per-request paths of the envelope (issue 19) keep what they replaced.

- `RequestPool` / `RequestJob` (service/gunicorn_worker.py), the worker's
  thread pool without Futures: each job is served or withdrawn, never both,
  even when a thread and the main loop race for it; a withdrawn job is never
  served nor finished; shutdown lets queued jobs run; gthread still builds
  its pool through `get_thread_pool` and asks the job only what a Future
  answers there.
- `DeadlineUnreader`: bytes already there are read without arming the
  socket's timeout (three fewer system calls), as much as gunicorn reads;
  nothing there still waits within the deadline and ends in a timeout.
- `JsonLineFormatter.format` writes the same text as python-json-logger.
- `BankFlask.ensure_sync` asks once per function.
- `WorkerResponse`: a small answer leaves in one send with no timeout armed;
  a client that stops reading still frees the thread within the write
  timeout (the bound `_bound_body_reads` used to give under the worker too).
"""

from __future__ import annotations

import logging
import socket
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from gunicorn.config import Config as GunicornConfig
from gunicorn.http import wsgi
from gunicorn.workers.gthread import ThreadWorker
from pythonjsonlogger.json import JsonFormatter

from service import BankFlask, gunicorn_worker
from service import gunicorn_internals as internals
from service.gunicorn_worker import (
    DeadlineUnreader,
    HeadBoundedConnection,
    RequestBodyTimeout,
    RequestHeadTimeout,
    RequestJob,
    RequestPool,
    WorkerResponse,
)
from service.logs import JsonLineFormatter

# --------------------------------------------------------------------------- the pool


def _job(name: str = "c") -> RequestJob:
    return RequestJob(name, None)  # type: ignore[arg-type]  # a stand-in connection


def test_a_job_is_claimed_once_however_many_race_for_it() -> None:
    """Threads and the main loop race for each job: exactly one wins, every time."""
    for _ in range(200):
        job = _job()
        start = threading.Barrier(5)
        wins: list[bool] = []

        def race(
            job: RequestJob = job, start: threading.Barrier = start, wins: list[bool] = wins
        ) -> None:
            start.wait()
            wins.append(job.claim())

        racers = [threading.Thread(target=race) for _ in range(4)]
        for racer in racers:
            racer.start()
        start.wait()
        wins.append(job.withdraw())
        for racer in racers:
            racer.join()
        assert sorted(wins) == [False] * 4 + [True]
        assert job.taken


Served = tuple[RequestPool, list[str], list[tuple[str, str]], threading.Event]


@pytest.fixture
def served() -> Iterator[Served]:
    """A one-thread pool; a job for connection "slow" waits for the event."""
    done: list[str] = []
    finished: list[tuple[str, str]] = []
    release = threading.Event()

    def serve(connection: Any) -> str:
        if connection == "slow":
            release.wait(5)
        done.append(connection)
        return f"answer {connection}"

    def finish(job: RequestJob) -> None:
        finished.append((job.connection, job.result()))

    pool = RequestPool(1, "test", serve, finish)
    yield pool, done, finished, release
    release.set()
    pool.shutdown(wait=True)


def test_the_pool_serves_each_job_and_finishes_it_in_the_thread(served: Served) -> None:
    pool, done, finished, _ = served
    for number in range(5):
        pool.submit(_job(f"c{number}"))
    pool.shutdown(wait=True)  # queued jobs still run
    assert done == [f"c{number}" for number in range(5)]
    assert finished == [(f"c{number}", f"answer c{number}") for number in range(5)]
    with pytest.raises(RuntimeError):
        pool.submit(_job())


def test_a_withdrawn_job_is_neither_served_nor_finished(served: Served) -> None:
    """The one thread is busy; the job behind it is withdrawn (shed_overdue) and never runs."""
    pool, done, finished, release = served
    pool.submit(_job("slow"))
    waiting = _job("late")
    pool.submit(waiting)
    assert not waiting.taken
    assert waiting.withdraw()
    pool.submit(_job("next"))
    release.set()
    pool.shutdown(wait=True)
    assert done == ["slow", "next"]
    assert [connection for connection, _ in finished] == ["slow", "next"]


def test_an_error_in_serving_is_kept_for_result_and_the_thread_goes_on() -> None:
    outcomes: list[str] = []

    def serve(connection: Any) -> bool:
        if connection == "bad":
            raise ValueError("broken")
        return True

    def finish(job: RequestJob) -> None:
        try:
            outcomes.append(f"{job.connection}: {job.result()}")
        except ValueError as error:
            outcomes.append(f"{job.connection}: raised {error}")

    pool = RequestPool(1, "test", serve, finish)
    for name in ("bad", "good"):
        pool.submit(_job(name))
    pool.shutdown(wait=True)
    assert outcomes == ["bad: raised broken", "good: True"]


def test_gthread_builds_its_pool_through_the_hook_and_asks_a_job_only_what_it_answers() -> None:
    assert "get_thread_pool" in ThreadWorker.init_process.__code__.co_names, (
        f"gunicorn {internals.INSTALLED_VERSION}: ThreadWorker.init_process no longer calls "
        "get_thread_pool: the worker's RequestPool would not be used (docs/worker.md)"
    )
    future_methods = {"cancelled", "result", "exception", "done", "running", "cancel"}
    asked = future_methods & set(ThreadWorker.finish_request.__code__.co_names)
    assert asked == internals.FINISH_REQUEST_FUTURE_METHODS, (
        f"gunicorn {internals.INSTALLED_VERSION}: finish_request asks its future {asked}; "
        "RequestJob answers only cancelled() and result() (docs/worker.md)"
    )
    job = _job()
    assert job.claim()
    assert (job.cancelled(), job.result()) == (False, False)


def test_the_heartbeat_is_still_gthreads_and_beats_at_most_twice_a_second(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert "notify" in ThreadWorker.run.__code__.co_names, (
        f"gunicorn {internals.INSTALLED_VERSION}: ThreadWorker.run no longer calls notify"
    )
    beats: list[float] = []
    monkeypatch.setattr(ThreadWorker, "notify", lambda self: beats.append(time.monotonic()))
    worker = gunicorn_worker.HeadBoundedThreadWorker.__new__(
        gunicorn_worker.HeadBoundedThreadWorker
    )
    worker.last_heartbeat = -gunicorn_worker.HEARTBEAT_INTERVAL_SECONDS
    for _ in range(1000):
        worker.notify()
    assert len(beats) == 1  # the first turn beats, the next ones within the interval do not
    worker.last_heartbeat -= gunicorn_worker.HEARTBEAT_INTERVAL_SECONDS
    worker.notify()
    assert len(beats) == 2


# --------------------------------------------------------------------------- the reads


class RecordingSocket:
    """A socket stand-in that says which calls a read made."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.calls: list[str] = []

    def recv(self, size: int, flags: int = 0) -> bytes:
        self.calls.append(f"recv {size} dontwait" if flags & socket.MSG_DONTWAIT else "recv")
        if not self.data:
            raise BlockingIOError
        chunk, self.data = self.data[:size], self.data[size:]
        return chunk

    def settimeout(self, seconds: float | None) -> None:
        self.calls.append("settimeout")

    def setblocking(self, flag: bool) -> None:
        self.calls.append("setblocking")


def test_bytes_already_there_are_read_without_arming_the_timeout() -> None:
    sock = RecordingSocket(b"GET / HTTP/1.1\r\n\r\n")
    unreader = DeadlineUnreader(sock)
    unreader.deadline = time.monotonic() + 10
    assert unreader.chunk() == b"GET / HTTP/1.1\r\n\r\n"
    assert sock.calls == [f"recv {unreader.mxchunk} dontwait"]


def test_a_large_body_is_read_in_gunicorns_sizes() -> None:
    sock = RecordingSocket(b"x" * 10)
    unreader = DeadlineUnreader(sock)
    unreader.deadline = time.monotonic() + 10
    unreader.chunk(size_hint=unreader.max_body_chunk * 2)
    sock.data = b"x"
    unreader.chunk(size_hint=100)
    assert sock.calls == [
        f"recv {unreader.max_body_chunk} dontwait",
        f"recv {unreader.mxchunk} dontwait",
    ]


@pytest.mark.parametrize("reading_body", [False, True])
def test_nothing_there_still_waits_within_the_deadline_and_times_out(reading_body: bool) -> None:
    server, client = socket.socketpair()
    try:
        server.setblocking(True)
        unreader = DeadlineUnreader(server)
        unreader.reading_body = reading_body
        unreader.deadline = time.monotonic() + 0.2
        started = time.monotonic()
        with pytest.raises(RequestBodyTimeout if reading_body else RequestHeadTimeout):
            unreader.chunk()
        assert 0.15 < time.monotonic() - started < 2
        assert unreader.timed_out
        assert server.gettimeout() is None  # blocking again for gthread
    finally:
        server.close()
        client.close()


def test_a_byte_arriving_during_the_wait_is_read() -> None:
    server, client = socket.socketpair()
    try:
        server.setblocking(True)
        unreader = DeadlineUnreader(server)
        unreader.deadline = time.monotonic() + 5
        sender = threading.Timer(0.1, client.sendall, args=(b"late head",))
        sender.start()
        assert unreader.chunk() == b"late head"
        sender.join()
        assert server.gettimeout() is None
    finally:
        server.close()
        client.close()


# --------------------------------------------------------------------------- the log line


class PythonJsonLoggerWay(JsonLineFormatter):
    def format(self, record: logging.LogRecord) -> str:
        return JsonFormatter.format(self, record)


@pytest.mark.parametrize(
    ("message", "arguments", "extra"),
    [
        ("%s %s %s", ("GET", "/healthz", 200), {"method": "GET", "account_ids": [1, 2]}),
        ("plain", (), None),
        ("é %d", (5,), {"_private": 1, "none": None, "path": "/ü", "request_id": "ab"}),
        ({"a dict": 1}, (), {"x": 1}),
    ],
)
def test_the_formatter_writes_python_json_loggers_text(
    message: Any, arguments: tuple[Any, ...], extra: dict[str, Any] | None
) -> None:
    logger = logging.getLogger("service.test")
    record = logger.makeRecord(
        logger.name, logging.INFO, "f", 1, message, arguments, None, extra=extra
    )
    assert JsonLineFormatter().format(record) == PythonJsonLoggerWay().format(record)


def test_a_record_with_a_traceback_goes_python_json_loggers_way() -> None:
    logger = logging.getLogger("service.test")
    try:
        raise ValueError("boom")
    except ValueError:
        record = logger.makeRecord(logger.name, logging.ERROR, "f", 1, "failed", (), sys.exc_info())
    line = JsonLineFormatter().format(record)
    assert line == PythonJsonLoggerWay().format(record)
    assert "boom" in line


# --------------------------------------------------------------------------- Flask


def test_the_app_asks_once_whether_a_function_is_a_coroutine(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app = BankFlask(__name__)
    asked: list[Any] = []
    real = Flask.ensure_sync

    def counting(self: Any, func: Any) -> Any:
        asked.append(func)
        return real(self, func)

    monkeypatch.setattr(Flask, "ensure_sync", counting)

    def hook() -> None:
        return None

    for _ in range(3):
        assert app.ensure_sync(hook) is hook
    assert asked == [hook]


# --------------------------------------------------------------------------- the writes


def _answer_over(server: socket.socket, client: socket.socket, monkeypatch: Any) -> Any:
    """A WorkerResponse to a GET read from `client` by a gthread connection on `server`."""
    monkeypatch.setattr(wsgi, "Response", wsgi.Response)  # restored after the test
    internals.install_response_class(WorkerResponse)
    connection, request = _read_request(server, client, b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
    connection.head_received()
    response, _ = wsgi.create(
        request, connection.sock, connection.client, connection.server, connection.cfg
    )
    return response


def _read_request(server: socket.socket, client: socket.socket, raw: bytes) -> tuple[Any, Any]:
    """The worker's connection on `server`, and the request `raw` sent by `client`, parsed."""
    connection = HeadBoundedConnection(GunicornConfig(), server, ("127.0.0.1", 1), ("127.0.0.1", 2))
    client.sendall(raw)
    connection.init()
    return connection, next(connection.parser)


@pytest.fixture
def socket_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    server, client = socket.socketpair()
    yield server, client
    server.close()
    client.close()


def test_a_small_answer_leaves_in_one_send_without_a_timeout(
    socket_pair: tuple[socket.socket, socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, client = socket_pair
    response = _answer_over(server, client, monkeypatch)
    response.start_response("200 OK", [("Content-Length", "2")])
    response.write(b"ok")
    response.close()
    assert server.gettimeout() is None  # never armed
    assert response.write_deadline is None
    assert client.recv(65536).endswith(b"\r\n\r\nok")


@pytest.mark.parametrize("chunked", [False, True])
def test_a_client_that_stops_reading_frees_the_thread_within_the_write_timeout(
    socket_pair: tuple[socket.socket, socket.socket],
    monkeypatch: pytest.MonkeyPatch,
    chunked: bool,
) -> None:
    """The answer is larger than the socket buffers and nobody reads it: the write times out."""
    server, client = socket_pair
    monkeypatch.setattr(gunicorn_worker, "WRITE_TIMEOUT_SECONDS", 0.3)
    gunicorn_worker.bound_sends(server)  # as the worker's accept does
    response = _answer_over(server, client, monkeypatch)
    body = b"x" * (16 * 1024 * 1024)
    headers = [] if chunked else [("Content-Length", str(len(body)))]
    response.start_response("200 OK", headers)
    started = time.monotonic()
    # The answer's own deadline, chunked or not; gthread closes the connection on it.
    with pytest.raises(TimeoutError):
        response.write(body)
    assert 0.25 < time.monotonic() - started < 5


# --------------------------------------------------------------------------- the drain


def _parsed(server: socket.socket, client: socket.socket, raw: bytes) -> Any:
    connection, _ = _read_request(server, client, raw)
    return connection.parser


def test_a_get_has_nothing_to_drain(socket_pair: tuple[socket.socket, socket.socket]) -> None:
    parser = _parsed(*socket_pair, b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n")
    assert gunicorn_worker._body_read_whole(parser)


def test_a_body_not_read_whole_is_drained(socket_pair: tuple[socket.socket, socket.socket]) -> None:
    """A body with bytes still unread from the socket goes through gthread's bounded drain."""
    body = b"x" * 5000
    head = b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % len(body)
    parser = _parsed(*socket_pair, head + body)
    assert not gunicorn_worker._body_read_whole(parser)
    assert parser.mesg.body.read(2) == b"xx"
    assert not gunicorn_worker._body_read_whole(parser)
    assert parser.mesg.body.read() == body[2:]
    assert gunicorn_worker._body_read_whole(parser)


def test_a_chunked_body_is_always_drained(socket_pair: tuple[socket.socket, socket.socket]) -> None:
    raw = b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    assert not gunicorn_worker._body_read_whole(_parsed(*socket_pair, raw))


def test_the_parsed_request_keeps_the_members_the_worker_reads(
    socket_pair: tuple[socket.socket, socket.socket],
) -> None:
    parser = _parsed(*socket_pair, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    missing = [name for name in internals.BODY_ATTRIBUTES if not hasattr(parser.mesg.body, name)]
    missing += [
        name
        for name in internals.LENGTH_READER_ATTRIBUTES
        if not hasattr(parser.mesg.body.reader, name)
    ]
    missing += [
        name for name in internals.UNREADER_ATTRIBUTES if not hasattr(parser.unreader, name)
    ]
    assert not missing, f"gunicorn {internals.INSTALLED_VERSION} lacks {missing} (docs/worker.md)"
    assert isinstance(parser.mesg.body.reader, internals.BodyLengthReader)
