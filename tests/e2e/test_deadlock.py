"""The seed's fourth lesson: locks taken in request order deadlock; ascending order never does.

Opposing transfers A->B and B->A under `locked` with a race window. With
BANK_TRANSFER_LOCK_ORDER=request the in-memory store's bounded lock wait
turns each deadlock into a 503 lock_timeout, and PostgreSQL detects it
(40P01) and the service retries; with the default sorted order neither
happens. Money is conserved either way: a refused transfer changes nothing.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from service.schema import upgrade
from tests.support.load import Call, Outcome, audit_of, balance_of, fire, open_account
from tests.support.postgres import fresh_database
from tests.support.servers import ServerProcess

pytestmark = pytest.mark.e2e

TRANSFERS_EACH_WAY = 40
# Each PostgreSQL deadlock costs a second of detection: fewer transfers there.
POSTGRES_TRANSFERS_EACH_WAY = 12
OPENING = 1000
WINDOW_MS = 10
# Request order: short, so that each deadlock costs half a second, not the
# whole run. Sorted order: an honest queue (16 clients x 10 ms, some 0.2 s)
# must never time out, even on a loaded 2-core machine, so any 503 there
# would be a deadlock -- the long bound leaves a fiftyfold margin.
MEMORY_LOCK_TIMEOUT_MS = {"request": 500, "sorted": 10_000}
# PostgreSQL looks for deadlocks only after deadlock_timeout (1 s by default):
# its lock wait must outlast that by a margin, or a deadlock ends as a 503.
POSTGRES_LOCK_TIMEOUT_MS = 5000


def opposing_transfers(
    server: ServerProcess, each_way: int = TRANSFERS_EACH_WAY
) -> tuple[Outcome, int]:
    first, second = open_account(server.url, OPENING), open_account(server.url, OPENING)
    forth = Call("POST", "/transfers", {"from_account": first, "to_account": second, "amount": 1})
    back = Call("POST", "/transfers", {"from_account": second, "to_account": first, "amount": 1})
    outcome = fire(server.url, [forth, back] * each_way)
    return outcome, balance_of(server.url, first) + balance_of(server.url, second)


def serve(
    tmp_path: Path, database_url: str, order: str, workers: int, lock_timeout_ms: int
) -> ServerProcess:
    return ServerProcess(
        workdir=tmp_path,
        settings={
            "BANK_DATABASE_URL": database_url,
            "BANK_TRANSFER_LOCK_ORDER": order,
            "BANK_RACE_WINDOW_MS": str(WINDOW_MS),
            "BANK_LOCK_TIMEOUT_MS": str(lock_timeout_ms),
            "BANK_WORKERS": str(workers),
        },
    ).start()


@pytest.mark.parametrize(("order", "deadlocks"), [("request", True), ("sorted", False)])
def test_memory_store_deadlock_becomes_a_bounded_503(
    tmp_path: Path, order: str, deadlocks: bool
) -> None:
    """Request-order locking deadlocks into 503 lock_timeout; sorted order never does."""
    server = serve(tmp_path, "memory://", order, 1, MEMORY_LOCK_TIMEOUT_MS[order])
    try:
        outcome, total = opposing_transfers(server)
        audit = audit_of(server.url)
    finally:
        server.stop()
    print(
        f"memory, {order} order, lock timeout {MEMORY_LOCK_TIMEOUT_MS[order]} ms: "
        f"{outcome.count(503)} lock timeouts of {2 * TRANSFERS_EACH_WAY}"
    )
    assert outcome.unexplained_5xx == []
    assert (outcome.count(503) > 0) is deadlocks
    assert outcome.count(201) + outcome.count(503) == 2 * TRANSFERS_EACH_WAY
    assert total == 2 * OPENING and audit["consistent"] is True


@pytest.mark.postgres
@pytest.mark.parametrize(("order", "deadlocks"), [("request", True), ("sorted", False)])
def test_postgres_detects_deadlocks_and_the_service_retries(
    tmp_path: Path, order: str, deadlocks: bool
) -> None:
    """PostgreSQL breaks request-order deadlocks (40P01); retries keep money conserved."""
    with fresh_database() as database_url:
        upgrade(database_url)
        server = serve(tmp_path, database_url, order, 2, POSTGRES_LOCK_TIMEOUT_MS)
        try:
            outcome, total = opposing_transfers(server, POSTGRES_TRANSFERS_EACH_WAY)
            audit = audit_of(server.url)
        finally:
            server.stop()
    retries = server.read_log().count("database retry after deadlock detected")
    print(
        f"postgres, {order} order: {retries} deadlock retries, "
        f"{outcome.count(503)} answered 503 of {2 * POSTGRES_TRANSFERS_EACH_WAY}"
    )
    assert outcome.unexplained_5xx == []
    assert outcome.count(201) + outcome.count(503) == 2 * POSTGRES_TRANSFERS_EACH_WAY
    assert (retries > 0) is deadlocks
    assert total == 2 * OPENING and audit["consistent"] is True
