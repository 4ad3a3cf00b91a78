"""A shared app per backend for the many requests that must change nothing.

Refused requests leave the bank as it was, so one migrated app per backend
and module serves every parametrized negative case (each compares a
snapshot before and after itself); a fresh database per case would cost a
CREATE DATABASE and a migration each. Tests that change the mode or need an
empty bank use the function-scoped `client` fixture of tests/conftest.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack

import pytest
from flask import Flask
from flask.testing import FlaskClient

from service import create_app
from service.schema import upgrade
from tests.conftest import BACKENDS, make_config
from tests.support.postgres import fresh_database


@pytest.fixture(scope="module", params=BACKENDS)
def shared_app(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Flask]:
    with ExitStack() as stack:
        if request.param == "memory":
            url = "memory://"
        elif request.param == "sqlite":
            url = f"sqlite:///{tmp_path_factory.mktemp('shared') / 'bank.db'}"
            upgrade(url)
        else:
            url = stack.enter_context(fresh_database())
            upgrade(url)
        application = create_app(make_config(url))
        stack.callback(application.extensions["bankrace"].store.close)
        yield application


@pytest.fixture
def shared_client(shared_app: Flask) -> FlaskClient:
    return shared_app.test_client()
