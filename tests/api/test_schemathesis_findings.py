"""Regression tests for what schema-driven fuzzing (tests/e2e/test_schemathesis.py) found.

Each test pins one mismatch between an answer and the OpenAPI document, as
schemathesis reported it, so it cannot come back unnoticed in the quicker
API suite.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from flask import Flask

from service import create_app
from service.api.docs import ASSETS
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
