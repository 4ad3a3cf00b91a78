"""A fresh PostgreSQL database per test, on the server named by BANK_TEST_POSTGRES_URL.

`proxied_database` adds the schema and a cuttable TcpProxy in front of it,
and `server_behind_proxy` a running `bankrace serve` on it, for the tests
that take PostgreSQL away from a running service.

Without that variable, or with a server that cannot be used, the tests that
need PostgreSQL skip with a reason, or fail under CI (tests/support/components.py).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from loadtest.tcp_proxy import TcpProxy
from tests.support.components import missing
from tests.support.servers import ServerProcess

POSTGRES_URL_VARIABLE = "BANK_TEST_POSTGRES_URL"


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


@contextmanager
def proxied_database() -> Iterator[tuple[str, TcpProxy]]:
    """A fresh database with the schema, reached through a TcpProxy: (the proxied URL, the proxy).

    Point the service at the proxied URL; `proxy.cut()` takes PostgreSQL away from it,
    `proxy.restore()` gives it back. The proxy is closed, then the database dropped.
    """
    from service.schema import upgrade

    with fresh_database() as database_url:
        upgrade(database_url)
        url = make_url(database_url)
        proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432)
        try:
            proxied = url.set(host="127.0.0.1", port=proxy.port)
            yield proxied.render_as_string(hide_password=False), proxy
        finally:
            proxy.close()


@contextmanager
def server_behind_proxy(
    workdir: Path, settings: Mapping[str, str]
) -> Iterator[tuple[ServerProcess, TcpProxy]]:
    """`bankrace serve` (started, with `settings`) on a `proxied_database`: (server, proxy)."""
    with proxied_database() as (proxied, proxy):
        server = ServerProcess(workdir=workdir, settings={"BANK_DATABASE_URL": proxied, **settings})
        try:
            yield server.start(), proxy
        finally:
            server.stop()
