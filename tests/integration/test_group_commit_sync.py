"""The group commit's fsync per batch: a batch of non-durable jobs only (idempotency claims)
commits at synchronous=NORMAL on a WAL database; every other batch at the connection's own
level (FULL); a rollback-journal database is never relaxed; a relaxed connection never goes
back to the pool. Why that is safe: GroupCommitter._synchronous."""

from __future__ import annotations

import datetime as dt
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, create_engine, event

from service.domain import utc_now
from service.idempotency import Claim
from service.schema import upgrade
from service.stores import sql_accounts, sql_keys
from service.stores.engines import build_engine
from service.stores.group_commit import GroupCommitter
from service.stores.sql import SqlStore
from service.stores.sql_cursor import DriverCursor
from service.stores.writer_lock import WriterLock
from tests.integration.test_group_commit import JOIN_DEADLINE_SECONDS, wait_until_queued

FULL, NORMAL = 2, 1


def later(seconds: float = 10.0) -> float:
    return time.monotonic() + seconds


@pytest.fixture
def database(tmp_path: Path) -> str:
    path = tmp_path / "scratch.db"
    sqlite3.connect(path).close()  # the service's engines open a database, never create one
    return str(path)


@pytest.fixture
def engine(database: str) -> Iterator[Engine]:
    built = build_engine(f"sqlite:///{database}", lock_timeout_ms=2000, pool_size=4)
    yield built
    built.dispose()


def begin_immediate(connection: Connection) -> None:
    connection.execution_options(sqlite_begin="IMMEDIATE")


def committer_of(engine: Engine, database: str) -> GroupCommitter:
    return GroupCommitter(engine, prepare=begin_immediate, writer_lock=WriterLock(database).held)


def synchronous(connection: Connection) -> int:
    """What the job's transaction will commit with."""
    return int(connection.exec_driver_sql("PRAGMA synchronous").scalar_one())


def test_a_batch_of_claims_only_skips_its_fsync_and_any_other_batch_keeps_it(
    engine: Engine, database: str
) -> None:
    committer = committer_of(engine, database)
    assert committer.run(synchronous, later()) == FULL
    assert committer.run(synchronous, later(), durable=False) == NORMAL
    assert committer.run(synchronous, later()) == FULL
    assert committer.run(synchronous, later(), durable=False) == NORMAL
    committer.close()


def test_a_claim_in_a_batch_with_a_durable_job_is_committed_with_its_fsync(
    engine: Engine, database: str
) -> None:
    """A claim queued behind a money job in one batch rides on that batch's fsync."""
    committer = committer_of(engine, database)
    gate_holding, gate_open = threading.Event(), threading.Event()

    def gate(connection: Connection) -> None:
        gate_holding.set()
        assert gate_open.wait(JOIN_DEADLINE_SECONDS)

    answers: dict[str, Any] = {}

    def submit(name: str, durable: bool) -> None:
        answers[name] = committer.run(synchronous, later(), durable=durable)

    first = threading.Thread(target=committer.run, args=(gate, later()), daemon=True)
    first.start()
    assert gate_holding.wait(JOIN_DEADLINE_SECONDS)
    threads = [
        threading.Thread(target=submit, args=("claim", False), daemon=True),
        threading.Thread(target=submit, args=("money", True), daemon=True),
    ]
    for thread in threads:
        thread.start()
    wait_until_queued(committer, 2)  # both in the batch behind the gate
    gate_open.set()
    for thread in (first, *threads):
        thread.join(JOIN_DEADLINE_SECONDS)
    assert answers == {"claim": FULL, "money": FULL}
    committer.close()


def test_a_rollback_journal_database_is_never_relaxed(database: str) -> None:
    """Without WAL, a later commit's fsync does not cover an earlier one's pages."""
    engine = create_engine(f"sqlite:///{database}")

    @event.listens_for(engine, "connect")
    def on_connect(dbapi_connection: sqlite3.Connection, _record: object) -> None:
        dbapi_connection.isolation_level = None
        dbapi_connection.execute("PRAGMA journal_mode=DELETE")
        dbapi_connection.execute("PRAGMA synchronous=FULL")

    @event.listens_for(engine, "begin")
    def on_begin(connection: Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    committer = committer_of(engine, database)
    assert committer.run(synchronous, later(), durable=False) == FULL
    committer.close()
    engine.dispose()


def test_a_relaxed_connection_is_closed_not_handed_back_to_the_pool(
    engine: Engine, database: str
) -> None:
    committer = committer_of(engine, database)

    def driver_connection(connection: Connection) -> Any:
        return connection.connection.driver_connection

    relaxed = committer.run(driver_connection, later(), durable=False)
    committer.close()
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        relaxed.execute("SELECT 1")
    with engine.connect() as connection:  # whatever the pool hands out syncs in full
        assert synchronous(connection) == FULL


def test_the_stores_key_claim_skips_its_fsync_and_its_money_write_keeps_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SqlStore on SQLite: a claim alone commits at NORMAL, a money write at FULL."""
    url = f"sqlite:///{tmp_path / 'bank.db'}"
    upgrade(url)
    store = SqlStore(url, lock_timeout_ms=2000, pool_size=2)
    seen: list[tuple[str, int]] = []

    def recording(name: str, write: Any) -> Any:
        def recorded(cursor: DriverCursor, *arguments: Any) -> Any:
            seen.append((name, int(cursor.value("PRAGMA synchronous", {}))))
            return write(cursor, *arguments)

        return recorded

    monkeypatch.setattr(sql_keys, "claim_key", recording("claim", sql_keys.claim_key))
    monkeypatch.setattr(sql_accounts, "open_account", recording("money", sql_accounts.open_account))
    now = utc_now()
    assert store.claim_key(Claim("", "key-1", "fingerprint", "owner", now, dt.timedelta(1))) is None
    store.open_account("owner", "USD", 100, "locked")
    assert store.claim_key(Claim("", "key-2", "fingerprint", "owner", now, dt.timedelta(1))) is None
    store.close()
    assert seen == [("claim", NORMAL), ("money", FULL), ("claim", NORMAL)]
