"""The worker's contract with gunicorn's internals (service/gunicorn_internals.py).

Each test holds the installed gunicorn to one line of that contract: a name
the worker subclasses, overrides, calls or replaces still exists, with the
parameters it relies on, and gthread still reaches it where it did. A
failure names what changed and what to re-check in service/gunicorn_worker.py;
the upgrade procedure is in docs/worker.md. Signatures and call sites are read
from gunicorn's code objects; the response and connection classes are run
over a socket pair.
"""

from __future__ import annotations

import inspect
import os
import socket
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import pytest
from gunicorn.config import Config as GunicornConfig
from gunicorn.http import wsgi
from gunicorn.workers import base

from service import gunicorn_internals as internals
from service.gunicorn_worker import (
    DeadlineUnreader,
    HeadBoundedConnection,
    HeadBoundedThreadWorker,
    WorkerResponse,
)
from service.overload import QUEUE_FULL, Verdict

UPGRADE = "re-check service/gunicorn_worker.py against it (docs/worker.md, 'Upgrading gunicorn')"


def _parameters(function: Callable[..., Any]) -> tuple[str, ...]:
    return tuple(inspect.signature(function).parameters)


def _names_used(function: Callable[..., Any]) -> set[str]:
    """Global and attribute names gunicorn's function looks up when it runs."""
    return set(function.__code__.co_names)


def _check_signatures(owner: type, expected: dict[str, tuple[str, ...]]) -> list[str]:
    problems = []
    for name, parameters in expected.items():
        member = getattr(owner, name, None)
        if member is None:
            problems.append(f"{owner.__qualname__}.{name} is gone")
        elif _parameters(member) != parameters:
            problems.append(f"{owner.__qualname__}.{name}{_parameters(member)} was {parameters}")
    return problems


def _fail_on(problems: list[str]) -> None:
    if problems:
        pytest.fail(
            f"gunicorn {internals.INSTALLED_VERSION} changed: "
            + "; ".join(problems)
            + f": {UPGRADE}"
        )


def test_the_installed_gunicorn_is_the_major_release_the_worker_was_written_for() -> None:
    major = int(internals.INSTALLED_VERSION.split(".")[0])
    assert major == internals.SUPPORTED_MAJOR_VERSION, (
        f"gunicorn {internals.INSTALLED_VERSION} is installed; the worker was written for "
        f"{internals.WRITTEN_FOR_VERSION}: {UPGRADE}, then raise WRITTEN_FOR_VERSION"
    )


def test_every_thread_worker_method_the_worker_overrides_or_calls_keeps_its_parameters() -> None:
    _fail_on(
        _check_signatures(
            internals.GthreadWorker, internals.WORKER_OVERRIDES | internals.WORKER_CALLS
        )
    )


def test_the_worker_overrides_nothing_else_of_gthread_by_accident() -> None:
    """Every ThreadWorker method the worker defines is in the contract (so it is checked above)."""
    gthread_names = {
        name for name in vars(HeadBoundedThreadWorker) if hasattr(internals.GthreadWorker, name)
    }
    unlisted = gthread_names - set(internals.WORKER_OVERRIDES) - {"__doc__", "__module__"}
    assert not unlisted, f"list these overrides in gunicorn_internals.WORKER_OVERRIDES: {unlisted}"


@pytest.mark.parametrize(
    ("caller", "called"),
    [
        # gthread still reaches each override (a renamed call would silently skip it).
        ("run", "set_accept_enabled"),
        ("run", "wait_for_and_dispatch_events"),
        ("set_accept_enabled", "accept"),
        ("on_client_socket_readable", "enqueue_req"),
        ("on_pending_socket_readable", "enqueue_req"),
        ("finish_request", "enqueue_req"),
        ("finish_request", "on_client_socket_readable"),
        ("finish_request", "on_pending_socket_readable"),
        ("handle", "init"),
        ("handle", "handle_request"),
        ("handle", "_keepalive_after"),
        ("handle", "handle_error"),
        ("handle_request", "wsgi"),
        # a handle() returning DEFER puts the connection back on the poller
        ("finish_request", "_DEFER"),
        # finish_request closes a connection not kept alive through its close()
        ("finish_request", "close"),
    ],
)
def test_gthread_still_reaches_what_the_worker_overrides(caller: str, called: str) -> None:
    method = getattr(internals.GthreadWorker, caller)
    assert called in _names_used(method), (
        f"gunicorn {internals.INSTALLED_VERSION}: ThreadWorker.{caller} no longer uses "
        f"{called!r}: {UPGRADE}"
    )


def _built_worker(worker_class: type) -> Any:
    """A worker object as the arbiter builds it before the fork, not started."""
    return worker_class(0, os.getpid(), [], None, 30, GunicornConfig(), None)


@pytest.fixture
def gthread_worker() -> Iterator[Any]:
    worker = _built_worker(internals.GthreadWorker)
    yield worker
    worker.tmp.close()  # its heartbeat file


@pytest.fixture
def service_worker() -> Iterator[Any]:
    worker = _built_worker(HeadBoundedThreadWorker)
    yield worker
    worker.tmp.close()


def test_the_worker_attributes_used_are_set_by_gthread(gthread_worker: Any) -> None:
    worker = gthread_worker
    missing = [
        name for name in internals.WORKER_ATTRIBUTES if name != "wsgi" and not hasattr(worker, name)
    ]
    assert not missing, f"gunicorn {internals.INSTALLED_VERSION}: ThreadWorker lacks {missing}"
    assert "wsgi" in _names_used(base.Worker.load_wsgi), "Worker.load_wsgi no longer sets wsgi"
    pool = worker.get_thread_pool()
    try:
        assert isinstance(pool, futures.ThreadPoolExecutor), (
            f"gthread's own pool is a {type(pool)}, no longer a ThreadPoolExecutor: the worker"
            " replaces it through get_thread_pool with its RequestPool, which has only submit"
            " (called by the worker's enqueue_req) and shutdown (gthread's run calls"
            f" shutdown(wait=False)); check what gthread now calls on its pool: {UPGRADE}"
        )
    finally:
        pool.shutdown(wait=False)


def test_the_connection_response_parser_unreader_and_logger_keep_their_members() -> None:
    problems = _check_signatures(internals.GthreadConnection, internals.CONNECTION_METHODS)
    if _parameters(internals.GthreadConnection.__init__) != internals.CONNECTION_INIT:
        problems.append(f"TConn.__init__{_parameters(internals.GthreadConnection.__init__)}")
    problems += _check_signatures(internals.HttpResponse, internals.RESPONSE_METHODS)
    problems += _check_signatures(internals.BaseSocketUnreader, internals.UNREADER_METHODS)
    problems += _check_signatures(internals.GunicornLogger, internals.LOGGER_MEMBERS)
    for name in internals.LOGGER_PROPERTIES:
        if not isinstance(getattr(internals.GunicornLogger, name, None), property):
            problems.append(f"Logger.{name} is no longer a property")
    _fail_on(problems)


def test_the_two_replaced_module_globals_are_still_looked_up_at_each_call() -> None:
    assert "Response" in _names_used(wsgi.create), (
        f"gunicorn {internals.INSTALLED_VERSION}: wsgi.create no longer builds its response from "
        f"the module global Response (install_response_class): {UPGRADE}"
    )
    handle_error_names = _names_used(base.Worker.handle_error)
    assert {"util", "write_error"} <= handle_error_names, (
        f"gunicorn {internals.INSTALLED_VERSION}: Worker.handle_error no longer writes through "
        f"util.write_error (install_error_writer): {UPGRADE}"
    )


@pytest.fixture
def client_and_server_sockets() -> Iterator[tuple[socket.socket, socket.socket]]:
    client, server = socket.socketpair()
    try:
        yield client, server
    finally:
        client.close()
        server.close()


def _read_until_closed_or(client: socket.socket, marker: bytes) -> bytes:
    client.settimeout(5)
    received = b""
    while marker not in received:
        chunk = client.recv(4096)
        if not chunk:
            break
        received += chunk
    return received


def test_a_request_parsed_by_a_gthread_connection_is_answered_by_the_workers_response(
    client_and_server_sockets: tuple[socket.socket, socket.socket],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """TConn.init builds the parser whose unreader the worker swaps; wsgi.create uses the class."""
    client, server = client_and_server_sockets
    monkeypatch.setattr(wsgi, "Response", wsgi.Response)  # restored after the test
    internals.install_response_class(WorkerResponse)
    config = GunicornConfig()
    connection = HeadBoundedConnection(config, server, ("127.0.0.1", 1), ("127.0.0.1", 2))
    client.sendall(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\nbody")

    connection.init()
    assert isinstance(connection.parser.unreader, DeadlineUnreader), (
        f"TConn.init in gunicorn {internals.INSTALLED_VERSION} no longer builds parser.unreader"
    )
    request = next(connection.parser)
    connection.head_received()
    response, environ = wsgi.create(
        request, connection.sock, connection.client, connection.server, config
    )
    assert type(response) is WorkerResponse
    assert environ["wsgi.input"].read() == b"body"
    response.start_response("201 CREATED", [("Content-Length", "2"), ("Connection", "close")])
    response.write(b"ok")
    response.close()

    answer = _read_until_closed_or(client, b"\r\n\r\nok")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 201 CREATED\r\n")
    assert b"server:" not in head.lower()
    assert body == b"ok"
    assert response.should_close()  # the application's Connection: close is honoured


class SendRecordingSocket:
    """A connection's socket that records its sends, with their flags; it has no sendall."""

    def __init__(self) -> None:
        self.sends: list[tuple[bytes, int]] = []

    def send(self, data: bytes, flags: int = 0) -> int:
        self.sends.append((bytes(data), flags))
        return len(data)


class BareRequest:
    version = (1, 1)

    def __init__(self, method: str) -> None:
        self.method = method

    def should_close(self) -> bool:
        return False


@pytest.mark.parametrize(
    ("method", "status", "headers", "body"),
    [
        ("HEAD", "200 OK", [("Content-Length", "2")], b"ok"),
        ("GET", "204 No Content", [], b""),
        ("GET", "200 OK", [], b"ok"),
    ],
    ids=["head only", "no body", "chunked"],
)
def test_gunicorn_writes_what_the_worker_does_not_join_with_the_sockets_sendall(
    method: str, status: str, headers: list[tuple[str, str]], body: bytes
) -> None:
    """Every such write reaches `WorkerResponse.send` (bounded in all), none the socket directly.

    gunicorn writes a head alone, body chunks and the last chunk with
    `sock.sendall` (util.write, util.write_chunk); the worker hands it an
    `AnswerSocket` whose `sendall` is the response's `send` (a send without
    waiting first, flagged MSG_DONTWAIT). A write gunicorn made another way
    would be bounded only by the kernel's send timeout.
    """
    sock = SendRecordingSocket()
    response = WorkerResponse(BareRequest(method), sock, GunicornConfig())
    response.start_response(status, headers)
    response.write(body)
    response.close()
    assert sock.sends, "nothing written"
    unbounded = [data for data, flags in sock.sends if not flags & socket.MSG_DONTWAIT]
    assert not unbounded, (
        f"gunicorn {internals.INSTALLED_VERSION} wrote {unbounded} past WorkerResponse.send:"
        f" {UPGRADE}"
    )


def test_handle_returns_the_defer_sentinel_for_a_connection_with_no_byte_yet(
    client_and_server_sockets: tuple[socket.socket, socket.socket], service_worker: Any
) -> None:
    """A refused connection not yet readable is handed back to gthread's poller, as gthread does."""
    _, server = client_and_server_sockets
    worker = service_worker
    connection = HeadBoundedConnection(GunicornConfig(), server, ("127.0.0.1", 1), ("127.0.0.1", 2))
    connection.in_refusal_pool = False
    connection.verdict = Verdict(shed_reason=QUEUE_FULL, waited_seconds=0.0)
    assert worker.handle(connection) is internals.DEFER
