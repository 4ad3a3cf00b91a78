"""Regression tests for what schema-driven fuzzing (tests/e2e/test_schemathesis.py) found.

Each test pins one mismatch between an answer and the OpenAPI document, as
schemathesis reported it, so it cannot come back unnoticed in the quicker
API suite.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import jsonschema
import pytest
from flask import Flask

from service import create_app
from service.api.docs import ASSETS
from service.api.headers import API_CONTENT_SECURITY_POLICY, NO_STORE, SECURITY_HEADERS
from service.http_problems import GUNICORN_PROBLEM_CODES, problem_response
from tests.conftest import make_config


@pytest.fixture(scope="module")
def app() -> Iterator[Flask]:
    application = create_app(make_config("memory://"))
    yield application
    application.extensions["bankrace"].store.close()


@pytest.mark.parametrize("asset", ASSETS)
def test_docs_assets_come_with_a_documented_media_type(app: Flask, asset: str) -> None:
    """ST105: /docs/swagger-ui.css came as text/css, documented as application/octet-stream."""
    client = app.test_client()
    documented = client.get("/openapi.json").get_json()["paths"]["/docs/{asset}"]["get"]
    with client.get(f"/docs/{asset}") as response:
        assert response.status_code == 200
        assert response.mimetype in documented["responses"]["200"]["content"]


@pytest.mark.parametrize(("status", "code"), GUNICORN_PROBLEM_CODES.items())
def test_the_http_servers_refusals_are_problems_the_document_allows(
    app: Flask, status: int, code: str
) -> None:
    """ST105: gunicorn's own 414 (and 400, 431, ...) came as text/html, outside the document."""
    document = app.test_client().get("/openapi.json").get_json()
    raw = problem_response(status, "Reason", "Request Line is too large (5045 > 4094)")
    head, body = raw.split(b"\r\n\r\n", 1)
    assert head.startswith(f"HTTP/1.1 {status} ".encode())
    assert b"\r\nContent-Type: application/problem+json\r\n" in head
    assert f"Content-Length: {len(body)}".encode() in head
    problem = json.loads(body)
    assert problem["status"] == status and problem["code"] == code
    default = document["paths"]["/balances"]["get"]["responses"]["default"]
    schema = {**default["content"]["application/problem+json"]["schema"], **document}
    jsonschema.Draft202012Validator(schema).validate(problem)


@pytest.mark.parametrize("status", GUNICORN_PROBLEM_CODES)
def test_the_http_servers_refusals_carry_the_security_headers(status: int) -> None:
    """Every answer carries the headers service/api/headers.py promises, gunicorn's own too."""
    head = problem_response(status, "Reason", "Invalid HTTP Header").split(b"\r\n\r\n", 1)[0]
    lines = head.decode("latin-1").split("\r\n")[1:]
    headers = dict(line.split(": ", 1) for line in lines)
    for name, value in SECURITY_HEADERS.items():
        assert headers[name] == value
    assert headers["Content-Security-Policy"] == API_CONTENT_SECURITY_POLICY
    assert headers["Cache-Control"] == NO_STORE
    assert "Server" not in headers
