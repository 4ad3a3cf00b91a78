"""Idempotency keys against a real gunicorn: twins move money once, replays survive a crash.

24 identical keyed deposits released at once over new connections (so both
workers get them) move the money exactly once in `locked`, `atomic` and even
`unlocked` -- uniqueness comes from the database's key, not a Python lock.
Every answer is the original 201, its replay, or 409 in progress; after a
SIGKILL and a restart, the replay is still the stored response.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests

from tests.e2e.conftest import StartServer
from tests.support.load import (
    NEW_CONNECTION_PER_REQUEST,
    REQUEST_TIMEOUT_SECONDS,
    audit_of,
    balance_of,
    journal_of,
    open_account,
)

pytestmark = pytest.mark.e2e

TWINS = 24
RACE_WINDOW_MS = 20
AMOUNT = 10


def keyed_deposit(url: str, account: int, key: str) -> requests.Response:
    return requests.post(
        f"{url}/accounts/{account}/deposit",
        json={"amount": AMOUNT},
        headers={"Idempotency-Key": key, **NEW_CONNECTION_PER_REQUEST},
        timeout=REQUEST_TIMEOUT_SECONDS,
    )


def release_twins(url: str, account: int, key: str) -> list[requests.Response]:
    start = threading.Barrier(TWINS, timeout=REQUEST_TIMEOUT_SECONDS)

    def one(_: int) -> requests.Response:
        start.wait()
        return keyed_deposit(url, account, key)

    with ThreadPoolExecutor(TWINS) as pool:
        return list(pool.map(one, range(TWINS)))


@pytest.mark.parametrize("mode", ["locked", "atomic", "unlocked"])
def test_concurrent_twins_move_the_money_exactly_once(start_server: StartServer, mode: str) -> None:
    """24 simultaneous requests with one key, 2 workers: one execution, the rest replays or 409."""
    server = start_server(lock_mode=mode, race_window_ms=RACE_WINDOW_MS)
    account = open_account(server.url, 0)
    answers = release_twins(server.url, account, f"twins-{mode}")

    originals = [
        r for r in answers if r.status_code == 201 and "Idempotent-Replayed" not in r.headers
    ]
    replays = [r for r in answers if r.headers.get("Idempotent-Replayed") == "true"]
    in_progress = [r for r in answers if r.status_code == 409]
    print(
        f"{mode}: {len(originals)} executed, {len(replays)} replayed, "
        f"{len(in_progress)} told 409 in progress"
    )
    assert len(originals) == 1, [r.status_code for r in answers]
    assert len(originals) + len(replays) + len(in_progress) == TWINS
    assert all(r.content == originals[0].content for r in replays)
    for refusal in in_progress:
        assert refusal.json()["code"] == "idempotency_in_progress"
        assert int(refusal.headers["Retry-After"]) >= 1
    retried = keyed_deposit(server.url, account, f"twins-{mode}")
    assert retried.status_code == 201 and retried.headers["Idempotent-Replayed"] == "true"
    assert retried.content == originals[0].content

    assert balance_of(server.url, account) == AMOUNT
    assert len(journal_of(server.url, account)) == 1
    assert audit_of(server.url, account)["consistent"] is True


def test_a_replay_after_sigkill_answers_the_stored_response(start_server: StartServer) -> None:
    """Acknowledged, then kill -9: after the restart the same key replays; money moved once."""
    server = start_server(lock_mode="locked")
    account = open_account(server.url, 0)
    first = keyed_deposit(server.url, account, "crash-key")
    assert first.status_code == 201
    first_body: dict[str, Any] = first.json()
    server.kill()
    server.start()
    again = keyed_deposit(server.url, account, "crash-key")
    assert again.status_code == 201 and again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == first_body
    assert again.headers["Location"] == first.headers["Location"]
    assert balance_of(server.url, account) == AMOUNT
    assert [entry["id"] for entry in journal_of(server.url, account)] == [first_body["id"]]
