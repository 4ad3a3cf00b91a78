"""Alembic environment: the URL comes from `service.config`, the target from `service.tables`.

SQLite gets `render_as_batch` (it cannot ALTER most things in place).
PostgreSQL gets the service's connect timeout, so `bankrace db upgrade`
against a host that drops packets fails within CONNECT_TIMEOUT_SECONDS
instead of waiting out the kernel's SYN retries (about two minutes).
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool
from sqlalchemy.engine import make_url

from service.config import Config
from service.stores.engines import CONNECT_TIMEOUT_SECONDS
from service.tables import metadata

configuration = context.config
url = configuration.get_main_option("sqlalchemy.url") or Config.from_env().database_url


def run_migrations_offline() -> None:
    context.configure(
        url=url,
        target_metadata=metadata,
        literal_binds=True,
        render_as_batch=url.startswith("sqlite"),
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connect_args: dict[str, int] = {}
    if make_url(url).get_backend_name() == "postgresql":
        connect_args["connect_timeout"] = CONNECT_TIMEOUT_SECONDS
    engine = create_engine(url, poolclass=pool.NullPool, connect_args=connect_args)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=metadata,
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
