"""A worker boots, and serves, whatever the store is doing at that moment.

gunicorn stops the whole service when a worker fails to boot, so a worker
that starts while another process holds SQLite's write lock (or while the
database is down) must come up anyway, answer 503 while the store cannot
serve, and recover by itself once it can.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from service import create_app
from service.domain import LockMode
from service.schema import upgrade
from tests.conftest import make_config

SHORT_LOCK_TIMEOUT_MS = 200


def test_a_worker_boots_while_another_connection_holds_the_sqlite_write_lock(
    tmp_path: Path,
) -> None:
    """create_app under a held BEGIN IMMEDIATE boots; writes answer 503 until the lock is freed."""
    database = tmp_path / "bank.db"
    url = f"sqlite:///{database}"
    upgrade(url)
    holder = sqlite3.connect(database, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        app = create_app(
            make_config(url, lock_timeout_ms=SHORT_LOCK_TIMEOUT_MS, lock_mode=LockMode.ATOMIC)
        )
        client = app.test_client()
        assert client.get("/healthz").status_code == 200
        refused = client.post("/accounts", json={"owner": "early"})
        assert refused.status_code == 503, refused.get_data(as_text=True)
        assert refused.get_json()["code"] == "lock_timeout"
        assert refused.headers["Retry-After"]
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    opened = client.post("/accounts", json={"owner": "later", "opening_balance": 5})
    assert opened.status_code == 201, opened.get_data(as_text=True)
    assert client.get("/mode").get_json()["lock_mode"] == "atomic"
    assert client.get("/audit").get_json()["consistent"] is True
    app.extensions["bankrace"].store.close()


def test_a_worker_boots_when_the_database_cannot_be_opened(tmp_path: Path) -> None:
    """A database path that cannot be opened: the worker boots, /readyz and writes answer 503."""
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the database's folder should be")
    url = f"sqlite:///{blocker / 'bank.db'}"
    app = create_app(make_config(url))
    client = app.test_client()
    assert client.get("/healthz").status_code == 200
    ready = client.get("/readyz")
    assert ready.status_code == 503 and ready.get_json()["code"] == "store_unavailable"
    write = client.post("/accounts", json={"owner": "x"})
    assert write.status_code == 503 and write.get_json()["code"] == "store_unavailable"
    app.extensions["bankrace"].store.close()
