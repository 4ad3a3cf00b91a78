"""Turning a request into validated values, or a refusal that changes nothing.

Order of checks: media type (415), size (413, enforced by Flask's
MAX_CONTENT_LENGTH), JSON syntax and top-level object (400), then every
field at once (422 with one entry per bad field, unknown fields included).
What a body may hold is declared in `service.api.bodies`, what a query may
hold in `service.api.spec`; the OpenAPI document is written from both.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from flask import request
from gunicorn.http.errors import ParseException
from werkzeug.exceptions import ClientDisconnected

from service.api.bodies import MAX_ID_DIGITS as MAX_ID_DIGITS  # service/__init__.py takes it here
from service.api.errors import ProblemError
from service.api.spec import QueryIdList, QueryInteger
from service.domain import FieldError, ValidationFailed

MAX_BODY_BYTES = 64 * 1024
MAX_PAGE_SIZE = 500
DEFAULT_PAGE_SIZE = 50
# One id of a list: what the path converter takes too (no sign, no leading zero).
CANONICAL_ID = re.compile(rf"[1-9][0-9]{{0,{MAX_ID_DIGITS - 1}}}")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # {"amount": 5, "amount": 1} means 5 to some parsers and 1 to others
    # (Python keeps the last); money must not depend on which one reads it.
    value = dict(pairs)
    if len(value) != len(pairs):
        raise ValueError("duplicate key in a JSON object")
    return value


def json_object() -> dict[str, Any]:
    if request.mimetype != "application/json":
        raise ProblemError(
            415, "unsupported_media_type", "send the body as Content-Type: application/json"
        )
    try:
        raw = request.get_data(cache=True)
    except (ClientDisconnected, TimeoutError):
        # The body missed its deadline (under `bankrace serve` the worker's one deadline
        # for head and body, service/gunicorn_worker.py; under plain gunicorn a read
        # timeout, service._bound_body_reads), or the client went away.
        raise ProblemError(
            408, "request_timeout", "the request body did not arrive in full; nothing was changed"
        ) from None
    except ParseException:
        # gunicorn reads a chunked body lazily: broken framing surfaces here.
        raise ProblemError(
            400, "malformed_json", "the chunked body is malformed; nothing was changed"
        ) from None
    if request.content_length is not None and len(raw) < request.content_length:
        # The client closed its side before sending Content-Length bytes:
        # gunicorn hands over what came, and a cut-off body must not be run.
        raise ProblemError(
            408, "request_timeout", "the request body did not arrive in full; nothing was changed"
        )
    try:
        # JSON on the wire is UTF-8 (RFC 8259 section 8.1); json.loads would
        # also guess UTF-16/32 from bytes, so decode strictly first (a BOM is
        # tolerated, as the RFC allows).
        value = json.loads(
            raw.decode("utf-8-sig"),
            parse_constant=_reject_constant,
            object_pairs_hook=_unique_keys,
        )
    except (ValueError, RecursionError):
        raise ProblemError(400, "malformed_json", "the body is not valid JSON") from None
    if not isinstance(value, dict):
        raise ProblemError(400, "malformed_json", "the body must be a JSON object")
    return value


def query_integer(name: str, default: int | None, minimum: int, maximum: int) -> int | None:
    raw = request.args.get(name)
    if raw is None:
        return default
    if not raw.isascii() or not raw.isdigit() or len(raw) > MAX_ID_DIGITS:
        raise ValidationFailed(
            [FieldError(name, f"must be an integer from {minimum} to {maximum}")]
        )
    value = int(raw)
    if not minimum <= value <= maximum:
        raise ValidationFailed(
            [FieldError(name, f"must be an integer from {minimum} to {maximum}")]
        )
    return value


def query_values(
    parameters: Sequence[QueryInteger], also_allowed: frozenset[str] = frozenset()
) -> dict[str, int | None]:
    """Each declared query parameter (or its default); any other parameter is refused.

    `also_allowed` names parameters the view reads itself (not integers).
    """
    unknown_query_parameters({parameter.name for parameter in parameters} | also_allowed)
    return {
        parameter.name: query_integer(
            parameter.name, parameter.default, parameter.minimum, parameter.maximum
        )
        for parameter in parameters
    }


def unknown_query_parameters(allowed: set[str]) -> None:
    unknown = [name for name in request.args if name not in allowed]
    if unknown:
        raise ValidationFailed([FieldError(name, "unknown query parameter") for name in unknown])


def query_id_list(parameter: QueryIdList) -> list[int]:
    """The ids of a `ids=3,1,2` parameter, in order; junk, repeats or too many are refused."""
    values = request.args.getlist(parameter.name)
    if not values:
        raise ValidationFailed([FieldError(parameter.name, "is required")])
    if len(values) > 1:
        raise ValidationFailed(
            [FieldError(parameter.name, "give it once, as a comma-separated list: ids=1,2,3")]
        )
    parts = values[0].split(",")
    if len(parts) > parameter.max_items:
        raise ValidationFailed(
            [FieldError(parameter.name, f"names more than {parameter.max_items} ids")]
        )
    if not all(CANONICAL_ID.fullmatch(part) for part in parts):
        raise ValidationFailed(
            [
                FieldError(
                    parameter.name,
                    f"must be 1 to {parameter.max_items} account ids (positive integers, no "
                    "leading zero), separated by commas",
                )
            ]
        )
    ids = [int(part) for part in parts]
    seen: set[int] = set()
    for value in ids:
        if value in seen:
            raise ValidationFailed([FieldError(parameter.name, f"names account {value} twice")])
        seen.add(value)
    return ids
