"""The driver's own cursor on one open transaction, and how the two databases differ on it.

The write path runs the statements of `sql_statements` as driver SQL:
SQLAlchemy's execution context costs more than the statements themselves
on this path (profiled). The statements are written once in sqlite3's
`:name` style; `SqlDialect.sql` rewrites them for psycopg, and
`SqlDialect.timestamp` passes a moment as SQLAlchemy's DateTime stores it.

This module knows neither money nor keys: the writers (`sql_money`,
`sql_fences`, `sql_keys`, `sql_accounts`) run their statements through it.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection, Executable

NAMED_PARAMETER = re.compile(r"(?<!:):([a-z_]+)")


@functools.lru_cache(maxsize=64)
def pyformat(sql: str) -> str:
    """`:name` (sqlite3's style) as `%(name)s` (psycopg's), with a literal `%` doubled."""
    return NAMED_PARAMETER.sub(r"%(\1)s", sql.replace("%", "%%"))


def _unchanged(sql: str) -> str:
    return sql


class SqlDialect:
    """SQLite or PostgreSQL, as far as driver SQL cares: parameter style and timestamps."""

    def __init__(self, *, is_postgresql: bool) -> None:
        self.is_postgresql = is_postgresql
        self.sql: Callable[[str], str] = pyformat if is_postgresql else _unchanged

    def timestamp(self, moment: dt.datetime) -> Any:
        """A timestamp as a driver parameter, stored as SQLAlchemy's DateTime stores it."""
        if self.is_postgresql:
            return moment
        return moment.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


class DriverCursor:
    """Statements inside one open transaction, on the driver's cursor."""

    def __init__(self, connection: Connection, dialect: SqlDialect) -> None:
        self.connection = connection
        self.dialect = dialect
        self._cursor = connection.connection.cursor()

    def row(self, sql: str, parameters: dict[str, Any]) -> tuple[Any, ...] | None:
        """The first row of a statement (or None)."""
        self._cursor.execute(self.dialect.sql(sql), parameters)
        row: tuple[Any, ...] | None = self._cursor.fetchone()
        return row

    def value(self, sql: str, parameters: dict[str, Any]) -> Any:
        """The first column of the first row (or None)."""
        row = self.row(sql, parameters)
        return None if row is None else row[0]

    def row_count(self, sql: str, parameters: dict[str, Any]) -> int:
        """How many rows a statement changed."""
        self._cursor.execute(self.dialect.sql(sql), parameters)
        count: int = self._cursor.rowcount
        return count

    def execute(self, statement: Executable) -> None:
        """A SQLAlchemy statement, for the rare writes that are not on the hot path."""
        self.connection.execute(statement)
