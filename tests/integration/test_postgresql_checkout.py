"""PostgreSQL's pooled connections: checked at checkout without a round trip, replaced when closed.

`engines._check_on_checkout` replaced SQLAlchemy's pre-ping (one round trip
per checkout): a healthy connection is used as it is, one the server closed
(a restart, a terminated backend) is noticed by its readable socket and
replaced before the request uses it. A connection that breaks after its
checkout fails its first statement: 503 store_unavailable, never a 500, and
the next request gets a working connection.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import psycopg
import pytest
from sqlalchemy import event
from sqlalchemy.engine import make_url

from service import services
from service.domain import LockMode, LockTimeout, ModeSetting, StoreUnavailable
from service.keyed_locks import KeyedLocks
from service.schema import upgrade
from service.services import Bank, ModeSource
from service.stores.sql import SqlStore
from tests.support.postgres import fresh_database

pytestmark = pytest.mark.postgres

LOCK_TIMEOUT_MS = 2000
POOL_SIZE = 4
LOCKED = ModeSetting(LockMode.LOCKED, 0)
GONE_DEADLINE_SECONDS = 10


@pytest.fixture
def url() -> Iterator[str]:
    with fresh_database() as database_url:
        upgrade(database_url)
        yield database_url


@pytest.fixture
def bank(url: str) -> Iterator[Bank]:
    store = SqlStore(url, lock_timeout_ms=LOCK_TIMEOUT_MS, pool_size=POOL_SIZE)
    yield Bank(
        store=store,
        modes=ModeSource(store, allow_unsafe_modes=False),
        process_locks=KeyedLocks(LOCK_TIMEOUT_MS),
        lock_timeout_ms=LOCK_TIMEOUT_MS,
    )
    store.close()


def admin(url: str) -> psycopg.Connection[Any]:
    return psycopg.connect(make_url(url).set(drivername="postgresql").render_as_string(False))


def terminate_backends(url: str) -> int:
    """Terminate every other session on the test database, and wait until they are gone."""
    with admin(url) as connection:
        connection.autocommit = True
        others = "datname = current_database() AND pid <> pg_backend_pid()"
        pids = [
            row[0] for row in connection.execute(f"SELECT pid FROM pg_stat_activity WHERE {others}")
        ]
        for pid in pids:
            connection.execute("SELECT pg_terminate_backend(%s)", (pid,))
        deadline = time.monotonic() + GONE_DEADLINE_SECONDS
        while connection.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)", (pids,)
        ).fetchone() != (0,):
            assert time.monotonic() < deadline, f"backends {pids} still running"
    return len(pids)


def fill_the_pool(bank: Bank) -> None:
    """Several connections open at once, then back in the pool, idle."""
    assert isinstance(bank.store, SqlStore)
    with ExitStack() as stack:
        for _ in range(POOL_SIZE):
            connection = stack.enter_context(bank.store._engine.connect())
            connection.exec_driver_sql("SELECT 1")


def balance(bank: Bank, account_id: int) -> int:
    return bank.store.get_account(account_id).balance


def test_a_healthy_pooled_connection_is_used_without_a_ping(bank: Bank) -> None:
    assert isinstance(bank.store, SqlStore)
    engine = bank.store._engine
    pings = []
    real_ping = engine.dialect.do_ping

    def counted_ping(dbapi_connection: Any) -> bool:
        pings.append(dbapi_connection)
        return bool(real_ping(dbapi_connection))

    account = bank.store.open_account("healthy", "EUR", 0, "locked").id
    engine.dialect.do_ping = counted_ping  # type: ignore[method-assign]
    for _ in range(20):
        services.deposit(account, 1, LOCKED, bank)
    assert pings == []
    assert balance(bank, account) == 20


def test_connections_the_server_closed_are_replaced_at_checkout(url: str, bank: Bank) -> None:
    """Like a database restart: every pooled connection's backend is gone; no request notices."""
    account = bank.store.open_account("restart", "EUR", 0, "locked").id
    fill_the_pool(bank)
    assert terminate_backends(url) >= POOL_SIZE
    for _ in range(2 * POOL_SIZE):
        services.deposit(account, 1, LOCKED, bank)  # no StoreUnavailable
    assert balance(bank, account) == 2 * POOL_SIZE


def test_a_connection_lost_after_checkout_is_503_then_replaced(url: str, bank: Bank) -> None:
    """The check's blind spot: the backend dies between the checkout and the first statement."""
    assert isinstance(bank.store, SqlStore)
    engine = bank.store._engine
    account = bank.store.open_account("lost", "EUR", 0, "locked").id
    services.deposit(account, 1, LOCKED, bank)
    killed: list[int] = []

    @event.listens_for(engine, "checkout")
    def kill_once(*_: Any) -> None:
        if not killed:
            killed.append(terminate_backends(url))

    with pytest.raises(StoreUnavailable):
        services.deposit(account, 1, LOCKED, bank)
    assert killed and killed[0] >= 1
    services.deposit(account, 1, LOCKED, bank)
    assert balance(bank, account) == 2


def test_a_second_row_lock_waits_only_what_is_left_of_the_deadline(url: str, bank: Bank) -> None:
    """`locked` on two accounts: the second lock's wait is bounded by the time left (SET LOCAL)."""
    store = bank.store
    assert isinstance(store, SqlStore)
    first, second = (store.open_account(name, "EUR", 5, "locked").id for name in ("a", "b"))
    seen: list[str] = []

    def read_the_bound(writer: Any) -> Any:
        seen.append(writer._cursor.value("SELECT current_setting('lock_timeout')", {}))
        raise NotImplementedError  # nothing to write

    with pytest.raises(NotImplementedError):
        store.exclusive((first, second), read_the_bound)
    assert seen and seen[0].endswith("ms")
    assert 0 < int(seen[0].removesuffix("ms")) <= LOCK_TIMEOUT_MS
    with pytest.raises(NotImplementedError):  # the bound was the transaction's only
        store.exclusive((first, second), read_the_bound)
    with pytest.raises(NotImplementedError):
        store.exclusive((first,), read_the_bound)
    assert seen[2] == f"{LOCK_TIMEOUT_MS // 1000}s"

    with admin(url) as holder:  # holds the second row's lock until the end of the block
        holder.execute("SELECT 1 FROM accounts WHERE id = %s FOR UPDATE", (second,))
        started = time.monotonic()
        with pytest.raises(LockTimeout):
            store.exclusive((first, second), read_the_bound)
        assert time.monotonic() - started < 2 * LOCK_TIMEOUT_MS / 1000
