"""A fresh PostgreSQL database for one measurement, dropped afterwards.

The benchmark (loadtest/bench_runs.py) and the audit's scale measurement
(loadtest/audit_scale_bank.py) each want a database of their own on the
server they are given, migrated, and gone when they are done, whatever
happened meanwhile. Nothing here imports `service`: the caller says how to
migrate.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url


@contextmanager
def throwaway_postgres(
    server_url: str, prefix: str, migrate: Callable[[str], None]
) -> Iterator[str]:
    """The URL of a new database `<prefix>_<random>` on `server_url`, migrated; dropped after."""
    base = make_url(server_url)
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            url = base.set(database=name).render_as_string(hide_password=False)
            migrate(url)
            yield url
        finally:
            with admin.connect() as connection:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()
