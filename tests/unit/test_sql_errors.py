"""Database errors as clients are told them; a COMMIT lost on the way is not a refusal.

A connection that breaks while COMMIT is under way leaves the outcome
unknown: the server may have committed before the answer was lost (seen in
tests/e2e/test_store_faults.py, PostgreSQL cut mid-load: a deposit answered
503 was in the journal). Such a 503 is `outcome_unknown` (OutcomeUnknown),
saying the operation may have been applied, never that nothing changed.
"""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy import exc as sa_exc

from service.domain import OutcomeUnknown, StoreUnavailable
from service.stores.sql_errors import OUTCOME_UNKNOWN_DETAIL, begun, translated_errors


def broken_connection() -> sa_exc.OperationalError:
    return sa_exc.OperationalError(
        "COMMIT", {}, psycopg.OperationalError("server closed the connection unexpectedly")
    )


@pytest.fixture
def engine() -> Iterator[Engine]:
    built = create_engine("sqlite://")
    with built.begin() as connection:
        connection.execute(text("CREATE TABLE rows (name TEXT)"))
    yield built
    built.dispose()


def run(engine: Engine, *statements: str | None, write: bool) -> StoreUnavailable:
    """The StoreUnavailable a transaction running `statements` ends with (None: a broken one)."""
    with pytest.raises(StoreUnavailable) as raised:  # noqa: SIM117 (the order matters)
        with translated_errors(), engine.connect() as connection, begun(connection, write=write):
            for statement in statements:
                if statement is None:
                    raise broken_connection()
                connection.execute(text(statement))
    return raised.value


def stored_rows(engine: Engine) -> list[str]:
    with engine.connect() as connection:
        return list(connection.scalars(text("SELECT name FROM rows")))


def break_commits(engine: Engine) -> None:
    @event.listens_for(engine, "commit")
    def fail(_connection: object) -> None:
        raise broken_connection()


def test_a_connection_lost_during_commit_leaves_the_outcome_unknown(engine: Engine) -> None:
    """A write whose COMMIT fails on a broken connection: 503 saying it may have been applied."""
    break_commits(engine)
    refusal = run(engine, "INSERT INTO rows VALUES ('a')", write=True)
    assert isinstance(refusal, OutcomeUnknown) and refusal.code == "outcome_unknown"
    assert refusal.detail == OUTCOME_UNKNOWN_DETAIL


def test_a_connection_lost_before_commit_changed_nothing(engine: Engine) -> None:
    """A write's next statement fails on a broken connection: the plain 503, its row rolled back."""
    refusal = run(engine, "INSERT INTO rows VALUES ('a')", None, write=True)
    assert refusal.code == "store_unavailable" and refusal.detail != OUTCOME_UNKNOWN_DETAIL
    assert stored_rows(engine) == []


def test_a_read_never_reports_an_unknown_outcome(engine: Engine) -> None:
    """A read changes nothing, whenever its connection breaks."""
    break_commits(engine)
    refusal = run(engine, "SELECT 1", write=False)
    assert refusal.code == "store_unavailable" and refusal.detail != OUTCOME_UNKNOWN_DETAIL
