"""Database errors translated at the store boundary into what a client may be told.

Deadlocks and serialization failures become `RetryableConflict` (nothing was
written; the service runs the operation again); a lock wait that ran out
becomes LockTimeout; an unreachable or unmigrated database becomes
StoreUnavailable. Anything else is a bug and propagates.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from sqlalchemy import exc as sa_exc

from service.domain import LockTimeout, StoreUnavailable
from service.stores.base import RetryableConflict

# PostgreSQL SQLSTATEs this store turns into refusals.
DEADLOCK_DETECTED = "40P01"
SERIALIZATION_FAILURE = "40001"
LOCK_NOT_AVAILABLE = "55P03"
QUERY_CANCELED = "57014"
UNDEFINED_TABLE = "42P01"


# What the write path's driver-level cursors raise (SQLAlchemy wraps the same
# errors in DBAPIError when it runs the statement itself).
DRIVER_ERRORS = (sqlite3.Error, psycopg.Error)
DRIVER_UNREACHABLE = (sqlite3.OperationalError, psycopg.OperationalError, psycopg.InterfaceError)


def sqlstate(error: BaseException) -> str | None:
    return getattr(getattr(error, "orig", error), "sqlstate", None)


@contextmanager
def translated_errors() -> Iterator[None]:
    """Map driver errors to what a client may be told; re-raise the rest."""
    try:
        yield
    except sa_exc.TimeoutError as error:  # pool checkout waited too long
        raise StoreUnavailable("no database connection became free in time") from error
    except (sa_exc.DBAPIError, *DRIVER_ERRORS) as error:
        state = sqlstate(error)
        original = error.orig if isinstance(error, sa_exc.DBAPIError) else error
        message = str(original).lower()
        if state == DEADLOCK_DETECTED:
            raise RetryableConflict("deadlock detected", deadlock=True) from error
        if state == SERIALIZATION_FAILURE:
            raise RetryableConflict("serialization failure", deadlock=False) from error
        if state in (LOCK_NOT_AVAILABLE, QUERY_CANCELED) or "database is locked" in message:
            raise LockTimeout("the lock wait ran out") from error
        if state == UNDEFINED_TABLE or "no such table" in message:
            raise StoreUnavailable(
                "the schema is not migrated (run `bankrace db upgrade`)"
            ) from error
        if isinstance(error, sa_exc.DBAPIError):
            unreachable = error.connection_invalidated or isinstance(
                error, sa_exc.OperationalError | sa_exc.InterfaceError
            )
        else:
            unreachable = isinstance(error, DRIVER_UNREACHABLE)
        if unreachable:
            raise StoreUnavailable("the database cannot be reached") from error
        raise
