"""Database errors translated at the store boundary into what a client may be told.

Deadlocks and serialization failures become `RetryableConflict` (nothing was
written; the service runs the operation again); a lock wait that ran out
becomes LockTimeout; an unreachable or unmigrated database becomes
StoreUnavailable. Anything else is a bug and propagates.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import exc as sa_exc

from service.domain import LockTimeout, StoreUnavailable
from service.stores.base import RetryableConflict

# PostgreSQL SQLSTATEs this store turns into refusals.
DEADLOCK_DETECTED = "40P01"
SERIALIZATION_FAILURE = "40001"
LOCK_NOT_AVAILABLE = "55P03"
QUERY_CANCELED = "57014"
UNDEFINED_TABLE = "42P01"


def sqlstate(error: sa_exc.DBAPIError) -> str | None:
    return getattr(error.orig, "sqlstate", None)


@contextmanager
def translated_errors() -> Iterator[None]:
    """Map driver errors to what a client may be told; re-raise the rest."""
    try:
        yield
    except sa_exc.TimeoutError as error:  # pool checkout waited too long
        raise StoreUnavailable("no database connection became free in time") from error
    except sa_exc.DBAPIError as error:
        state = sqlstate(error)
        message = str(error.orig).lower()
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
        if error.connection_invalidated or isinstance(
            error, sa_exc.OperationalError | sa_exc.InterfaceError
        ):
            raise StoreUnavailable("the database cannot be reached") from error
        raise
