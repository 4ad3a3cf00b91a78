"""The Alembic migrations build exactly the schema of `service.tables`, on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, create_engine, inspect, text

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


@pytest.mark.parametrize("backend", SQL_BACKENDS, indirect=True)
def test_fence_migration_keeps_accounts_going_down_and_up(database_url: str) -> None:
    """0003 adds `fence` (0 for existing accounts) and 0002 drops it; accounts and checks stay."""
    command.downgrade(alembic_config(database_url), "0002")
    engine = create_engine(database_url)
    try:
        with engine.begin() as connection:
            assert "fence" not in account_columns(connection)
            connection.execute(
                text(
                    "INSERT INTO accounts (owner, currency, balance, version, created_at,"
                    " updated_at) VALUES ('before', 'USD', 7, 0, :now, :now)"
                ),
                {"now": dt.datetime(2026, 12, 1, tzinfo=dt.UTC)},
            )
        upgrade(database_url, "0003")
        with engine.connect() as connection:
            assert "fence" in account_columns(connection)
            row = connection.execute(text("SELECT balance, fence FROM accounts")).one()
            assert tuple(row) == (7, 0)
        command.downgrade(alembic_config(database_url), "0002")
        with engine.connect() as connection:
            assert "fence" not in account_columns(connection)
            assert connection.execute(text("SELECT balance FROM accounts")).scalar_one() == 7
            checks = {
                check["name"] for check in inspect(connection).get_check_constraints("accounts")
            }
            assert "ck_accounts_balance_in_range" in checks
        upgrade(database_url)
        with engine.connect() as connection:
            assert connection.execute(text("SELECT fence FROM accounts")).scalar_one() == 0
    finally:
        engine.dispose()


def account_columns(connection: Connection) -> set[str]:
    return {column["name"] for column in inspect(connection).get_columns("accounts")}
