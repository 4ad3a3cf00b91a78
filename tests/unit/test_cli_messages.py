"""The one-line failure messages of the `bankrace` command: what failed, and never a secret."""

from __future__ import annotations

import pytest
from sqlalchemy.exc import OperationalError

from service.cli import failure_line
from service.domain import LockTimeout, StoreUnavailable

PASSWORD = "p@ss word/42"
URL = "postgresql+psycopg://bank:p%40ss%20word%2F42@db:5432/bank"


def driver_error(message: str) -> OperationalError:
    return OperationalError("SELECT 1", {}, Exception(message))


@pytest.mark.parametrize("form", [PASSWORD, "p%40ss+word%2F42", "p%40ss%20word%2F42"])
def test_a_driver_message_that_quotes_the_password_is_masked(form: str) -> None:
    """Whatever form of the password the driver echoes, the line shows *** instead."""
    line = failure_line(URL, "use", driver_error(f'invalid dsn "password={form} host=db"\nmore'))
    assert "p@ss" not in line and "p%40ss" not in line and "\n" not in line
    assert line == (
        "bankrace: cannot use the database at postgresql+psycopg://bank:***@db:5432/bank: "
        'invalid dsn "password=*** host=db"'
    )


def test_a_wrapped_driver_error_gives_the_refusal_and_the_driver_reason() -> None:
    """A store refusal caused by the driver names both, on one line."""
    try:
        try:
            raise driver_error("connection failed: connection to server failed: Connection refused")
        except OperationalError as error:
            raise StoreUnavailable("the database cannot be reached") from error
    except StoreUnavailable as refusal:
        line = failure_line(URL, "use", refusal)
    assert line.endswith(
        ": the database cannot be reached; connection to server failed: Connection refused"
    )


def test_a_refusal_without_a_driver_cause_gives_its_detail() -> None:
    """A busy database is named as such."""
    line = failure_line("sqlite:///var/bank.db", "use", LockTimeout("the lock wait ran out"))
    assert (
        line == "bankrace: cannot use the database at sqlite:///var/bank.db: the lock wait ran out"
    )
