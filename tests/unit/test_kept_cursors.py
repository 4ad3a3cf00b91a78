"""Statement cursors kept with a pooled connection: per driver connection, per user.

The pool's record (`info`) outlives a driver connection it replaces after a
reconnect; a cursor of the old connection must never serve the new one. The
write path and the reads outside transactions keep their cursors apart.
"""

from __future__ import annotations

from service.stores.sql import READ_CURSORS_KEY
from service.stores.sql_cursor import STATEMENT_CURSORS_KEY, kept_cursors


def test_the_same_driver_connection_finds_its_cursors_again() -> None:
    info: dict[object, object] = {}
    driver = object()
    kept_cursors(info, READ_CURSORS_KEY, driver)["SELECT 1"] = "cursor"
    assert kept_cursors(info, READ_CURSORS_KEY, driver) == {"SELECT 1": "cursor"}


def test_a_replaced_driver_connection_starts_afresh() -> None:
    info: dict[object, object] = {}
    kept_cursors(info, READ_CURSORS_KEY, object())["SELECT 1"] = "cursor of the old connection"
    assert kept_cursors(info, READ_CURSORS_KEY, object()) == {}


def test_reads_and_writes_keep_their_cursors_apart() -> None:
    info: dict[object, object] = {}
    driver = object()
    kept_cursors(info, STATEMENT_CURSORS_KEY, driver)["UPDATE"] = "write cursor"
    assert kept_cursors(info, READ_CURSORS_KEY, driver) == {}
    assert kept_cursors(info, STATEMENT_CURSORS_KEY, driver) == {"UPDATE": "write cursor"}
