"""Load shedding (service/overload.py) and the worker's response and logger, in one process.

The admission queue runs on a fake clock, so every verdict is known in
advance; the gate is called as WSGI with a recording app; the counts are
read from the text `service.metrics.exposition()` serves at GET /metrics.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Iterable
from typing import Any

import jsonschema
import pytest
from gunicorn.config import Config as GunicornConfig

from service import create_app
from service.config import (
    DEFAULT_QUEUE_MAX_REQUESTS,
    DEFAULT_QUEUE_WAIT_MAX_MS,
    Config,
    ConfigError,
)
from service.gunicorn_worker import QuietAccessLogger, WorkerResponse, _readable_now
from service.overload import (
    QUEUE_FULL,
    QUEUE_WAIT,
    RETRY_AFTER_SECONDS,
    SERVE_AT_ONCE,
    AdmissionQueue,
    OverloadGate,
    OverloadLimits,
    Verdict,
)
from tests.conftest import make_config
from tests.support.metrics_samples import sample

LIMITS = OverloadLimits(max_queued_requests=3, max_queue_wait_ms=500)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# --------------------------------------------------------------------------- admission


def test_the_queue_admits_up_to_its_bound_and_refuses_the_next() -> None:
    """With 3 waiting, a 4th is refused (queue_full) however short its wait; a leave frees one."""
    clock = FakeClock()
    queue = AdmissionQueue(LIMITS, clock)
    tickets = [queue.arrive() for _ in range(3)]
    assert all(ticket.admitted for ticket in tickets) and queue.waiting == 3
    refused = queue.arrive()
    assert not refused.admitted and queue.waiting == 3  # a refusal takes no place
    assert queue.leave(refused) == Verdict(QUEUE_FULL, 0.0)
    assert queue.leave(tickets[0]) == SERVE_AT_ONCE
    assert queue.waiting == 2
    assert queue.arrive().admitted


def test_a_request_that_waited_past_the_bound_is_refused() -> None:
    """Waiting exactly the bound is served; a millisecond more is refused (queue_wait)."""
    clock = FakeClock()
    queue = AdmissionQueue(LIMITS, clock)
    on_time, late = queue.arrive(), queue.arrive()
    clock.now += 0.5
    assert queue.leave(on_time) == Verdict(None, pytest.approx(0.5))
    clock.now += 0.001
    assert queue.leave(late) == Verdict(QUEUE_WAIT, pytest.approx(0.501))
    assert queue.waiting == 0


def test_a_request_no_thread_takes_is_refused_when_its_time_runs_out() -> None:
    """overdue_in counts down to the bound; expire refuses (queue_wait) and frees its place."""
    clock = FakeClock()
    queue = AdmissionQueue(LIMITS, clock)
    oldest = queue.arrive()
    clock.now += 0.2
    newer = queue.arrive()
    assert queue.overdue_in(oldest) == pytest.approx(0.3)
    assert queue.overdue_in(newer) == pytest.approx(0.5)
    clock.now += 0.3
    assert queue.overdue_in(oldest) == pytest.approx(0.0)
    clock.now += 0.05
    assert queue.expire(oldest) == Verdict(QUEUE_WAIT, pytest.approx(0.55))
    assert queue.waiting == 1
    assert queue.leave(newer) == Verdict(None, pytest.approx(0.35))
    assert queue.waiting == 0


def test_the_count_holds_under_threads() -> None:
    """Threads arriving and leaving at once never let more than the bound wait, and end at 0."""
    queue = AdmissionQueue(OverloadLimits(max_queued_requests=5, max_queue_wait_ms=60_000))
    highest: list[int] = []
    verdicts: list[Verdict] = []
    lock = threading.Lock()

    def churn() -> None:
        for _ in range(2000):
            ticket = queue.arrive()
            seen = queue.waiting
            verdict = queue.leave(ticket)
            with lock:
                highest.append(seen)
                verdicts.append(verdict)

    threads = [threading.Thread(target=churn) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert queue.waiting == 0
    assert max(highest) <= 5
    assert {verdict.shed_reason for verdict in verdicts} <= {None, QUEUE_FULL}


# --------------------------------------------------------------------------- the gate


class RecordingApp:
    """A WSGI app that answers 201 with X-Lock-Mode, and counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        self.calls += 1
        start_response(
            "201 CREATED", [("Content-Type", "application/json"), ("X-Lock-Mode", "atomic")]
        )
        return [b"{}"]


class Answer:
    def __init__(self) -> None:
        self.status = ""
        self.headers: dict[str, str] = {}
        self.body = b""

    def start_response(self, status: str, headers: list[tuple[str, str]], *rest: Any) -> None:
        self.status, self.headers = status, dict(headers)

    def json(self) -> dict[str, Any]:
        body: dict[str, Any] = json.loads(self.body)
        return body


def call(
    gate: OverloadGate,
    verdict: Verdict,
    method: str = "POST",
    path: str = "/accounts/1/deposit",
    **headers: str,
) -> Answer:
    environ = {"REQUEST_METHOD": method, "PATH_INFO": path, **headers}
    answer = Answer()
    with gate.deciding(verdict):
        answer.body = b"".join(gate(environ, answer.start_response))
    return answer


def test_a_request_let_in_runs_and_its_wait_is_counted() -> None:
    """Verdict serve: the app answers; its queue wait is observed; the POST's lock mode is kept."""
    app = RecordingApp()
    gate = OverloadGate(app, LIMITS)
    served_before = sample("bankrace_queue_wait_seconds_count")
    answer = call(gate, Verdict(None, 0.2))
    assert (answer.status, app.calls) == ("201 CREATED", 1)
    assert sample("bankrace_queue_wait_seconds_count") == served_before + 1
    assert gate.last_lock_mode == "atomic"


@pytest.mark.parametrize("reason", [QUEUE_FULL, QUEUE_WAIT])
def test_a_shed_request_is_answered_503_and_never_runs(reason: str) -> None:
    """Shed: 503 overloaded problem, Retry-After, Connection: close; the app is never called."""
    app = RecordingApp()
    gate = OverloadGate(app, LIMITS)
    call(gate, SERVE_AT_ONCE)  # a POST served first: its lock mode is remembered
    shed_before = sample("bankrace_shed_requests_total", reason=reason)
    problems_before = sample("bankrace_http_problems_total", status="503", code="overloaded")

    answer = call(gate, Verdict(reason, 0.75), HTTP_X_REQUEST_ID="client-id-7")

    assert app.calls == 1  # only the request served first
    assert answer.status == "503 Service Unavailable"
    assert answer.headers["Content-Type"] == "application/problem+json"
    assert answer.headers["Retry-After"] == str(RETRY_AFTER_SECONDS)
    assert answer.headers["Connection"] == "close"
    assert answer.headers["X-Request-ID"] == "client-id-7"
    assert answer.headers["X-Lock-Mode"] == "atomic"
    assert answer.headers["X-Content-Type-Options"] == "nosniff"
    assert answer.headers["Content-Length"] == str(len(answer.body))
    problem = answer.json()
    assert problem["code"] == "overloaded" and problem["status"] == 503
    assert problem["instance"] == "/accounts/1/deposit"
    assert "nothing was done" in problem["detail"]
    expected = "750 ms" if reason == QUEUE_WAIT else "3 requests"
    assert expected in problem["detail"]
    assert sample("bankrace_shed_requests_total", reason=reason) == shed_before + 1
    assert (
        sample("bankrace_http_problems_total", status="503", code="overloaded")
        == problems_before + 1
    )


def test_the_refusal_matches_the_documented_problem() -> None:
    """The 503 body validates against the OpenAPI document's Problem schema."""
    application = create_app(make_config("memory://"))
    try:
        document = application.test_client().get("/openapi.json").get_json()
    finally:
        application.extensions["bankrace"].store.close()
    root = {
        "components": document["components"],
        "$ref": "#/components/schemas/Problem",
    }
    answer = call(OverloadGate(RecordingApp(), LIMITS), Verdict(QUEUE_FULL, 0.0), method="GET")
    jsonschema.Draft202012Validator(root).validate(answer.json())
    assert "X-Lock-Mode" not in answer.headers  # a GET names no lock mode


def test_a_bad_or_missing_request_id_gets_a_new_one() -> None:
    """X-Request-ID is echoed when usable (printable ASCII, 1 to 200), else generated."""
    gate = OverloadGate(RecordingApp(), LIMITS)
    for given in ({}, {"HTTP_X_REQUEST_ID": "bad id"}, {"HTTP_X_REQUEST_ID": "x" * 201}):
        answer = call(gate, Verdict(QUEUE_FULL, 0.0), **given)
        assert len(answer.headers["X-Request-ID"]) == 32
        assert answer.headers["X-Request-ID"] != given.get("HTTP_X_REQUEST_ID")
    assert call(gate, Verdict(QUEUE_FULL, 0.0)).headers["X-Lock-Mode"] == "unknown"


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics"])
@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_probes_and_metrics_are_always_served(path: str, method: str) -> None:
    """Liveness, readiness and metrics run even with a shed verdict, and are not counted."""
    app = RecordingApp()
    gate = OverloadGate(app, LIMITS)
    served_before = sample("bankrace_queue_wait_seconds_count")
    answer = call(gate, Verdict(QUEUE_WAIT, 3.0), method=method, path=path)
    assert answer.status == "201 CREATED" and app.calls == 1
    assert sample("bankrace_queue_wait_seconds_count") == served_before


def test_only_the_probes_themselves_are_exempt() -> None:
    """A POST to /healthz, or a path that merely starts like one, is shed like any request."""
    app = RecordingApp()
    gate = OverloadGate(app, LIMITS)
    for method, path in (("POST", "/healthz"), ("GET", "/healthz/x"), ("GET", "/audit")):
        assert call(gate, Verdict(QUEUE_FULL, 0.0), method=method, path=path).status.startswith(
            "503"
        )
    assert app.calls == 0


def test_the_verdict_lasts_one_request() -> None:
    """After `deciding`, the thread's next request is served (no verdict leaks)."""
    app = RecordingApp()
    gate = OverloadGate(app, LIMITS)
    call(gate, Verdict(QUEUE_FULL, 0.0))
    answer = Answer()
    answer.body = b"".join(gate({"REQUEST_METHOD": "GET", "PATH_INFO": "/"}, answer.start_response))
    assert answer.status == "201 CREATED"


def test_shedding_is_logged_at_most_once_a_second(caplog: pytest.LogCaptureFixture) -> None:
    """A burst of refusals gives one warning with the count, not one line each."""
    gate = OverloadGate(RecordingApp(), LIMITS, worker="worker 42")
    with caplog.at_level(logging.WARNING, logger="service.overload"):
        for _ in range(50):
            call(gate, Verdict(QUEUE_FULL, 0.0))
    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) == 1
    assert "worker 42 shed 1 requests" in lines[0] and "queue_full 1" in lines[0]


# --------------------------------------------------------------------------- worker parts


class FakeRequest:
    version = (1, 1)
    method = "POST"

    def should_close(self) -> bool:
        return False


def test_responses_carry_no_server_banner() -> None:
    """gunicorn's `Server: gunicorn` line is gone; status, Date and Connection stay."""
    response = WorkerResponse(FakeRequest(), None, GunicornConfig())
    response.start_response("200 OK", [("Content-Length", "2")])
    lines = response.default_headers()
    assert lines[0] == "HTTP/1.1 200 OK\r\n"
    assert not any(line.lower().startswith("server:") for line in lines)
    assert any(line.startswith("Date: ") for line in lines)
    assert "Connection: keep-alive\r\n" in lines


def test_an_application_connection_close_closes() -> None:
    """`Connection: close` from the app (a refusal) closes the connection after the answer."""
    kept, closed = (WorkerResponse(FakeRequest(), None, GunicornConfig()) for _ in range(2))
    kept.start_response("200 OK", [("Content-Length", "2")])
    closed.start_response(
        "503 Service Unavailable", [("Content-Length", "2"), ("Connection", "close")]
    )
    assert not kept.should_close()
    assert closed.should_close() and "Connection: close\r\n" in closed.default_headers()


class RecordingSocket:
    """Records each write the response makes; each `send` takes all it is given."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def send(self, data: bytes, flags: int = 0) -> int:
        self.writes.append(bytes(data))
        return len(data)

    def sendall(self, data: bytes) -> None:
        self.writes.append(bytes(data))


@pytest.mark.parametrize(
    ("body", "length", "sent"),
    [(b'{"status": "ok"}', 16, b'{"status": "ok"}'), (b"", 0, b""), (b"abcdef", 3, b"abc")],
    ids=["answer", "empty", "longer than its Content-Length"],
)
def test_a_known_length_answer_is_one_socket_write(body: bytes, length: int, sent: bytes) -> None:
    """Head and body leave in one write; never more body than Content-Length says."""
    sock = RecordingSocket()
    response = WorkerResponse(FakeRequest(), sock, GunicornConfig())
    response.start_response("200 OK", [("Content-Length", str(length))])
    response.write(body)
    response.write(b"more")  # past the length: dropped, as gunicorn drops it
    assert len(sock.writes) == 1
    head, _, written = sock.writes[0].partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"Content-Length: %d" % length in head
    assert written == sent and response.sent == len(sent)


def test_an_answer_of_unknown_length_is_left_to_gunicorn() -> None:
    """No Content-Length: chunked by gunicorn, head first, as before."""
    sock = RecordingSocket()
    response = WorkerResponse(FakeRequest(), sock, GunicornConfig())
    response.start_response("200 OK", [("Content-Type", "text/plain")])
    response.write(b"abc")
    assert len(sock.writes) >= 2 and sock.writes[0].endswith(b"\r\n\r\n")
    assert b"Transfer-Encoding: chunked" in sock.writes[0]


def test_readable_now_peeks_without_waiting() -> None:
    """No byte yet: not readable; a byte, or the peer's close: readable; the byte stays."""
    ours, theirs = socket.socketpair()
    with ours, theirs:
        assert not _readable_now(ours)
        theirs.sendall(b"G")
        assert _readable_now(ours)
        assert ours.recv(1) == b"G"  # peeked, not consumed
        theirs.close()
        assert _readable_now(ours)


def test_the_access_log_is_never_formatted() -> None:
    """The service logs each request itself; gunicorn's access records are not even built."""
    logger = QuietAccessLogger(GunicornConfig())
    assert logger.access_log_enabled is False
    assert logger.access(None, None, None, None) is None  # no attribute of None was read


# --------------------------------------------------------------------------- configuration


def test_the_bounds_come_from_the_environment() -> None:
    """Defaults, and the two variables read and validated like the others."""
    assert Config.from_env({}).queue_max_requests == DEFAULT_QUEUE_MAX_REQUESTS
    assert Config.from_env({}).queue_wait_max_ms == DEFAULT_QUEUE_WAIT_MAX_MS
    config = Config.from_env({"BANK_QUEUE_MAX_REQUESTS": "7", "BANK_QUEUE_WAIT_MAX_MS": "250"})
    assert OverloadLimits.from_config(config) == OverloadLimits(7, 250)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("BANK_QUEUE_MAX_REQUESTS", "0"),
        ("BANK_QUEUE_MAX_REQUESTS", "-1"),
        ("BANK_QUEUE_MAX_REQUESTS", "100001"),
        ("BANK_QUEUE_MAX_REQUESTS", "ten"),
        ("BANK_QUEUE_WAIT_MAX_MS", "0"),
        ("BANK_QUEUE_WAIT_MAX_MS", "1.5"),
        ("BANK_QUEUE_WAIT_MAX_MS", "600001"),
    ],
)
def test_a_bad_bound_names_its_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        Config.from_env({name: value})
