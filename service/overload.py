"""Load shedding: beyond capacity, answer 503 `overloaded` at once instead of queueing.

gthread hands every readable connection to a thread pool whose queue has no
useful bound: past capacity, requests wait longer and longer (with 256
client connections on 2 x 4 threads, a deposit's p50 was 344 ms and grew
linearly with the clients). Two bounds, per worker process, decide instead
(docs/overload.md says how their defaults were measured):

- **Queue length** (`BANK_QUEUE_MAX_REQUESTS`): a request that arrives when
  that many are already waiting for a thread of this worker is refused. It
  still takes its turn in the pool, but a refusal costs a thread a fraction
  of a millisecond, so it is answered within about one queue's wait.
- **Queue wait** (`BANK_QUEUE_WAIT_MAX_MS`): a request that waited longer
  than this for a thread is refused, when its turn comes or, if no thread
  comes free before, when its time runs out (`expire`, from the worker's
  main loop). The length bound keeps the wait short while requests are
  quick; this one holds when they are slow (lock waits, a slow database, a
  race window, every thread held by slow clients), so no request waits for
  a thread much longer than the bound, served or refused.

A refused request has had its head read, nothing else: the application is
not called, so no body is parsed, no idempotency key stored, no money moved.
Liveness, readiness and metrics (`EXEMPT_PATHS`) are always served: a probe
must not fail, nor a scrape go blind, because the service is busy; they are
cheap, and they still wait in the bounded queue like everyone.

`AdmissionQueue` keeps the count and gives each request its `Verdict`
(service/gunicorn_worker.py calls it from gthread's accept loop and its
threads); `OverloadGate` is the WSGI middleware that answers the refusal.
This module knows WSGI, the service's problem format and its metrics, and
nothing of gunicorn.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NamedTuple

from service import metrics
from service.api.errors import PROBLEM_MEDIA_TYPE
from service.api.headers import API_CONTENT_SECURITY_POLICY, NO_STORE, SECURITY_HEADERS
from service.api.request_log import REQUEST_ID_PATTERN
from service.config import Config

logger = logging.getLogger(__name__)

CODE = "overloaded"
STATUS = "503 Service Unavailable"
RETRY_AFTER_SECONDS = 1
EXEMPT_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
EXEMPT_METHODS = frozenset({"GET", "HEAD"})
QUEUE_FULL = "queue_full"
QUEUE_WAIT = "queue_wait"
SHED_LOG_INTERVAL_SECONDS = 1.0
UNKNOWN_LOCK_MODE = "unknown"
# Set on every request the gate sees: the worker (service/gunicorn_worker.py) bounds
# this request's reads (one deadline for head and body) and its answer's writes.
WORKER_BOUNDS_IO = "bankrace.worker_bounds_io"

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
StartResponse = Callable[..., Any]


@dataclass(frozen=True)
class OverloadLimits:
    """Per worker process: requests that may wait for a thread, and for how long."""

    max_queued_requests: int
    max_queue_wait_ms: int

    @classmethod
    def from_config(cls, config: Config) -> OverloadLimits:
        return cls(config.queue_max_requests, config.queue_wait_max_ms)


class Ticket(NamedTuple):
    """A request's place in the queue: when it joined, and whether it was let in.

    A named tuple rather than a frozen dataclass: one is made for every
    request, and a frozen dataclass's constructor costs several times more.
    """

    enqueued_at: float
    admitted: bool


class Verdict(NamedTuple):
    """What a request's turn decided: `shed_reason` None means serve it."""

    shed_reason: str | None
    waited_seconds: float


SERVE_AT_ONCE = Verdict(None, 0.0)


class AdmissionQueue:
    """Counts the requests waiting for a thread; `arrive` and `leave` give each its verdict.

    `arrive` runs when a request joins the thread pool's queue (gthread's main
    thread), `leave` when a thread takes it. A refused request is not counted
    among the waiting, so it never pushes out another one.
    """

    def __init__(self, limits: OverloadLimits, clock: Callable[[], float] = time.monotonic):
        self.limits = limits
        self._clock = clock
        self._guard = threading.Lock()
        self._waiting = 0

    @property
    def waiting(self) -> int:
        return self._waiting

    def arrive(self) -> Ticket:
        with self._guard:
            admitted = self._waiting < self.limits.max_queued_requests
            if admitted:
                self._waiting += 1
        return Ticket(self._clock(), admitted)

    def overdue_in(self, ticket: Ticket) -> float:
        """Seconds until an admitted request has waited its bound (0 or less: it has)."""
        return ticket.enqueued_at + self.limits.max_queue_wait_ms / 1000 - self._clock()

    def expire(self, ticket: Ticket) -> Verdict:
        """An admitted request that waited its bound and no thread took: it leaves, refused."""
        with self._guard:
            self._waiting -= 1
        return Verdict(QUEUE_WAIT, max(self._clock() - ticket.enqueued_at, 0.0))

    def leave(self, ticket: Ticket) -> Verdict:
        waited_seconds = max(self._clock() - ticket.enqueued_at, 0.0)
        if not ticket.admitted:
            return Verdict(QUEUE_FULL, waited_seconds)
        with self._guard:
            self._waiting -= 1
        if waited_seconds * 1000 > self.limits.max_queue_wait_ms:
            return Verdict(QUEUE_WAIT, waited_seconds)
        return Verdict(None, waited_seconds)


class OverloadGate:
    """WSGI middleware: serves a request, or answers 503 `overloaded` without calling the app.

    The worker states each request's verdict with `deciding(verdict)` around
    the call, in the thread that serves it.
    """

    def __init__(self, app: WsgiApp, limits: OverloadLimits, worker: str = "this worker"):
        self.app = app
        self.limits = limits
        self.worker = worker
        self._current = threading.local()
        # The lock mode of the latest POST this process answered: a refused POST
        # names it in X-Lock-Mode, as a refusal before a mode is chosen does.
        self.last_lock_mode = UNKNOWN_LOCK_MODE
        self._shed_since_log: Counter[str] = Counter()
        self._last_log = time.monotonic() - SHED_LOG_INTERVAL_SECONDS  # the first is logged
        self._log_guard = threading.Lock()

    @contextmanager
    def deciding(self, verdict: Verdict) -> Iterator[None]:
        self.decide(verdict)
        try:
            yield
        finally:
            self.decided()

    def decide(self, verdict: Verdict) -> None:
        """The verdict of this thread's next request (`decided` after it, always)."""
        self._current.verdict = verdict

    def decided(self) -> None:
        self._current.verdict = SERVE_AT_ONCE

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        verdict: Verdict = getattr(self._current, "verdict", SERVE_AT_ONCE)
        environ[WORKER_BOUNDS_IO] = True
        if _exempt(environ):
            return self.app(environ, start_response)
        if verdict.shed_reason is not None:
            return self._refuse(environ, start_response, verdict)
        metrics.queue_waited(verdict.waited_seconds)
        if environ.get("REQUEST_METHOD") != "POST":
            return self.app(environ, start_response)
        return self.app(environ, self._remembering_lock_mode(start_response))

    def _remembering_lock_mode(self, start_response: StartResponse) -> StartResponse:
        def remembering(status: str, headers: list[tuple[str, str]], *rest: Any) -> Any:
            for name, value in headers:
                if name == "X-Lock-Mode":
                    self.last_lock_mode = value
            return start_response(status, headers, *rest)

        return remembering

    def _refuse(
        self, environ: dict[str, Any], start_response: StartResponse, verdict: Verdict
    ) -> Iterable[bytes]:
        reason = verdict.shed_reason or QUEUE_FULL
        body = problem_body(
            refusal_detail(reason, verdict.waited_seconds, self.limits), environ.get("PATH_INFO")
        )
        given_id = environ.get("HTTP_X_REQUEST_ID", "")
        headers = [
            ("Content-Type", PROBLEM_MEDIA_TYPE),
            ("Content-Length", str(len(body))),
            ("Retry-After", str(RETRY_AFTER_SECONDS)),
            ("X-Request-ID", given_id if REQUEST_ID_PATTERN.fullmatch(given_id) else _new_id()),
            *SECURITY_HEADERS.items(),
            ("Content-Security-Policy", API_CONTENT_SECURITY_POLICY),
            ("Cache-Control", NO_STORE),
        ]
        if environ.get("REQUEST_METHOD") == "POST":
            headers.append(("X-Lock-Mode", self.last_lock_mode))
        # Closed after the answer: the client's next try opens a new connection,
        # which the kernel deals to any worker, instead of returning to this one.
        headers.append(("Connection", "close"))
        start_response(STATUS, headers)
        metrics.request_shed(reason)
        metrics.problem_answered(503, CODE)
        self._log_now_and_then(reason)
        return [body]

    def _log_now_and_then(self, reason: str) -> None:
        """One warning a second at most, with the counts since the last one (never one a shed).

        The refusals of a last quiet second are told with the next refusal;
        /metrics counts every one at once.
        """
        with self._log_guard:
            self._shed_since_log[reason] += 1
            now = time.monotonic()
            if now - self._last_log < SHED_LOG_INTERVAL_SECONDS:
                return
            counts, self._shed_since_log = self._shed_since_log, Counter()
            elapsed_seconds, self._last_log = now - self._last_log, now
        logger.warning(
            "overloaded: %s shed %d requests with 503 in the last %.1f s (%s); bounds: %d "
            "waiting, %d ms wait",
            self.worker,
            sum(counts.values()),
            elapsed_seconds,
            ", ".join(f"{name} {count}" for name, count in sorted(counts.items())),
            self.limits.max_queued_requests,
            self.limits.max_queue_wait_ms,
        )


def _exempt(environ: dict[str, Any]) -> bool:
    return environ.get("PATH_INFO") in EXEMPT_PATHS and environ.get("REQUEST_METHOD") in (
        EXEMPT_METHODS
    )


def _new_id() -> str:
    return uuid.uuid4().hex


def refusal_detail(reason: str, waited_seconds: float, limits: OverloadLimits) -> str:
    if reason == QUEUE_WAIT:
        why = (
            f"this request waited {waited_seconds * 1000:.0f} ms for a thread, longer than "
            f"the {limits.max_queue_wait_ms} ms bound"
        )
    else:
        why = f"{limits.max_queued_requests} requests were already waiting for a thread"
    return (
        f"the service is over capacity: {why}; nothing was done, "
        f"retry after {RETRY_AFTER_SECONDS} s"
    )


def problem_body(detail: str, path: str | None) -> bytes:
    """The service's problem document (service/api/errors.py `problem`), for `overloaded`."""
    return json.dumps(
        {
            "type": f"urn:bankrace:problem:{CODE}",
            "title": CODE.capitalize(),
            "status": 503,
            "detail": detail,
            "code": "overloaded",  # CODE, written out for tests/api/test_openapi.py
            "instance": path,
        }
    ).encode()
