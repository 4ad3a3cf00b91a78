"""The OpenAPI 3.1 document, written from the app's routes and the views' declarations.

Every route of `app.url_map` is described from the `Endpoint` its view
carries (service/api/spec.py): the body schemas are the very declarations
the views validate with, the path parameters come from the route's
converters, the problem statuses from the exception classes and the tables
of service/api/errors.py. A route whose view declares nothing stops the
document from being written (tests/api/test_openapi.py would fail), so no
route can go undocumented.

The schemas of bodies and answers are pydantic's, from the declarations
the views validate with (service/api/bodies.py) and answer with
(service/api/representations.py); apispec assembles the document
(components, `$ref`s by name, only the components an operation uses).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from apispec import APISpec
from flask import Flask
from pydantic import TypeAdapter
from pydantic.json_schema import GenerateJsonSchema

from service.api import auth
from service.api.bodies import MAX_ID
from service.api.errors import DOMAIN_STATUS, HTTP_CODES, PROBLEM_MEDIA_TYPE
from service.api.parsing import MAX_BODY_BYTES
from service.api.request_log import REQUEST_ID_PATTERN
from service.api.spec import Endpoint, endpoint_of, openapi_path, rule_arguments
from service.domain import (
    AuditTimeout,
    BalanceLimitExceeded,
    CurrencyMismatch,
    DomainError,
    HoldNotPending,
    InsufficientFunds,
    LockMode,
    LockTimeout,
    NotFound,
    OutcomeUnknown,
    SameAccount,
    StaleLock,
    StoreUnavailable,
    ValidationFailed,
    WriteConflict,
)
from service.idempotency import (
    KEY_HEADER,
    KEY_PATTERN,
    REPLAYED_HEADER,
    IdempotencyInProgress,
    IdempotencyKeyReused,
    InvalidIdempotencyKey,
)

OPENAPI_VERSION = "3.1.0"
TITLE = "bankrace"
EXTENSION_KEY = "bankrace.openapi"
IGNORED_METHODS = frozenset({"HEAD", "OPTIONS"})
REFERENCE = "#/components/schemas/{model}"
# Refusals decided by running the operation: stored with an Idempotency-Key
# and replayed (service/api/idempotent.py DECIDED_REFUSALS).
REPLAYED_PROBLEMS = frozenset(
    kind.code
    for kind in (
        NotFound,
        InsufficientFunds,
        BalanceLimitExceeded,
        SameAccount,
        CurrencyMismatch,
        HoldNotPending,
    )
)
DESCRIPTION = f"""\
A bank-transaction service that never loses money when locked, and shows how
money is lost when it is not (the lock mode is switchable at run time).

Money is integers in minor units. Every error is `{PROBLEM_MEDIA_TYPE}`
(RFC 9457) with a stable `code` (schema `ProblemCode` lists them all); a refused
request changes nothing. Every response carries `X-Request-ID`, every POST
response `X-Lock-Mode`. Bodies are at most {MAX_BODY_BYTES // 1024} KiB.
"""


@dataclass(frozen=True)
class Problem:
    status: int
    code: str
    meaning: str


def domain_status(kind: type[DomainError]) -> int:
    """The status service/api/errors.py answers for this domain error class."""
    for base in kind.__mro__:
        if base in DOMAIN_STATUS:
            return DOMAIN_STATUS[base]
    return 400


def _domain(kind: type[DomainError], meaning: str) -> Problem:
    return Problem(domain_status(kind), kind.code, meaning)


def _http(status: int, meaning: str) -> Problem:
    return Problem(status, HTTP_CODES[status], meaning)


PROBLEMS: dict[str, Problem] = {
    problem.code: problem
    for problem in (
        _http(400, "the body is not valid JSON (duplicate keys and NaN included) or not an object"),
        _domain(InvalidIdempotencyKey, f"`{KEY_HEADER}` is not 1 to 255 printable ASCII"),
        _http(401, "no `Authorization: Bearer` token, or not one the service takes"),
        _http(403, "admin is off, the admin token is wrong, or the lock mode is unsafe here"),
        _domain(NotFound, "unknown account, transfer, transaction or route"),
        _http(405, "the path exists, the method does not (see `Allow`)"),
        Problem(408, "request_timeout", "the request head or body stopped arriving"),
        _domain(
            InsufficientFunds,
            "the available money (balance less pending holds) does not cover the amount",
        ),
        _domain(
            HoldNotPending,
            "the hold is already captured, voided or expired (the detail names which)",
        ),
        _domain(BalanceLimitExceeded, "a balance would pass 2**53 - 1"),
        _domain(
            StaleLock,
            "`fenced`: this request's Redis lock expired and a newer holder took the account; "
            "nothing was written, a retry may succeed",
        ),
        _domain(IdempotencyInProgress, "a request with this key is still running (Retry-After)"),
        _http(413, f"the body is over {MAX_BODY_BYTES // 1024} KiB"),
        _http(415, "the body is not sent as `Content-Type: application/json`"),
        _domain(ValidationFailed, "fields missing, of the wrong type, out of range or unknown"),
        _domain(SameAccount, "a transfer names one account twice"),
        _domain(CurrencyMismatch, "a transfer between accounts of different currencies"),
        _domain(IdempotencyKeyReused, "this key was used for a different request"),
        Problem(500, "internal_error", "a bug: logged on the server with the request id"),
        # Answered by the HTTP server before the app sees the request (service/http_problems.py).
        Problem(400, "malformed_request", "the HTTP request line, a header or the framing is bad"),
        Problem(414, "uri_too_long", "the request line is over 4094 bytes"),
        Problem(417, "expectation_failed", "an `Expect` header other than `100-continue`"),
        Problem(431, "header_fields_too_large", "over 100 header fields, or one over 8190 bytes"),
        Problem(501, "not_implemented", "a `Transfer-Encoding` other than `chunked`"),
        _domain(LockTimeout, "a lock wait ran out, or the database broke a deadlock"),
        _domain(WriteConflict, "optimistic or database retries ran out"),
        _domain(AuditTimeout, "the audit ran past its time bound"),
        _domain(
            StoreUnavailable,
            "the database cannot be reached or is not migrated, or (in `redis-lock` and "
            "`fenced`) Redis cannot be reached",
        ),
        _domain(
            OutcomeUnknown,
            "a write's COMMIT failed on the way: it may have been applied (the only 503 that "
            "may have changed something); repeat it with the same `Idempotency-Key` to learn "
            "which",
        ),
        Problem(503, "overloaded", "over capacity: refused before running (Retry-After)"),
    )
}
TAGS = {
    "accounts": "open accounts, move money, read journals and audits",
    "transfers": "money between two accounts, and single journal entries",
    "holds": "authorize now, capture or void later: money reserved on an account",
    "mode": "the lock mode and race window: how a balance change is protected",
    "operations": "health, readiness, the bank-wide audit, metrics and this document",
}
# Answered by any route, so described once under `default`.
# The HTTP server's own refusals (GUNICORN_PROBLEM_CODES) are among them.
GENERIC_PROBLEMS = (
    "method_not_allowed",
    "internal_error",
    "overloaded",
    "malformed_request",
    "uri_too_long",
    "expectation_failed",
    "header_fields_too_large",
    "not_implemented",
)

INTEGER = {"type": "integer"}
LOCK_MODE = {"type": "string", "enum": [mode.value for mode in LockMode]}

# The problem's shape is written by service/api/errors.py; every other body
# and answer schema comes from its declaration (`declared_schemas`).
PROBLEM_SCHEMAS: dict[str, dict[str, Any]] = {
    "FieldError": {
        "type": "object",
        "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
        "required": ["field", "message"],
    },
    "ProblemCode": {
        "type": "string",
        "enum": list(PROBLEMS),
        "description": "\n".join(
            f"- `{problem.code}` ({problem.status}): {problem.meaning}"
            for problem in PROBLEMS.values()
        ),
    },
    "Problem": {
        "type": "object",
        "description": "RFC 9457 problem details",
        "properties": {
            "type": {"type": "string"},
            "title": {"type": "string"},
            "status": {"type": "integer"},
            "detail": {"type": "string"},
            "code": {"$ref": "#/components/schemas/ProblemCode"},
            "instance": {"type": ["string", "null"]},
            "errors": {
                "type": "array",
                "items": {"$ref": "#/components/schemas/FieldError"},
                "description": "validation_error: one entry per bad field",
            },
        },
        "required": ["type", "title", "status", "detail", "code", "instance"],
    },
}

HEADERS: dict[str, dict[str, Any]] = {
    "X-Request-ID": {
        "description": "the request's id: the one sent, if usable, else a new one",
        "schema": {"type": "string"},
    },
    "X-Lock-Mode": {"description": "the lock mode that served this POST", "schema": LOCK_MODE},
    "Location": {"description": "the created resource", "schema": {"type": "string"}},
    REPLAYED_HEADER: {
        "description": f"`true` when this is the stored answer to an earlier `{KEY_HEADER}`",
        "schema": {"type": "string", "enum": ["true"]},
    },
    "Retry-After": {"description": "seconds to wait before retrying", "schema": INTEGER},
    "WWW-Authenticate": {"description": "`Bearer`", "schema": {"type": "string"}},
}

PARAMETERS: dict[str, dict[str, Any]] = {
    "RequestId": {
        "in": "header",
        "name": "X-Request-ID",
        "description": "1 to 200 printable ASCII characters, echoed and logged; another value "
        "is replaced by a new id",
        "schema": {"type": "string", "pattern": f"^{REQUEST_ID_PATTERN.pattern}$"},
    },
    "IdempotencyKey": {
        "in": "header",
        "name": KEY_HEADER,
        "description": "1 to 255 printable ASCII characters (a UUID, say), bare or in double "
        "quotes. A repeat with the same key and body is answered the first answer again "
        f"(`{REPLAYED_HEADER}: true`) and runs nothing; business refusals (404, 409, 422) "
        "are replayed too, refusals before running (4xx validation, 503) are not stored. "
        "Keys are kept BANK_IDEMPOTENCY_TTL_HOURS (default 24).",
        "schema": {"type": "string", "pattern": f'^"?{KEY_PATTERN.pattern}"?$'},
    },
}

# Path parameter schemas by werkzeug converter (see create_app's IdConverter).
CONVERTER_SCHEMAS: dict[str, dict[str, Any]] = {
    "id": {
        "type": "integer",
        "minimum": 1,
        "maximum": MAX_ID,
        "description": "a positive integer id",
    },
    "default": {"type": "string"},
}


def document(app: Flask) -> dict[str, Any]:
    """The app's OpenAPI document, built once per app."""
    built: dict[str, Any] | None = app.extensions.get(EXTENSION_KEY)
    if built is None:
        built = build_document(app)
        app.extensions[EXTENSION_KEY] = built
    return built


def build_document(app: Flask) -> dict[str, Any]:
    spec = APISpec(TITLE, _version(), OPENAPI_VERSION, info={"description": DESCRIPTION})
    for name, schema in PROBLEM_SCHEMAS.items():
        spec.components.schema(name, schema)
    for name, header in HEADERS.items():
        spec.components.header(name, header, lazy=True)
    for name, parameter in PARAMETERS.items():
        spec.components.parameter(name, parameter["in"], parameter, lazy=True)
    for name, description in TAGS.items():
        spec.tag({"name": name, "description": description})
    spec.components.security_scheme(
        "adminToken",
        {"type": "http", "scheme": "bearer", "description": "`BANK_ADMIN_TOKEN`"},
    )
    for name, scheme in auth.security_schemes(app).items():  # BANK_API_TOKENS
        spec.components.security_scheme(name, scheme)
    operations: dict[str, dict[str, Any]] = defaultdict(dict)
    declared: dict[str, type[Any]] = {}
    for rule in sorted(app.url_map.iter_rules(), key=lambda rule: rule.rule):
        endpoint = endpoint_of(app.view_functions[rule.endpoint])
        if endpoint is None:
            raise LookupError(f"route {rule.rule} ({rule.endpoint}) has no @documented Endpoint")
        endpoint = auth.documented(app, rule.endpoint, endpoint)
        for declaration in (endpoint.body, endpoint.success.shape):
            if declaration is not None:
                declared[declaration.__name__] = declaration
        for method in sorted((rule.methods or set()) - IGNORED_METHODS):
            operations[openapi_path(rule.rule)][method.lower()] = _operation(
                spec, rule.endpoint, method, rule.rule, endpoint
            )
    for name, schema in declared_schemas(declared.values()).items():
        if name not in spec.components.schemas:
            spec.components.schema(name, schema)
    for path, path_operations in operations.items():
        spec.path(path, operations=path_operations)
    return spec.to_dict()


class _Untitled(GenerateJsonSchema):
    """Pydantic's JSON Schema without a title per field: the names say it already."""

    def field_title_should_be_set(self, schema: Any) -> bool:
        return False


def declared_schemas(declarations: Iterable[type[Any]]) -> dict[str, dict[str, Any]]:
    """The JSON Schema of each declaration (a pydantic model or a TypedDict) and of every
    type they name, by component name (the class name)."""
    _keys, definitions = TypeAdapter.json_schemas(
        [
            (declaration.__name__, "validation", TypeAdapter(declaration))
            for declaration in declarations
        ],
        ref_template=REFERENCE,
        schema_generator=_Untitled,
    )
    schemas: dict[str, dict[str, Any]] = definitions.get("$defs", {})
    for schema in schemas.values():
        schema.pop("title", None)
    return schemas


def _version() -> str:
    try:
        return version(TITLE)
    except PackageNotFoundError:
        return "0.0.0"


def _operation(
    spec: APISpec, name: str, method: str, rule: str, endpoint: Endpoint
) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "operationId": name.replace(".", "_"),
        "summary": endpoint.summary,
        "tags": [endpoint.tag],
        "parameters": [*_path_parameters(rule), *_query_parameters(endpoint), "RequestId"],
        "responses": _responses(method, endpoint),
        **endpoint.extra,
    }
    if endpoint.description:
        operation["description"] = endpoint.description
    if endpoint.idempotent:
        operation["parameters"].append("IdempotencyKey")
    if endpoint.body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": endpoint.body.__name__}},
        }
    if endpoint.admin:
        operation["security"] = [{"adminToken": []}]
    return operation


def _path_parameters(rule: str) -> list[dict[str, Any]]:
    parameters = []
    for name, converter, arguments in rule_arguments(rule):
        if converter == "any":
            schema: dict[str, Any] = {
                "type": "string",
                "enum": [choice.strip().strip("'\"") for choice in arguments.split(",")],
            }
        else:
            schema = dict(CONVERTER_SCHEMAS[converter])
        parameters.append({"in": "path", "name": name, "required": True, "schema": schema})
    return parameters


def _query_parameters(endpoint: Endpoint) -> list[dict[str, Any]]:
    return [
        {
            "in": "query",
            "name": parameter.name,
            **parameter.openapi_fields(),
            "description": parameter.description,
            "schema": parameter.json_schema(),
        }
        for parameter in endpoint.query
    ]


def _responses(method: str, endpoint: Endpoint) -> dict[str, Any]:
    success = endpoint.success
    headers = _headers(method, endpoint, replayed=endpoint.idempotent)
    if success.location:
        headers["Location"] = "Location"
    answer: dict[str, Any] = {"description": success.description, "headers": headers}
    if success.shape is not None:
        answer["content"] = {success.media_type: {"schema": success.shape.__name__}}
    elif success.media_type:
        answer["content"] = {
            media_type: {"schema": {"type": "string"}}
            for media_type in (success.media_type, *success.other_media_types)
        }
    responses: dict[str, Any] = {str(success.status): answer}
    by_status: dict[int, list[Problem]] = defaultdict(list)
    for code in dict.fromkeys(endpoint.problems):
        by_status[PROBLEMS[code].status].append(PROBLEMS[code])
    for status, problems in sorted(by_status.items()):
        responses[str(status)] = _problem_response(method, endpoint, problems)
    responses["default"] = _problem_response(
        method, endpoint, [PROBLEMS[code] for code in GENERIC_PROBLEMS], listed=False
    )
    return responses


def _problem_response(
    method: str, endpoint: Endpoint, problems: Iterable[Problem], *, listed: bool = True
) -> dict[str, Any]:
    problems = list(problems)
    codes = [problem.code for problem in problems]
    headers = _headers(
        method, endpoint, replayed=endpoint.idempotent and bool(REPLAYED_PROBLEMS & set(codes))
    )
    if any(
        problem.status == 503 or problem.code == "idempotency_in_progress" for problem in problems
    ):
        headers["Retry-After"] = "Retry-After"
    if "unauthorized" in codes:
        headers["WWW-Authenticate"] = "WWW-Authenticate"
    schema: dict[str, Any] = {"$ref": "#/components/schemas/Problem"}
    if listed:
        schema = {"allOf": [schema, {"properties": {"code": {"enum": codes}}}]}
    lines = [f"`{problem.code}` ({problem.status}): {problem.meaning}" for problem in problems]
    return {
        "description": "; ".join(lines) if listed else "any route: " + "; ".join(lines),
        "headers": headers,
        "content": {PROBLEM_MEDIA_TYPE: {"schema": schema}},
    }


def _headers(method: str, endpoint: Endpoint, *, replayed: bool) -> dict[str, str]:
    headers = {"X-Request-ID": "X-Request-ID"}
    if method == "POST":
        headers["X-Lock-Mode"] = "X-Lock-Mode"
    if replayed:
        headers[REPLAYED_HEADER] = REPLAYED_HEADER
    return headers
