"""A POST whose replica died mid-request, retried with its Idempotency-Key, moves money once.

Two replicas on one PostgreSQL behind the project's nginx. A keyed deposit is
sent through the balancer in `locked` mode with a race window; once its key
is claimed in the database (it is inside its window, money not yet moved),
both replicas are killed with SIGKILL. nginx never resends a POST that
reached a replica, so the client gets a 502 and cannot know what happened.
The replicas come back; the client retries with the same key, bounded, with
the Retry-After it is told: 409 in progress until the dead request's lease
has passed, then the deposit runs -- exactly once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import requests
from sqlalchemy import create_engine, text

from tests.deploy.balancer import Balancer, require_nginx
from tests.deploy.test_scale_out import migrate
from tests.support.postgres import fresh_database
from tests.support.servers import ServerProcess

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

LOCK_TIMEOUT_MS = 200
RACE_WINDOW_MS = 1500
KEY = "died-mid-request"
AMOUNT = 42
REQUEST_TIMEOUT_SECONDS = 30
CLAIM_DEADLINE_SECONDS = 10
# The lease is 3 lock timeouts + 2 race windows + 5 s = 8.6 s here; retries stop well after.
RETRY_DEADLINE_SECONDS = 40
MAX_RETRIES = 60


@dataclass
class Deployment:
    database_url: str
    balancer: Balancer
    replicas: list[ServerProcess]


@pytest.fixture
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    require_nginx()
    workdir = tmp_path_factory.mktemp("balancer-idempotency")
    with fresh_database() as database_url:
        migrate(database_url)
        settings = {
            "BANK_DATABASE_URL": database_url,
            "BANK_LOCK_MODE": "locked",
            "BANK_RACE_WINDOW_MS": str(RACE_WINDOW_MS),
            "BANK_LOCK_TIMEOUT_MS": str(LOCK_TIMEOUT_MS),
            "BANK_WORKERS": "1",
            "BANK_THREADS": "4",
        }
        replicas = [ServerProcess(workdir=workdir, settings=settings).start() for _ in range(2)]
        try:
            upstreams = [f"127.0.0.1:{replica.port}" for replica in replicas]
            with Balancer(workdir=workdir, upstream_servers=upstreams) as balancer:
                yield Deployment(database_url, balancer, replicas)
        finally:
            for replica in replicas:
                replica.stop()


def key_state(database_url: str) -> str | None:
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            state: str | None = connection.execute(
                text("SELECT state FROM idempotency_keys WHERE idempotency_key = :key"),
                {"key": KEY},
            ).scalar_one_or_none()
            return state
    finally:
        engine.dispose()


def deposit(url: str, account: int) -> requests.Response:
    return requests.post(
        f"{url}/accounts/{account}/deposit",
        json={"amount": AMOUNT},
        headers={"Idempotency-Key": KEY},
        timeout=REQUEST_TIMEOUT_SECONDS,
    )


def test_a_keyed_post_cut_off_by_a_dying_replica_is_retried_into_exactly_one_deposit(
    deployment: Deployment,
) -> None:
    """502 for the cut-off request, 409 while its claim is leased, then one deposit."""
    url = deployment.balancer.url
    opened = requests.post(f"{url}/accounts", json={"owner": "cut off"}, timeout=10)
    account = int(opened.json()["id"])

    first: list[requests.Response] = []
    sender = threading.Thread(target=lambda: first.append(deposit(url, account)))
    sender.start()
    deadline = time.monotonic() + CLAIM_DEADLINE_SECONDS
    while key_state(deployment.database_url) != "in_progress":
        assert time.monotonic() < deadline, "the deposit never claimed its key"
        time.sleep(0.02)  # polling the database against a deadline
    for replica in deployment.replicas:
        replica.kill()  # mid-request: claimed, inside its race window, nothing moved
    sender.join(REQUEST_TIMEOUT_SECONDS)
    assert first[0].status_code == 502, first[0].text

    for replica in deployment.replicas:
        replica.start()
    statuses: list[int] = []
    deadline = time.monotonic() + RETRY_DEADLINE_SECONDS
    for _ in range(MAX_RETRIES):
        answer = deposit(url, account)
        statuses.append(answer.status_code)
        if answer.status_code != 409:
            break
        assert answer.json()["code"] == "idempotency_in_progress"
        assert time.monotonic() < deadline, f"still in progress after retries: {statuses}"
        time.sleep(int(answer.headers["Retry-After"]))  # the client's backoff, as told
    print(f"retries after the 502: {statuses}")
    assert statuses[-1] == 201 and "Idempotent-Replayed" not in answer.headers
    replay = deposit(url, account)
    assert replay.status_code == 201 and replay.headers["Idempotent-Replayed"] == "true"
    balance = requests.get(f"{url}/accounts/{account}", timeout=10).json()["balance"]
    assert balance == AMOUNT
    journal = requests.get(f"{url}/accounts/{account}/transactions", timeout=10).json()
    assert len(journal["items"]) == 1
