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


# psycopg: one cursor per statement and pooled connection, kept with the
# connection (see `DriverCursor._statement_cursor`), at most this many.
KEPT_CURSORS = 64
STATEMENT_CURSORS_KEY = "statement_cursors"


class DriverCursor:
    """Statements inside one open transaction, on the driver's cursor.

    On PostgreSQL each statement runs on a cursor of its own, kept with the
    pooled connection across transactions: a psycopg cursor builds its
    adaptation context anew whenever its statement changes (about 15 µs of
    CPU a statement, measured), and fetches every row of a result at once,
    so a kept cursor holds nothing open on the server between statements.
    SQLite's cursors are not kept: one left mid-result would keep its read
    open.
    """

    def __init__(self, connection: Connection, dialect: SqlDialect) -> None:
        self.connection = connection
        self.dialect = dialect
        driver: Any = connection.connection.driver_connection
        self._driver = driver
        self._kept: dict[str, Any] | None = None
        self._cursor: Any = None
        if dialect.is_postgresql:
            self._kept = kept_cursors(connection.connection.info, STATEMENT_CURSORS_KEY, driver)
        else:
            self._cursor = driver.cursor()

    def _statement_cursor(self, sql: str) -> Any:
        kept = self._kept
        if kept is None:
            return self._cursor
        cursor = kept.get(sql)
        if cursor is None:
            cursor = self._driver.cursor()
            if len(kept) < KEPT_CURSORS:
                kept[sql] = cursor
        return cursor

    def row(self, sql: str, parameters: dict[str, Any]) -> tuple[Any, ...] | None:
        """The first row of a statement (or None)."""
        statement = self.dialect.sql(sql)
        cursor = self._statement_cursor(statement)
        cursor.execute(statement, parameters)
        row: tuple[Any, ...] | None = cursor.fetchone()
        return row

    def value(self, sql: str, parameters: dict[str, Any]) -> Any:
        """The first column of the first row (or None)."""
        row = self.row(sql, parameters)
        return None if row is None else row[0]

    def row_count(self, sql: str, parameters: dict[str, Any]) -> int:
        """How many rows a statement changed."""
        statement = self.dialect.sql(sql)
        cursor = self._statement_cursor(statement)
        cursor.execute(statement, parameters)
        count: int = cursor.rowcount
        return count

    def execute(self, statement: Executable) -> None:
        """A SQLAlchemy statement, for the rare writes that are not on the hot path."""
        self.connection.execute(statement)


def kept_cursors(info: dict[Any, Any], key: str, driver: Any) -> dict[str, Any]:
    """The statement cursors kept under `key` in a pooled connection's `info`, by statement.

    The pool's record outlives a driver connection it replaces (after a
    reconnect), so the cursors are kept with the driver connection they
    belong to: a new one starts afresh. The write path (`DriverCursor`) and
    the reads outside transactions (`SqlStore._read`) keep theirs apart.
    """
    kept = info.get(key)
    if kept is None or kept[0] is not driver:
        kept = info[key] = (driver, {})
    cursors: dict[str, Any] = kept[1]
    return cursors
