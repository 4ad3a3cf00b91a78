"""Every error as application/problem+json (RFC 9457), never a stack trace.

Domain refusals map to the status and `code` of DESIGN §3; Werkzeug's HTTP
errors (404 route, 405, 413, 415, 400) get the same shape; anything else is
a bug: it is logged with its traceback on the server and the client gets a
bare 500 problem with no detail from the exception. The code and detail of
every problem are kept in `flask.g` for the request's log line.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from flask import Flask, Response, g, has_request_context, json, request
from werkzeug.exceptions import HTTPException

from service.domain import (
    BalanceLimitExceeded,
    CurrencyMismatch,
    DomainError,
    FieldError,
    HoldNotPending,
    InsufficientFunds,
    NotFound,
    SameAccount,
    StaleLock,
    Unavailable,
    UnsafeModeRefused,
    ValidationFailed,
)
from service.idempotency import (
    IdempotencyInProgress,
    IdempotencyKeyReused,
    InvalidIdempotencyKey,
)

logger = logging.getLogger(__name__)

PROBLEM_MEDIA_TYPE = "application/problem+json"

DOMAIN_STATUS: dict[type[DomainError], int] = {
    NotFound: 404,
    InsufficientFunds: 409,
    BalanceLimitExceeded: 409,
    StaleLock: 409,
    HoldNotPending: 409,
    SameAccount: 422,
    CurrencyMismatch: 422,
    ValidationFailed: 422,
    UnsafeModeRefused: 403,
    Unavailable: 503,
    InvalidIdempotencyKey: 400,
    IdempotencyKeyReused: 422,
    IdempotencyInProgress: 409,
}

HTTP_CODES = {
    400: "malformed_json",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


class ProblemError(Exception):
    """An HTTP-level refusal raised by the API layer itself (auth, body shape)."""

    def __init__(
        self, status: int, code: str, detail: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail
        self.headers = headers or {}


def problem(
    status: int,
    code: str,
    detail: str,
    *,
    errors: Sequence[FieldError] = (),
    headers: dict[str, str] | None = None,
) -> Response:
    body: dict[str, object] = {
        "type": f"urn:bankrace:problem:{code}",
        "title": code.replace("_", " ").capitalize(),
        "status": status,
        "detail": detail,
        "code": code,
        "instance": request.path if request else None,
    }
    if errors:
        body["errors"] = [{"field": error.field, "message": error.message} for error in errors]
    response = Response(json.dumps(body), status=status, mimetype=PROBLEM_MEDIA_TYPE)
    response.headers.update(headers or {})
    if has_request_context():  # the request's log line names it (service/api/request_log.py)
        g.problem = (code, detail)
    return response


def _status_for(error: DomainError) -> int:
    for kind in type(error).__mro__:
        if kind in DOMAIN_STATUS:
            return DOMAIN_STATUS[kind]
    return 400


def handle_domain_error(error: DomainError) -> Response:
    status = _status_for(error)
    headers = {}
    if isinstance(error, Unavailable | IdempotencyInProgress):
        headers["Retry-After"] = str(error.retry_after_seconds)
    errors = error.errors if isinstance(error, ValidationFailed) else ()
    return problem(status, error.code, error.detail, errors=errors, headers=headers)


def handle_problem_error(error: ProblemError) -> Response:
    return problem(error.status, error.code, error.detail, headers=error.headers)


def handle_http_exception(error: HTTPException) -> Response:
    status = error.code or 500
    code = HTTP_CODES.get(status, (error.name or "error").lower().replace(" ", "_"))
    detail = error.description or error.name
    headers = {}
    if status == 405 and error.get_response().headers.get("Allow"):
        headers["Allow"] = error.get_response().headers["Allow"]
    if status == 404:
        detail = f"no resource at {request.path}"
    return problem(status, code, detail, headers=headers)


def handle_unexpected(error: Exception) -> Response:
    # The traceback goes to the server's log only, stamped with the request id
    # that the client gets back in X-Request-ID, so the two can be matched.
    logger.exception("unhandled error on %s %s", request.method, request.path)
    return problem(500, "internal_error", "an internal error occurred; it has been logged")


def register_error_handlers(app: Flask) -> None:
    app.register_error_handler(DomainError, handle_domain_error)
    app.register_error_handler(ProblemError, handle_problem_error)
    app.register_error_handler(HTTPException, handle_http_exception)
    app.register_error_handler(Exception, handle_unexpected)
