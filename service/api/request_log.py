"""Per-request bookkeeping: the request id, the response headers, one log line per request.

`X-Request-ID` is taken from the request when it is printable ASCII of at
most 200 characters (so nginx's id, or the client's, follows the request
into this replica's log), otherwise generated; it is echoed on the response
and stamped on every line logged while the request is served
(service/logs.py). Every POST response names the lock mode in `X-Lock-Mode`.

The line logged per request says who asked what and how it ended: method,
path, status, duration, the lock mode of a POST, the account ids involved
(named in the path, a transfer's two, the one just opened), the problem code
and detail of a refusal. It never holds a header, a query
string, a body or anything read from an account; the only values taken from
a transfer's body are its two account ids, and only once that body parsed.
"""

from __future__ import annotations

import logging
import os
import re
import time
from functools import lru_cache
from typing import Any

from flask import Flask, Request, Response, g, request

from service import metrics
from service.api.bodies import MAX_ID
from service.api.context import current_bank
from service.api.errors import ProblemError
from service.api.parsing import json_object
from service.api.spec import openapi_path

logger = logging.getLogger(__name__)

REQUEST_ID_PATTERN = re.compile(r"[\x21-\x7e]{1,200}")
TRANSFER_ENDPOINT = "transfers.create_transfer"
# Statuses a transfer only gets after its body was read and parsed as a JSON
# object (a 400, 408, 413 or 415 comes before; a 500 may come from anywhere):
# only then is the cached body looked at again, so the log never reads a
# body from the socket that the request itself did not read.
TRANSFER_PARSED_STATUSES = frozenset({201, 404, 409, 422, 503})
OPEN_ACCOUNT_ENDPOINT = "accounts.open_account"
OPENED_ACCOUNT_LOCATION = re.compile(r"/accounts/(?P<account_id>[0-9]+)")
SERVICE_UNAVAILABLE = 503
# The request line is logged without logging's caller lookup (a walk up the
# stack on every request): no field of the line names a source file or line.
UNKNOWN_SOURCE = ("(unknown file)", 0)


def install(app: Flask) -> None:
    app.before_request(remember_request_id)
    app.after_request(finish_request)


def finish_request(response: Response) -> Response:
    """The headers first, then the line is logged with the response as sent, then counted.

    One hook rather than three: Flask looks each hook up and checks it for
    a coroutine on every request. The request and `g` are looked up once
    here (each access through Flask's proxies is a context-variable lookup).
    """
    served: Request = request._get_current_object()  # type: ignore[attr-defined]
    context = g._get_current_object()
    request_id = context.get("request_id") or new_request_id()
    tag_response(response, served, context, request_id)
    log_request(response, served, context, request_id)
    count_request(response, served, context)
    return response


def new_request_id() -> str:
    """32 random hex digits: unique across workers and restarts without a shared counter.

    The same shape as uuid4().hex (what clients and nginx's ids look like)
    at a fifth of its cost: 16 bytes of the kernel's randomness, no UUID object.
    """
    return os.urandom(16).hex()


def remember_request_id() -> None:
    context = g._get_current_object()
    context.request_started = time.perf_counter()
    given = request.environ.get("HTTP_X_REQUEST_ID", "")
    context.request_id = given if REQUEST_ID_PATTERN.fullmatch(given) else new_request_id()


def tag_response(response: Response, served: Request, context: Any, request_id: str) -> None:
    response.headers["X-Request-ID"] = request_id
    if served.method == "POST":
        lock_mode = context.get("lock_mode")
        if lock_mode is None:
            # Refused before a mode was chosen (415, 422, ...): name the mode
            # that would have served it.
            try:
                lock_mode = current_bank().modes.current().lock_mode.value
            except Exception:  # the store is down: the header must not turn a 4xx into a 500
                lock_mode = "unknown"
        response.headers["X-Lock-Mode"] = lock_mode


def count_request(response: Response, served: Request, context: Any) -> None:
    """The request in /metrics: by route template (never the path), status and problem code."""
    rule = served.url_rule
    started: float | None = context.get("request_started")
    duration_seconds = None if started is None else time.perf_counter() - started
    route = route_label(rule.rule) if rule is not None else None
    metrics.request_answered(served.method, route, response.status_code, duration_seconds)
    problem = context.get("problem")
    if problem is not None:
        metrics.problem_answered(response.status_code, problem[0])


@lru_cache(maxsize=256)
def route_label(rule: str) -> str:
    """The metrics' route label of a URL rule, worked out once per rule (there are a few dozen)."""
    return openapi_path(rule)


def log_request(response: Response, served: Request, context: Any, request_id: str) -> None:
    status = response.status_code
    level = _level(status)
    if not logger.isEnabledFor(level):
        return
    method, path = served.method, served.path
    try:
        fields = _request_fields(served, response, context)
    except Exception:  # the log line must never change the answer
        logger.exception("could not describe %s %s %s", method, path, status)
        fields = {"method": method, "path": path, "status": status}
    # The filter of service/logs.py would stamp the same id, last, on the line.
    fields["request_id"] = request_id
    record = logger.makeRecord(
        logger.name, level, *UNKNOWN_SOURCE, "%s %s %s", (method, path, status), None,
        extra=fields,
    )  # fmt: skip
    logger.handle(record)


def _request_fields(served: Request, response: Response, context: Any) -> dict[str, Any]:
    method = served.method
    started: float | None = context.get("request_started")
    fields: dict[str, Any] = {
        "method": method,
        "path": served.path,
        "status": response.status_code,
        "duration_ms": None if started is None else _duration_ms(started),
        "client_address": served.remote_addr,
        "account_ids": _account_ids(response),
    }
    if method == "POST":
        fields["lock_mode"] = response.headers.get("X-Lock-Mode")
    problem = context.get("problem")
    if problem is not None:
        fields["code"], fields["detail"] = problem
    return fields


def _level(status: int) -> int:
    if status == SERVICE_UNAVAILABLE:
        return logging.WARNING  # busy or down: expected under load, worth watching
    if status >= 500:
        return logging.ERROR  # a bug; its traceback is the line before this one
    return logging.INFO


def _duration_ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)


def _account_ids(response: Response) -> list[int]:
    """The accounts the request names (route, parsed transfer body) or opened (Location)."""
    served: Request = request._get_current_object()  # type: ignore[attr-defined]
    view_args = served.view_args or {}
    account_ids = [view_args["account_id"]] if "account_id" in view_args else []
    endpoint = served.endpoint
    if endpoint == TRANSFER_ENDPOINT and response.status_code in TRANSFER_PARSED_STATUSES:
        account_ids += _transfer_account_ids()
    if endpoint == OPEN_ACCOUNT_ENDPOINT and response.status_code == 201:
        opened = OPENED_ACCOUNT_LOCATION.fullmatch(response.headers.get("Location", ""))
        account_ids += [int(opened["account_id"])] if opened else []
    return account_ids


def _transfer_account_ids() -> list[int]:
    try:
        body = json_object()  # the body the view parsed, from Flask's cache
    except ProblemError:
        return []
    return [
        value
        for value in (body.get("from_account"), body.get("to_account"))
        if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_ID
    ]
