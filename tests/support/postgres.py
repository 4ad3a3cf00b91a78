"""A fresh PostgreSQL database per test, on the server named by BANK_TEST_POSTGRES_URL.

Without that variable the tests that need PostgreSQL skip with a reason;
under CI=true an unset variable or an unreachable server fails the run
instead, so a green CI always means PostgreSQL was really exercised.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

POSTGRES_URL_VARIABLE = "BANK_TEST_POSTGRES_URL"


def running_in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def missing(reason: str) -> None:
    """Skip locally; fail under CI, where a missing component is a broken set-up."""
    if running_in_ci():
        pytest.fail(f"{reason} (CI=true: this is a failure, not a skip)")
    pytest.skip(reason)


def server_url() -> str:
    url = os.environ.get(POSTGRES_URL_VARIABLE, "")
    if not url:
        missing(f"{POSTGRES_URL_VARIABLE} is not set")
    return url


@contextmanager
def fresh_database() -> Iterator[str]:
    """Create an empty database, yield its URL, drop it (even if connections linger)."""
    base = make_url(server_url())
    name = f"bankrace_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as error:  # unreachable server, bad credentials
        admin.dispose()
        missing(f"PostgreSQL at {base.render_as_string(hide_password=True)} unusable: {error}")
    try:
        yield base.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
