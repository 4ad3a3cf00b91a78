"""GET /openapi.json describes exactly the API that runs, and GET /docs serves it offline.

The document is checked against the OpenAPI 3.1 specification, against the
app's routes (both ways), against every problem code the source can answer,
against the validation rules (a body written from the document is taken; a
field the document does not name is refused) and against real responses.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from flask import Flask
from flask.testing import FlaskClient
from openapi_spec_validator import validate
from openapi_spec_validator.validation.exceptions import OpenAPIValidationError
from werkzeug.test import TestResponse

import service
from service import create_app
from service.api import spec
from service.api.bodies import RequestBody
from service.api.errors import HTTP_CODES, handle_domain_error
from service.domain import DomainError, FieldError, ValidationFailed
from service.http_problems import GUNICORN_PROBLEM_CODES
from tests.api.helpers import ADMIN_HEADERS, open_account
from tests.conftest import make_config
from tests.support.body_checks import field_error

SERVICE_ROOT = Path(service.__file__).parent
IGNORED_METHODS = {"HEAD", "OPTIONS"}
# Any route may answer these; the document lists them under each operation's `default`.
GENERIC_CODES = {"method_not_allowed", "internal_error", "overloaded"} | (
    set(GUNICORN_PROBLEM_CODES.values()) - {"forbidden"}
)
# ProblemError(status, "code", ...) and problem(status, "code", ...) written in the source.
PROBLEM_CALL = re.compile(r'(?:ProblemError|problem)\(\s*(\d{3}),\s*"([a-z_]+)"')
# The gunicorn worker writes its 408 problem as a dict literal, before any request exists.
PROBLEM_LITERAL = re.compile(r'"status":\s*(\d{3}),\s*"detail":[^}]*?"code":\s*"([a-z_]+)"', re.S)


@pytest.fixture(scope="module")
def app() -> Iterator[Flask]:
    application = create_app(make_config("memory://"))
    yield application
    application.extensions["bankrace"].store.close()


@pytest.fixture(scope="module")
def document(app: Flask) -> dict[str, Any]:
    response = app.test_client().get("/openapi.json")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    body: dict[str, Any] = response.get_json()
    return body


def operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        for method, operation in item.items():
            yield path, method.upper(), operation


def resolved(document: dict[str, Any], node: Any) -> Any:
    """Follow `$ref`s inside the document until a node that is not one."""
    while isinstance(node, dict) and "$ref" in node:
        target: Any = document
        for part in str(node["$ref"]).removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


def schema_validator(document: dict[str, Any], schema: Any) -> jsonschema.Draft202012Validator:
    """A JSON Schema 2020-12 validator of `schema` whose `#/components/...` refs resolve."""
    root = {"components": document["components"], "$defs": {"it": schema}, "$ref": "#/$defs/it"}
    return jsonschema.Draft202012Validator(root)


# --------------------------------------------------------------------------- the document


def test_document_is_valid_openapi_3_1(document: dict[str, Any]) -> None:
    """openapi-spec-validator accepts the document as OpenAPI 3.1."""
    assert document["openapi"] == "3.1.0"
    validate(document)


def test_the_validator_refuses_a_broken_document(document: dict[str, Any]) -> None:
    """The validator really validates: a response without a description is refused."""
    broken = {**document, "paths": {"/x": {"get": {"responses": {"200": {}}}}}}
    with pytest.raises(OpenAPIValidationError):
        validate(broken)


def werkzeug_to_openapi(rule: str) -> str:
    return re.sub(r"<(?:[^<>:]+:)?([^<>:]+)>", r"{\1}", rule)


def test_every_route_is_documented_and_every_documented_operation_is_routed(
    app: Flask, document: dict[str, Any]
) -> None:
    """(path, method) pairs of app.url_map and of the document are the same set."""
    routed = {
        (werkzeug_to_openapi(rule.rule), method)
        for rule in app.url_map.iter_rules()
        for method in (rule.methods or set()) - IGNORED_METHODS
    }
    documented = {(path, method) for path, method, _operation in operations(document)}
    assert documented == routed
    assert len(routed) >= 18  # every endpoint of DESIGN §3


def example_path(path: str, operation: dict[str, Any]) -> str:
    """The path with each parameter replaced by a value its schema allows."""
    for parameter in operation["parameters"]:
        if parameter.get("in") == "path":
            schema = parameter["schema"]
            value = schema["enum"][0] if "enum" in schema else str(schema["minimum"])
            path = path.replace("{" + parameter["name"] + "}", value)
    return path


def test_documented_operations_reach_their_views(app: Flask, document: dict[str, Any]) -> None:
    """Each documented path, filled in from its parameter schemas, routes to the named view."""
    adapter = app.url_map.bind("localhost")
    for path, method, operation in operations(document):
        endpoint, _arguments = adapter.match(example_path(path, operation), method)
        assert endpoint.replace(".", "_") == operation["operationId"], (path, method)


def test_every_route_declares_its_endpoint(app: Flask) -> None:
    """Every view carries an @documented Endpoint (else the document cannot be written)."""
    undeclared = [
        rule.rule
        for rule in app.url_map.iter_rules()
        if spec.endpoint_of(app.view_functions[rule.endpoint]) is None
    ]
    assert undeclared == []


def test_an_undocumented_route_stops_the_document(app: Flask) -> None:
    """A route added without @documented makes the document fail, instead of going missing."""
    bare = create_app(make_config("memory://"))
    bare.add_url_rule("/undocumented", "undocumented", lambda: "")
    try:
        with pytest.raises(LookupError, match="/undocumented"):
            from service.api.openapi import build_document

            build_document(bare)
    finally:
        bare.extensions["bankrace"].store.close()


# --------------------------------------------------------------------------- problems


def domain_error_classes() -> set[type[DomainError]]:
    found: set[type[DomainError]] = set()
    pending = [DomainError]
    while pending:
        kind = pending.pop()
        for subclass in kind.__subclasses__():
            found.add(subclass)
            pending.append(subclass)
    return found


def answered_problem(app: Flask, kind: type[DomainError]) -> tuple[int, str]:
    """The status and code the API really answers for an instance of `kind`."""
    error = kind.__new__(kind)
    Exception.__init__(error, "detail")
    error.detail = "detail"
    if isinstance(error, ValidationFailed):
        error.errors = (FieldError("field", "message"),)
    with app.test_request_context("/"):
        response = handle_domain_error(error)
    return response.status_code, response.get_json()["code"]


def problems_in_the_source(app: Flask) -> set[tuple[int, str]]:
    """Every (status, code) the service can answer, collected from the code itself."""
    found = {
        answered_problem(app, kind)
        for kind in domain_error_classes()
        # Bases never raised themselves: only their subclasses' codes reach a client.
        if kind.__name__ != "Unavailable"
    }
    found |= {(status, code) for status, code in HTTP_CODES.items()}
    found |= set(GUNICORN_PROBLEM_CODES.items())  # the HTTP server's own refusals
    for source in SERVICE_ROOT.rglob("*.py"):
        text = source.read_text()
        found |= {(int(status), code) for status, code in PROBLEM_CALL.findall(text)}
        found |= {(int(status), code) for status, code in PROBLEM_LITERAL.findall(text)}
    return found


def test_unavailable_base_is_never_raised_itself() -> None:
    """`Unavailable` (code `unavailable`) is only a base: the source raises its subclasses."""
    for source in SERVICE_ROOT.rglob("*.py"):
        assert not re.search(r"raise Unavailable\(", source.read_text()), source


def documented_problems(document: dict[str, Any]) -> set[tuple[int, str]]:
    pairs = set()
    for _path, _method, operation in operations(document):
        for status, response in operation["responses"].items():
            content = response.get("content", {}).get("application/problem+json")
            if content is None or status == "default":
                continue
            enum = content["schema"]["allOf"][1]["properties"]["code"]["enum"]
            pairs |= {(int(status), code) for code in enum}
    return pairs


def test_every_problem_the_api_can_give_is_documented(app: Flask, document: dict[str, Any]) -> None:
    """Each (status, code) in the source is listed by an operation; none is listed that is not."""
    in_source = problems_in_the_source(app)
    assert {code for _status, code in in_source} >= {
        "lock_timeout",
        "audit_timeout",
        "idempotency_key_reused",
        "request_timeout",
        "unsupported_media_type",
    }
    generic = {(status, code) for status, code in in_source if code in GENERIC_CODES}
    assert documented_problems(document) == in_source - generic
    all_codes = document["components"]["schemas"]["ProblemCode"]["enum"]
    assert set(all_codes) == {code for _status, code in in_source}
    for _path, _method, operation in operations(document):
        default = operation["responses"]["default"]
        assert all(code in default["description"] for code in GENERIC_CODES)


def test_problem_statuses_carry_their_headers(document: dict[str, Any]) -> None:
    """503 and idempotency_in_progress name Retry-After; 401 WWW-Authenticate; POSTs X-Lock-Mode."""
    for path, method, operation in operations(document):
        for status, response in operation["responses"].items():
            headers = response.get("headers", {})
            assert "X-Request-ID" in headers, (path, method, status)
            if method == "POST":
                assert "X-Lock-Mode" in headers, (path, method, status)
            if status == "503" or "idempotency_in_progress" in response["description"]:
                assert "Retry-After" in headers, (path, method, status)
            if status == "401":
                assert "WWW-Authenticate" in headers, (path, method, status)


def test_headers_of_the_contract_are_documented(document: dict[str, Any]) -> None:
    """Idempotency-Key on every POST, X-Request-ID everywhere, bearer auth on PUT /mode."""
    for path, method, operation in operations(document):
        names = {
            resolved(document, parameter)["name"]
            for parameter in operation["parameters"]
            if resolved(document, parameter)["in"] == "header"
        }
        assert "X-Request-ID" in names, (path, method)
        assert ("Idempotency-Key" in names) == (method == "POST"), (path, method)
        assert ("security" in operation) == ((path, method) == ("/mode", "PUT")), (path, method)
    scheme = document["components"]["securitySchemes"]["adminToken"]
    assert scheme == {**scheme, "type": "http", "scheme": "bearer"}
    replayed = document["components"]["headers"]["Idempotent-Replayed"]
    assert replayed["schema"]["enum"] == ["true"]


# --------------------------------------------------------------------------- bodies


def body_fields(app: Flask) -> Iterator[tuple[type[RequestBody], str, dict[str, Any]]]:
    """(model, field name, the field's JSON Schema with its `$defs`) of every body a view takes."""
    models = {
        endpoint.body
        for endpoint in map(spec.endpoint_of, app.view_functions.values())
        if endpoint is not None and endpoint.body is not None
    }
    for model in sorted(models, key=lambda model: model.__name__):
        schema = model.model_json_schema()
        for name, part in schema["properties"].items():
            yield model, name, {**part, "$defs": schema.get("$defs", {})}


PROBES: list[object] = [
    True,
    False,
    None,
    -1,
    0,
    1,
    2,
    50,
    5000,
    5001,
    1_000_000_000_000,
    1_000_000_000_001,
    2**53 - 1,
    2**53,
    10**18 - 1,
    10**18,
    10**30,
    -(10**30),
    1.5,
    1.0,
    1e3,
    "1",
    "",
    " ",
    "\t",
    "a",
    "alice",
    "  alice  ",
    "a" * 200,
    "a" * 201,
    "USD",
    "usd",
    "EURO",
    "locked",
    "unlocked",
    "atomic",
    "LOCKED",
    "a\x00b",
    "a\x1fb",
    "a\u2028b",
    "a\u200bb",
    [],
    {},
    [1],
]


def test_body_schemas_agree_with_the_validation_rules(app: Flask) -> None:
    """For every probe value, each field's schema and check agree, except where its text says."""
    checked = 0
    for model, name, schema in body_fields(app):
        validator = jsonschema.Draft202012Validator(schema)
        description = schema.get("description", "")
        for value in PROBES:
            schema_takes = validator.is_valid(value)
            rule_takes = field_error(model, name, value) is None
            if schema_takes == rule_takes:
                checked += 1
                continue
            # JSON Schema calls 10.0 an integer; the service refuses it, and says so.
            whole_float = isinstance(value, float) and value.is_integer()
            control = isinstance(value, str) and any(
                character in value for character in "\x00\x1f\u2028\u200b"
            )
            assert schema_takes and not rule_takes, (name, value)
            if whole_float:
                assert "10.0" in description, name
            elif control:
                assert "control characters" in description, name
            else:
                pytest.fail(f"{name}: schema and check disagree on {value!r}")
    assert checked > 200


def value_from_schema(schema: dict[str, Any]) -> Any:
    if "examples" in schema:
        return schema["examples"][0]
    if "enum" in schema:
        return schema["enum"][1 if len(schema["enum"]) > 1 else 0]
    if "default" in schema:
        return schema["default"]
    if schema["type"] == "integer":
        return schema["minimum"] + 1
    raise AssertionError(f"no example value for {schema}")


@pytest.fixture
def bank_client() -> Iterator[FlaskClient]:
    application = create_app(make_config("memory://"))
    yield application.test_client()
    application.extensions["bankrace"].store.close()


def body_operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (path, method, operation)
        for path, method, operation in operations(document)
        if "requestBody" in operation
    ]


def send(
    client: FlaskClient, method: str, path: str, body: dict[str, Any], accounts: list[int]
) -> TestResponse:
    filled = path.replace("{account_id}", str(accounts[0]))
    if "{hold_id}" in filled:  # a fresh hold for each capture or void
        hold = client.post(f"/accounts/{accounts[0]}/holds", json={"amount": 10}).get_json()
        filled = filled.replace("{hold_id}", str(hold["id"]))
    headers = ADMIN_HEADERS if method == "PUT" else {}
    return client.open(filled, method=method, json=body, headers=headers)


def test_a_body_written_from_the_document_is_accepted(
    bank_client: FlaskClient, document: dict[str, Any]
) -> None:
    """Every required and optional field, valued from its documented schema, is taken."""
    accounts = [
        open_account(bank_client, opening_balance=1000)["id"],
        open_account(bank_client, opening_balance=1000)["id"],
    ]
    assert len(body_operations(document)) == 8
    for path, method, operation in body_operations(document):
        schema = resolved(document, operation["requestBody"]["content"]["application/json"])
        schema = resolved(document, schema["schema"])
        properties = schema["properties"].items()
        body = {name: value_from_schema(resolved(document, item)) for name, item in properties}
        if "from_account" in body:
            body["from_account"], body["to_account"] = accounts
        if "lock_mode" in body:
            body["lock_mode"] = "locked"
        response = send(bank_client, method, path, body, accounts)
        assert response.status_code in {200, 201}, (path, response.get_json())


def test_a_field_the_document_does_not_name_is_refused(
    bank_client: FlaskClient, document: dict[str, Any]
) -> None:
    """additionalProperties is false in the document because the view refuses unknown fields."""
    accounts = [open_account(bank_client, opening_balance=1000)["id"]]
    for path, method, operation in body_operations(document):
        schema = resolved(document, operation["requestBody"]["content"]["application/json"])
        schema = resolved(document, schema["schema"])
        assert schema["additionalProperties"] is False
        required = set(schema.get("required", []))
        response = send(bank_client, method, path, {"undocumented": 1}, accounts)
        assert response.status_code == 422, path
        fields = {error["field"] for error in response.get_json()["errors"]}
        expected = {"undocumented"} | required
        assert fields == expected, (path, fields)


# --------------------------------------------------------------------------- responses


def operation_for(document: dict[str, Any], method: str, path: str) -> dict[str, Any]:
    for template, template_method, operation in operations(document):
        pattern = re.sub(r"\\\{[a-z_]+\\\}", "[^/]+", re.escape(template))
        if template_method == method and re.fullmatch(pattern, path):
            return operation
    raise AssertionError(f"{method} {path} is not documented")


def assert_documented(document: dict[str, Any], response: TestResponse) -> None:
    """The body validates against the documented schema and holds no undocumented field."""
    method, path = response.request.method, response.request.path
    operation = operation_for(document, method, path)
    declared = operation["responses"].get(str(response.status_code))
    assert declared is not None, (method, path, response.status_code)
    content = declared["content"][response.mimetype]
    schema = content["schema"]
    if response.mimetype.endswith("json"):
        body = response.get_json(force=True)
        schema_validator(document, schema).validate(body)
        assert_no_extra_fields(document, schema, body)
    for name in declared.get("headers", {}):
        if name not in {"Idempotent-Replayed", "Retry-After"}:
            assert name in response.headers, (method, path, name)


def assert_no_extra_fields(document: dict[str, Any], schema: Any, value: Any) -> None:
    schema = resolved(document, schema)
    if "allOf" in schema:
        schema = resolved(document, schema["allOf"][0])
    if isinstance(value, dict) and "properties" in schema:
        assert set(value) <= set(schema["properties"]), set(value) - set(schema["properties"])
        for name, item in value.items():
            assert_no_extra_fields(document, schema["properties"][name], item)
    if isinstance(value, list) and "items" in schema:
        for item in value:
            assert_no_extra_fields(document, schema["items"], item)


def test_real_responses_match_the_documented_schemas(
    client: FlaskClient, document: dict[str, Any]
) -> None:
    """Successes and refusals of every endpoint, on each store, have the documented shape."""
    first = client.post("/accounts", json={"owner": "alice", "opening_balance": 100})
    second = client.post("/accounts", json={"owner": "bob", "currency": "USD"})
    euro = client.post("/accounts", json={"owner": "eve", "currency": "EUR"})
    alice, bob, eve = (response.get_json()["id"] for response in (first, second, euro))
    deposit = client.post(f"/accounts/{alice}/deposit", json={"amount": 5})
    transfer = client.post(
        "/transfers", json={"from_account": alice, "to_account": bob, "amount": 7}
    )
    responses = [
        first,
        second,
        deposit,
        transfer,
        client.post(f"/accounts/{alice}/withdraw", json={"amount": 1}),
        client.get("/accounts?limit=1"),
        client.get(f"/accounts/{alice}"),
        client.get(f"/accounts/{alice}/transactions?limit=1"),
        client.get(f"/accounts/{alice}/audit"),
        client.get(f"/transfers/{transfer.get_json()['id']}"),
        client.get(f"/transactions/{deposit.get_json()['id']}"),
        client.get("/audit"),
        client.get("/mode"),
        client.put("/mode", json={"race_window_ms": 0}, headers=ADMIN_HEADERS),
        client.get("/healthz"),
        client.get("/readyz"),
        # refusals
        client.post(f"/accounts/{alice}/withdraw", json={"amount": 10**6}),
        client.post("/transfers", json={"from_account": alice, "to_account": eve, "amount": 1}),
        client.post("/transfers", json={"from_account": alice, "to_account": alice, "amount": 1}),
        client.post(f"/accounts/{alice}/deposit", json={"amount": 1.5, "extra": 1}),
        client.post(f"/accounts/{alice}/deposit", data="{", content_type="application/json"),
        client.post(f"/accounts/{alice}/deposit", data="1", content_type="text/plain"),
        client.post(
            f"/accounts/{alice}/deposit", json={"amount": 1}, headers={"Idempotency-Key": ""}
        ),
        client.get("/accounts/999999"),
        client.get("/accounts?limit=0"),
        client.put("/mode", json={"race_window_ms": 0}),
        client.put("/mode", json={"race_window_ms": 0}, headers={"Authorization": "Bearer no"}),
    ]
    for response in responses:
        assert_documented(document, response)
    assert {response.status_code for response in responses} >= {
        200,
        201,
        400,
        401,
        403,
        404,
        409,
        415,
        422,
    }


def test_metrics_docs_and_document_answer_as_documented(
    client: FlaskClient, document: dict[str, Any]
) -> None:
    """The operational endpoints answer the status and media type the document names."""
    for path in ("/openapi.json", "/docs", "/metrics", "/docs/swagger-ui.css"):
        operation = operation_for(document, "GET", path)
        media_types = set(operation["responses"]["200"]["content"])
        with client.get(path) as response:
            assert response.status_code == 200, path
            assert response.mimetype in media_types or media_types == {"application/octet-stream"}


# --------------------------------------------------------------------------- the docs page


def test_docs_page_loads_only_files_of_this_service(client: FlaskClient) -> None:
    """Every script, style and icon of /docs is a same-origin path that answers 200."""
    response = client.get("/docs")
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    page = response.get_data(as_text=True)
    references = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert len(references) == 4
    for reference in references:
        assert reference.startswith("/docs/"), reference
        with client.get(reference) as asset:
            assert asset.status_code == 200, reference
            assert len(asset.data) > 0
    script = client.get("/docs/swagger-initializer.js").get_data(as_text=True)
    assert '"/openapi.json"' in script
    assert "validatorUrl: null" in script  # Swagger UI would call an online validator


def test_docs_page_has_a_strict_content_security_policy(client: FlaskClient) -> None:
    """No inline script, no other origin: the policy that the browser test runs under."""
    policy = client.get("/docs").headers["Content-Security-Policy"]
    directives = dict(
        (part.split()[0], part.split()[1:]) for part in policy.split(";") if part.strip()
    )
    assert directives["default-src"] == ["'none'"]
    assert directives["script-src"] == ["'self'"]
    assert directives["connect-src"] == ["'self'"]
    assert "<script>" not in client.get("/docs").get_data(as_text=True)


def test_docs_assets_outside_the_list_are_404(client: FlaskClient) -> None:
    """Only the named Swagger UI files are served: no path into the package or beyond."""
    for path in ("/docs/LICENSE", "/docs/../pyproject.toml", "/docs/index.template.html"):
        assert client.get(path).status_code == 404, path
