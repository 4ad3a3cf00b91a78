"""What each endpoint takes and answers, declared once for the views and the OpenAPI document.

A view validates its request with these declarations (a body model of
`service.api.bodies`, `parsing.query_values`) and carries its `Endpoint`
(`@documented`), from which `service.api.openapi` writes the document: the
document cannot name a field the service refuses, or miss one it takes.

Nothing here reads a request or knows Flask's request context.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from service.api.bodies import RequestBody

ViewFunction = TypeVar("ViewFunction", bound=Callable[..., Any])

ENDPOINT_ATTRIBUTE = "bankrace_endpoint"
# `<converter(arguments):name>` or `<name>` in a werkzeug rule.
RULE_ARGUMENT = re.compile(r"<(?:(?P<converter>\w+)(?:\((?P<arguments>[^)]*)\))?:)?(?P<name>\w+)>")


@dataclass(frozen=True)
class QueryInteger:
    """An integer query parameter in [minimum, maximum]; `default` when it is absent."""

    name: str
    minimum: int
    maximum: int
    default: int | None
    description: str

    def json_schema(self) -> dict[str, Any]:
        schema: dict[str, Any] = {
            "type": "integer",
            "minimum": self.minimum,
            "maximum": self.maximum,
        }
        if self.default is not None:
            schema["default"] = self.default
        return schema

    def openapi_fields(self) -> dict[str, Any]:
        return {"required": False}


@dataclass(frozen=True)
class QueryIdList:
    """A required list of distinct ids in one parameter, comma-separated: `ids=3,1,2`.

    OpenAPI calls this an array in `form` style, not exploded; the order given
    is the order answered.
    """

    name: str
    maximum: int
    max_items: int
    description: str

    def json_schema(self) -> dict[str, Any]:
        return {
            "type": "array",
            "items": {"type": "integer", "minimum": 1, "maximum": self.maximum},
            "minItems": 1,
            "maxItems": self.max_items,
            "uniqueItems": True,
        }

    def openapi_fields(self) -> dict[str, Any]:
        """What the OpenAPI parameter object says beyond name, description and schema."""
        return {"required": True, "style": "form", "explode": False}


@dataclass(frozen=True)
class QueryChoice:
    """An optional query parameter taking one of a few words (no default: absent means any)."""

    name: str
    choices: tuple[str, ...]
    description: str

    def json_schema(self) -> dict[str, Any]:
        return {"type": "string", "enum": list(self.choices)}

    def openapi_fields(self) -> dict[str, Any]:
        return {"required": False}


@dataclass(frozen=True)
class Success:
    """The answer when all went well: status, shape (service.api.representations) and media type."""

    status: int
    description: str
    shape: type[Any] | None = None
    media_type: str = "application/json"
    #: 201: `Location` names the created resource.
    location: bool = False
    #: A route serving files of several kinds: each media type it may answer with.
    other_media_types: tuple[str, ...] = ()


@dataclass(frozen=True)
class Endpoint:
    """One operation as the OpenAPI document describes it."""

    summary: str
    tag: str
    success: Success
    description: str = ""
    body: type[RequestBody] | None = None
    query: tuple[QueryInteger | QueryIdList | QueryChoice, ...] = ()
    #: Problem `code`s this operation can answer (statuses: service/api/openapi.py).
    problems: tuple[str, ...] = ()
    #: Accepts `Idempotency-Key` (every POST that moves money or opens an account).
    idempotent: bool = False
    #: Needs `Authorization: Bearer <BANK_ADMIN_TOKEN>`.
    admin: bool = False
    extra: Mapping[str, Any] = field(default_factory=dict)


def documented(endpoint: Endpoint) -> Callable[[ViewFunction], ViewFunction]:
    """Attach `endpoint` to a view; put it below the route decorator."""

    def attach(view: ViewFunction) -> ViewFunction:
        setattr(view, ENDPOINT_ATTRIBUTE, endpoint)
        return view

    return attach


def endpoint_of(view: Callable[..., Any]) -> Endpoint | None:
    found = getattr(view, ENDPOINT_ATTRIBUTE, None)
    return found if isinstance(found, Endpoint) else None


def openapi_path(rule: str) -> str:
    """`/accounts/<id:account_id>` -> `/accounts/{account_id}` (also the metrics' route label)."""
    return RULE_ARGUMENT.sub(lambda match: "{" + match["name"] + "}", rule)


def rule_arguments(rule: str) -> list[tuple[str, str, str]]:
    """(name, converter, converter arguments) of each variable part of a werkzeug rule."""
    return [
        (match["name"], match["converter"] or "default", match["arguments"] or "")
        for match in RULE_ARGUMENT.finditer(rule)
    ]


# --------------------------------------------------------------------------- shared


# A write can also lose its COMMIT on the way: 503 outcome_unknown, it may have been applied.
WRITE_PROBLEMS = ("lock_timeout", "store_unavailable", "outcome_unknown")
BODY_PROBLEMS = (
    "unsupported_media_type",
    "payload_too_large",
    "request_timeout",
    "malformed_json",
    "validation_error",
)
IDEMPOTENCY_PROBLEMS = (
    "invalid_idempotency_key",
    "idempotency_key_reused",
    "idempotency_in_progress",
)
MONEY_PROBLEMS = (
    *BODY_PROBLEMS,
    *IDEMPOTENCY_PROBLEMS,
    "not_found",
    "write_conflict",
    "stale_lock",
    *WRITE_PROBLEMS,
)
