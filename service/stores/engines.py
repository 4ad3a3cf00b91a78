"""Engine construction per dialect: the concurrency knobs of each database.

SQLite: WAL (readers never block the writer), synchronous=FULL (an
acknowledged commit survives a crash, not just a process kill), a busy
timeout equal to the lock timeout (a lock wait is bounded), and the
documented pysqlite recipe that turns off the driver's own BEGIN so we can
emit `BEGIN IMMEDIATE` ourselves: a read-modify-write that starts DEFERRED
and upgrades to a write lock fails at once with SQLITE_BUSY under WAL
instead of waiting. A file database is opened, never created, and each
connection is checked against the files its path names (`sqlite_files`).

PostgreSQL (psycopg 3): READ COMMITTED, a pool sized to the worker's
threads, and a check at each checkout so a restarted database is noticed
without restarting the service (`_check_on_checkout`): a pooled connection
the server closed (a restart, a cut path) has its socket readable (the
server's goodbye, or its end of stream), which costs one `poll` to see; only
such a connection is pinged, and one that fails the ping is replaced, with
every connection pooled before it, as SQLAlchemy's pre-ping does. A healthy
connection costs no round trip (pre-ping cost one per checkout). Every wait
on PostgreSQL is bounded:
- connecting: CONNECT_TIMEOUT_SECONDS (5 s, libpq connect_timeout);
- a free pooled connection: the lock timeout (pool_timeout);
- a row lock: BANK_LOCK_TIMEOUT_MS (server-side lock_timeout);
- a statement: the lock timeout + STATEMENT_TIMEOUT_MARGIN_MS (server side);
- a transaction left idle by a client: IDLE_IN_TRANSACTION_TIMEOUT_MS (server side);
- a silently dead network or host (no FIN, no RST: the server's timeouts
  never reach us, so only our kernel can tell): TCP keepalive probes an
  idle connection after KEEPALIVE_IDLE_SECONDS, every
  KEEPALIVE_INTERVAL_SECONDS, KEEPALIVE_COUNT times, and TCP_USER_TIMEOUT_MS
  drops a connection whose sent data stays unacknowledged that long. A
  thread waiting on a dead peer therefore gets an error (hence 503) within
  DEAD_PEER_NOTICED_SECONDS (11 s) of the last packet, whether it was
  sending or waiting for an answer; a request whose pooled connection is
  dead and cannot reconnect is answered after about TCP_USER_TIMEOUT_MS +
  CONNECT_TIMEOUT_SECONDS (15 s).
A connection that breaks after its checkout (or whose peer died without a
word, which no check short of a round trip can see) fails its first
statement: 503 store_unavailable, never a 500 (`sql_errors`), and the
failed rollback that follows invalidates it and the pool behind it.
Not bounded on the client: a peer whose kernel is alive but whose process
(or a proxy in between) stops answering. Its kernel acknowledges our data
and keepalive probes, and a query the server never received is under no
server-side timeout either; the thread waits until the peer closes the
connection or the worker stops.

Engines are built by `create_app`, i.e. in each gunicorn worker after the
fork, so no pool is ever shared across processes.
"""

from __future__ import annotations

import contextlib
import select
import sqlite3
from pathlib import Path
from typing import Any

import psycopg
from psycopg import pq
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url
from sqlalchemy.pool import ConnectionPoolEntry

from service.stores import sqlite_files

# A statement may run this much longer than a lock wait before it is cancelled.
STATEMENT_TIMEOUT_MARGIN_MS = 5000
POOL_OVERFLOW_CONNECTIONS = 4
CONNECT_TIMEOUT_SECONDS = 5
IDLE_IN_TRANSACTION_TIMEOUT_MS = 60_000
# A dead peer (see the module docstring). Probing every 2 s after 5 s of
# silence costs a few bytes per idle connection; a live server's kernel
# answers at once, so a slow query (up to statement_timeout) is never cut.
KEEPALIVE_IDLE_SECONDS = 5
KEEPALIVE_INTERVAL_SECONDS = 2
KEEPALIVE_COUNT = 3
TCP_USER_TIMEOUT_MS = 10_000
DEAD_PEER_NOTICED_SECONDS = max(
    KEEPALIVE_IDLE_SECONDS + KEEPALIVE_COUNT * KEEPALIVE_INTERVAL_SECONDS,
    -(-TCP_USER_TIMEOUT_MS // 1000),
)


def build_engine(url: str, *, lock_timeout_ms: int, pool_size: int) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(url, lock_timeout_ms=lock_timeout_ms, pool_size=pool_size)
    if parsed.get_backend_name() == "postgresql":
        return _postgresql_engine(url, lock_timeout_ms=lock_timeout_ms, pool_size=pool_size)
    raise ValueError(
        f"unsupported database {parsed.get_backend_name()!r}: use sqlite or postgresql"
    )


def ensure_sqlite_directory(url: str) -> None:
    """Create the folder of a file-backed SQLite database (var/ by default)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)


def _sqlite_engine(url: str, *, lock_timeout_ms: int, pool_size: int) -> Engine:
    # A worker must boot even where the folder cannot be made: connecting then
    # fails, and every request is answered 503 store_unavailable until it can.
    with contextlib.suppress(OSError):
        ensure_sqlite_directory(url)
    path = make_url(url).database
    file_backed = path not in (None, "", ":memory:")
    options: dict[str, Any] = {
        "connect_args": {"timeout": lock_timeout_ms / 1000, "check_same_thread": False}
    }
    if file_backed:  # never create the database; notice it deleted or replaced (sqlite_files)
        options = {"creator": sqlite_files.connector(str(path), lock_timeout_ms / 1000)}
    engine = create_engine(
        url,
        pool_size=pool_size,
        max_overflow=POOL_OVERFLOW_CONNECTIONS,
        pool_timeout=lock_timeout_ms / 1000,
        **options,
    )

    @event.listens_for(engine, "connect")
    def on_connect(dbapi_connection: sqlite3.Connection, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we send BEGIN ourselves
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(lock_timeout_ms)}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def on_begin(connection: Connection) -> None:
        behaviour = connection.get_execution_options().get("sqlite_begin", "DEFERRED")
        connection.exec_driver_sql(f"BEGIN {behaviour}")

    if file_backed:  # after on_connect: WAL mode has made the -wal and -shm files
        sqlite_files.watch(engine, str(path))
    return engine


def _postgresql_engine(url: str, *, lock_timeout_ms: int, pool_size: int) -> Engine:
    options = (
        f"-c lock_timeout={int(lock_timeout_ms)} "
        f"-c statement_timeout={int(lock_timeout_ms) + STATEMENT_TIMEOUT_MARGIN_MS} "
        f"-c idle_in_transaction_session_timeout={IDLE_IN_TRANSACTION_TIMEOUT_MS}"
    )
    engine = create_engine(
        url,
        connect_args={
            "options": options,
            "connect_timeout": CONNECT_TIMEOUT_SECONDS,
            "keepalives": 1,
            "keepalives_idle": KEEPALIVE_IDLE_SECONDS,
            "keepalives_interval": KEEPALIVE_INTERVAL_SECONDS,
            "keepalives_count": KEEPALIVE_COUNT,
            "tcp_user_timeout": TCP_USER_TIMEOUT_MS,
        },
        isolation_level="READ COMMITTED",
        pool_size=pool_size,
        max_overflow=POOL_OVERFLOW_CONNECTIONS,
        pool_timeout=lock_timeout_ms / 1000,
    )
    _check_on_checkout(engine)
    return engine


def _check_on_checkout(engine: Engine) -> None:
    """Replace a pooled connection the server closed; ping only one that looks closed.

    A connection made for this checkout is used as it is (pre-ping skips it
    too). Any other is pinged only when `_looks_closed`; a failed ping
    raises InvalidatePoolError, on which the pool replaces this connection
    and retires every one pooled before it -- what pre-ping does.
    """

    @event.listens_for(engine, "connect")
    def on_connect(_dbapi_connection: psycopg.Connection[Any], record: ConnectionPoolEntry) -> None:
        record.info["fresh"] = True

    @event.listens_for(engine, "checkout")
    def on_checkout(dbapi_connection: Any, record: ConnectionPoolEntry, _proxy: Any) -> None:
        if record.info.pop("fresh", False) or not _looks_closed(dbapi_connection):
            return
        if not engine.dialect._do_ping_w_event(dbapi_connection):  # False: a disconnect
            raise sa_exc.InvalidatePoolError("a pooled connection failed its ping")


def _looks_closed(connection: psycopg.Connection[Any]) -> bool:
    """Whether an idle connection may be closed, seen locally: no round trip.

    An idle connection's server sends nothing unasked but its goodbye (a
    FATAL error on shutdown or termination) and then its end of stream, so a
    readable socket means closed -- or, rarely, a notice, which the ping
    then reads. False is no promise: a peer that died without a word
    shows nothing here.
    """
    pgconn = connection.pgconn
    if (
        connection.closed
        or pgconn.status != pq.ConnStatus.OK
        or pgconn.transaction_status != pq.TransactionStatus.IDLE
    ):
        return True
    try:
        poller = select.poll()
        poller.register(pgconn.socket, select.POLLIN)
        return bool(poller.poll(0))
    except (OSError, psycopg.Error):
        return True
