"""The Alembic migrations build exactly the schema of `service.tables`, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from service.schema import alembic_config, head_revision, upgrade
from service.tables import metadata
from tests.conftest import SQL_BACKENDS


@pytest.mark.parametrize("backend", SQL_BACKENDS, indirect=True)
def test_migrated_schema_matches_the_models(database_url: str) -> None:
    """autogenerate finds no difference between the migrated database and the tables."""
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            assert compare_metadata(context, metadata) == []
            assert context.get_current_revision() == head_revision()
            checks = {
                check["name"] for check in inspect(connection).get_check_constraints("accounts")
            }
        assert "ck_accounts_balance_in_range" in checks
    finally:
        engine.dispose()


@pytest.mark.parametrize("backend", SQL_BACKENDS, indirect=True)
def test_downgrade_and_upgrade_again(database_url: str) -> None:
    """The migrations go down to nothing and back up cleanly (re-runnable)."""
    upgrade(database_url, "head")  # a second upgrade is a no-op
    command.downgrade(alembic_config(database_url), "base")
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            assert set(inspect(connection).get_table_names()) <= {"alembic_version"}
    finally:
        engine.dispose()
    upgrade(database_url)
