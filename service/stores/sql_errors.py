"""Database errors translated at the store boundary into what a client may be told.

Deadlocks and serialization failures become `RetryableConflict` (nothing was
written; the service runs the operation again); a lock wait that ran out
becomes LockTimeout; an unreachable or unmigrated database becomes
StoreUnavailable -- and a write whose COMMIT was lost on the way becomes
OutcomeUnknown: it may have been applied (`begun`). Anything else is a bug and propagates.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from sqlalchemy import Connection
from sqlalchemy import exc as sa_exc

from service.domain import LockTimeout, OutcomeUnknown, StoreUnavailable
from service.stores.base import RetryableConflict

# PostgreSQL SQLSTATEs this store turns into refusals.
DEADLOCK_DETECTED = "40P01"
SERIALIZATION_FAILURE = "40001"
LOCK_NOT_AVAILABLE = "55P03"
QUERY_CANCELED = "57014"
UNDEFINED_TABLE = "42P01"
OUTCOME_UNKNOWN_DETAIL = (
    "the connection to the database broke while committing: the operation may have been "
    "applied; repeat it with the same Idempotency-Key to learn its outcome"
)


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
        if unreachable(error):
            raise StoreUnavailable("the database cannot be reached") from error
        raise


def unreachable(error: BaseException) -> bool:
    """The database (or the way to it) failed, as opposed to the statement."""
    if isinstance(error, sa_exc.DBAPIError):
        return error.connection_invalidated or isinstance(
            error, sa_exc.OperationalError | sa_exc.InterfaceError
        )
    return isinstance(error, DRIVER_UNREACHABLE)


@contextmanager
def begun(connection: Connection, *, write: bool) -> Iterator[None]:
    """`connection.begin()`, where a write whose COMMIT fails on the way is an unknown outcome.

    The server may have committed before the connection broke and its answer
    was lost: "nothing changed" would be a lie. The client is told so, and an
    Idempotency-Key repeat tells it which (the key's response is stored in the
    operation's own transaction).
    """
    committing = False
    try:
        with connection.begin():
            yield
            committing = write
    except (sa_exc.DBAPIError, *DRIVER_ERRORS) as error:
        if committing and unreachable(error):
            raise OutcomeUnknown(OUTCOME_UNKNOWN_DETAIL) from error
        raise
