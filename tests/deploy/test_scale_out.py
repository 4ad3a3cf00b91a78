"""Scale-out through the load balancer: two replicas on one PostgreSQL behind the project's nginx.

The deployment of the `scale` compose profile, on loopback: a fresh database migrated with
`python -m service db upgrade`, two `bankrace serve` replicas (2 gunicorn workers each) and
nginx rendered from deploy/nginx/bankrace.conf.template. Through the balancer, the same burst
of concurrent deposits with the same race window runs in each mode. `locked`, `optimistic` and
`atomic` must lose nothing; `process-lock` (a lock per process: four processes here) and
`unlocked` must lose deposits, and the server's own /audit must report exactly that drift --
the proof that this harness can fail.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest
import requests

from tests.deploy.balancer import PROJECT_ROOT, Balancer, require_nginx
from tests.support.postgres import fresh_database
from tests.support.servers import ServerProcess, clean_environment

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

ADMIN_TOKEN = "scale-out-admin-token"
REPLICA_COUNT = 2
WORKERS_PER_REPLICA = 2
THREADS_PER_WORKER = 8
DEPOSIT_COUNT = 200
CLIENT_THREADS = 16
RACE_WINDOW_MS = 20
REQUEST_TIMEOUT_SECONDS = 30
MIGRATION_TIMEOUT_SECONDS = 60
# DESIGN §3: a PUT /mode reaches every worker process and replica within one second.
MODE_PROPAGATION_SECONDS = 1.0
ACCESS_LOG_DEADLINE_SECONDS = 5.0
POLL_INTERVAL_SECONDS = 0.05
SAFE_MODES = ("locked", "optimistic", "atomic")
UNSAFE_MODES = ("process-lock", "unlocked")
# Honest refusals a safe mode may answer under this contention (optimistic runs out of retries).
REFUSAL_CODES = {"locked": set(), "atomic": set(), "optimistic": {"write_conflict"}}
# With 16 clients fighting over one row, optimistic may refuse some; most must still land.
MINIMUM_ACKNOWLEDGED_SHARE = 0.5


@dataclass
class Cluster:
    balancer: Balancer
    replicas: list[ServerProcess]


@dataclass
class Burst:
    """The outcome of DEPOSIT_COUNT concurrent deposits of 1 into one account."""

    statuses: list[int]
    lock_modes: set[str]
    refusal_codes: set[str]
    refusals_without_retry_after: int

    @property
    def acknowledged(self) -> int:
        return self.statuses.count(201)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    require_nginx()
    workdir = tmp_path_factory.mktemp("scale-out")
    with fresh_database() as database_url:
        migrate(database_url)
        settings = {
            "BANK_DATABASE_URL": database_url,
            "BANK_ADMIN_TOKEN": ADMIN_TOKEN,
            "BANK_ALLOW_UNSAFE_MODES": "1",
            "BANK_LOCK_MODE": "locked",
            "BANK_RACE_WINDOW_MS": "0",
            "BANK_WORKERS": str(WORKERS_PER_REPLICA),
            "BANK_THREADS": str(THREADS_PER_WORKER),
        }
        replicas: list[ServerProcess] = []
        try:
            for _ in range(REPLICA_COUNT):
                replicas.append(ServerProcess(workdir=workdir, settings=settings).start())
            upstreams = [f"127.0.0.1:{replica.port}" for replica in replicas]
            with Balancer(workdir=workdir, upstream_servers=upstreams) as balancer:
                yield Cluster(balancer, replicas)
        finally:
            for replica in replicas:
                replica.stop()


def migrate(database_url: str) -> None:
    """`python -m service db upgrade`, the compose `migrate` service's command."""
    result = subprocess.run(
        [sys.executable, "-m", "service", "db", "upgrade"],
        cwd=PROJECT_ROOT,
        env=clean_environment({"BANK_DATABASE_URL": database_url}),
        capture_output=True,
        text=True,
        timeout=MIGRATION_TIMEOUT_SECONDS,
    )
    assert result.returncode == 0, result.stderr


def switch_mode(cluster: Cluster, lock_mode: str, race_window_ms: int) -> None:
    """PUT /mode through the balancer; every replica must report it within the bound."""
    response = requests.put(
        f"{cluster.balancer.url}/mode",
        json={"lock_mode": lock_mode, "race_window_ms": race_window_ms},
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        timeout=REQUEST_TIMEOUT_SECONDS,
    )
    assert response.status_code == 200, response.text
    assert response.json()["lock_mode"] == lock_mode
    # Poll every replica directly (new connection each time, so different workers answer)
    # for the whole propagation bound: by its end every worker must have the new mode, which
    # the burst then checks per request through X-Lock-Mode.
    deadline = time.monotonic() + MODE_PROPAGATION_SECONDS
    pending = {replica.url for replica in cluster.replicas}
    while time.monotonic() < deadline:
        for url in sorted(pending):
            mode = requests.get(f"{url}/mode", timeout=REQUEST_TIMEOUT_SECONDS).json()
            if mode["lock_mode"] == lock_mode and mode["race_window_ms"] == race_window_ms:
                pending.discard(url)
        time.sleep(POLL_INTERVAL_SECONDS)  # polling interval, not synchronisation
    assert not pending, f"still not in {lock_mode} after {MODE_PROPAGATION_SECONDS}s: {pending}"


def open_account(cluster: Cluster, owner: str) -> int:
    response = requests.post(
        f"{cluster.balancer.url}/accounts", json={"owner": owner}, timeout=REQUEST_TIMEOUT_SECONDS
    )
    assert response.status_code == 201, response.text
    return int(response.json()["id"])


def deposit_burst(cluster: Cluster, account_id: int) -> Burst:
    url = f"{cluster.balancer.url}/accounts/{account_id}/deposit"

    def deposit(_: int) -> requests.Response:
        return requests.post(url, json={"amount": 1}, timeout=REQUEST_TIMEOUT_SECONDS)

    with ThreadPoolExecutor(max_workers=CLIENT_THREADS) as pool:
        responses = list(pool.map(deposit, range(DEPOSIT_COUNT)))
    refusals = [response for response in responses if response.status_code == 503]
    return Burst(
        statuses=[response.status_code for response in responses],
        lock_modes={response.headers.get("X-Lock-Mode", "") for response in responses},
        refusal_codes={response.json().get("code", "") for response in refusals},
        refusals_without_retry_after=sum("Retry-After" not in r.headers for r in refusals),
    )


def get_json(cluster: Cluster, path: str) -> dict[str, object]:
    response = requests.get(f"{cluster.balancer.url}{path}", timeout=REQUEST_TIMEOUT_SECONDS)
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


def upstreams_that_served(cluster: Cluster, account_id: int, expected_lines: int) -> set[str]:
    """Replica addresses in nginx's access log for this account's deposits.

    nginx logs a request after answering it, so the log is polled until every line is there.
    """
    pattern = re.compile(rf'"POST /accounts/{account_id}/deposit HTTP/1\.1" .* upstream=(\S+)')
    log_path = cluster.balancer.directory / "stdout.log"
    deadline = time.monotonic() + ACCESS_LOG_DEADLINE_SECONDS
    while True:
        matches = [pattern.search(line) for line in log_path.read_text().splitlines()]
        served = [match.group(1) for match in matches if match]
        if len(served) >= expected_lines or time.monotonic() > deadline:
            break
        time.sleep(POLL_INTERVAL_SECONDS)  # polling interval, not synchronisation
    assert len(served) == expected_lines, f"{len(served)} log lines for {expected_lines} POSTs"
    return set(served)


def run_phase(cluster: Cluster, lock_mode: str) -> tuple[int, Burst, dict, dict, dict]:
    """One mode: switch, open an account, burst deposits; returns what the audit needs."""
    switch_mode(cluster, lock_mode, RACE_WINDOW_MS)
    account_id = open_account(cluster, f"scale-out {lock_mode}")
    bank_before = get_json(cluster, "/audit")
    burst = deposit_burst(cluster, account_id)
    account = get_json(cluster, f"/accounts/{account_id}")
    account_audit = get_json(cluster, f"/accounts/{account_id}/audit")
    bank_after = get_json(cluster, "/audit")
    lost = burst.acknowledged - int(account["balance"])  # type: ignore[call-overload]
    print(
        f"{lock_mode} via nginx: lost {lost} of {burst.acknowledged} acknowledged deposits "
        f"({burst.statuses.count(503)} refused with 503; {REPLICA_COUNT} replicas x "
        f"{WORKERS_PER_REPLICA} workers x {THREADS_PER_WORKER} threads, {CLIENT_THREADS} "
        f"client threads, race window {RACE_WINDOW_MS} ms)"
    )
    replica_addresses = {f"127.0.0.1:{replica.port}" for replica in cluster.replicas}
    assert upstreams_that_served(cluster, account_id, DEPOSIT_COUNT) == replica_addresses
    return lost, burst, account_audit, bank_before, bank_after


@pytest.mark.parametrize("lock_mode", SAFE_MODES)
def test_safe_mode_loses_nothing_across_replicas(cluster: Cluster, lock_mode: str) -> None:
    """Under the race window that breaks process-lock, a safe mode keeps every deposit."""
    lost, burst, account_audit, bank_before, bank_after = run_phase(cluster, lock_mode)
    assert burst.lock_modes == {lock_mode}, "a worker served the burst in another mode"
    assert set(burst.statuses) <= {201, 503}, burst.statuses
    assert burst.refusal_codes <= REFUSAL_CODES[lock_mode]
    assert burst.refusals_without_retry_after == 0
    assert burst.acknowledged >= DEPOSIT_COUNT * MINIMUM_ACKNOWLEDGED_SHARE
    assert lost == 0
    assert account_audit["balance"] == account_audit["journal_balance"] == burst.acknowledged
    assert account_audit["drift"] == 0 and account_audit["chain_breaks"] == 0
    assert account_audit["consistent"] is True
    # The whole bank moved by exactly the acknowledged money and gained no drift.
    for total in ("total_balance", "total_journal"):
        assert bank_after[total] == bank_before[total] + burst.acknowledged  # type: ignore[operator]
    assert bank_after["drift"] == bank_before["drift"]
    assert bank_after["inconsistent_accounts"] == bank_before["inconsistent_accounts"]


@pytest.mark.parametrize("lock_mode", UNSAFE_MODES)
def test_unsafe_mode_loses_deposits_and_audit_sees_it(cluster: Cluster, lock_mode: str) -> None:
    """A per-process lock cannot protect four processes: deposits vanish, /audit says so."""
    lost, burst, account_audit, bank_before, bank_after = run_phase(cluster, lock_mode)
    assert burst.lock_modes == {lock_mode}
    assert burst.statuses == [201] * DEPOSIT_COUNT
    assert lost > 0, f"{lock_mode} lost nothing across {REPLICA_COUNT} replicas"
    # The journal has every acknowledged deposit; the stored balance is short by `lost`.
    assert account_audit["journal_balance"] == burst.acknowledged
    assert account_audit["drift"] == -lost
    assert account_audit["chain_breaks"] > 0  # type: ignore[operator]
    assert account_audit["consistent"] is False
    assert bank_after["drift"] == bank_before["drift"] - lost  # type: ignore[operator]
    assert bank_after["consistent"] is False
    assert bank_after["inconsistent_accounts"] == bank_before["inconsistent_accounts"] + 1  # type: ignore[operator]


def test_container_health_probe_passes_on_a_real_replica(cluster: Cluster) -> None:
    """deploy/healthcheck.py (the image's HEALTHCHECK) succeeds on a live replica's BANK_BIND."""
    for replica in cluster.replicas:
        result = subprocess.run(
            [sys.executable, str(PROJECT_ROOT / "deploy" / "healthcheck.py")],
            env={**os.environ, "BANK_BIND": f"0.0.0.0:{replica.port}"},
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 0, result.stderr


def test_request_id_passes_through_the_balancer(cluster: Cluster) -> None:
    """The replica echoes the client's X-Request-ID; without one, nginx's id (32 hex digits)."""
    chosen = requests.get(
        f"{cluster.balancer.url}/readyz",
        headers={"X-Request-ID": "scale-out-trace-1"},
        timeout=REQUEST_TIMEOUT_SECONDS,
    )
    assert chosen.status_code == 200
    assert chosen.headers["X-Request-ID"] == "scale-out-trace-1"
    generated = requests.get(f"{cluster.balancer.url}/readyz", timeout=REQUEST_TIMEOUT_SECONDS)
    assert re.fullmatch(r"[0-9a-f]{32}", generated.headers["X-Request-ID"])


KEYED_TWINS = 24


@pytest.mark.parametrize("lock_mode", ["locked", "atomic", "unlocked"])
def test_keyed_twins_across_replicas_move_the_money_once(cluster: Cluster, lock_mode: str) -> None:
    """24 identical keyed deposits at once through nginx to 2 replicas: one execution, even
    unlocked -- the key is unique in the shared database, not in any one process."""
    switch_mode(cluster, lock_mode, RACE_WINDOW_MS)
    account_id = open_account(cluster, f"keyed twins {lock_mode}")
    url = f"{cluster.balancer.url}/accounts/{account_id}/deposit"
    start = threading.Barrier(KEYED_TWINS, timeout=REQUEST_TIMEOUT_SECONDS)

    def deposit(_: int) -> requests.Response:
        start.wait()
        return requests.post(
            url,
            json={"amount": 7},
            headers={"Idempotency-Key": f"replica-twins-{lock_mode}"},
            timeout=REQUEST_TIMEOUT_SECONDS,
        )

    with ThreadPoolExecutor(max_workers=KEYED_TWINS) as pool:
        answers = list(pool.map(deposit, range(KEYED_TWINS)))
    executed = [
        a for a in answers if a.status_code == 201 and "Idempotent-Replayed" not in a.headers
    ]
    replayed = [a for a in answers if a.headers.get("Idempotent-Replayed") == "true"]
    in_progress = [a for a in answers if a.status_code == 409]
    print(
        f"{lock_mode} keyed twins via nginx: {len(executed)} executed, {len(replayed)} "
        f"replayed, {len(in_progress)} told 409 in progress"
    )
    assert len(executed) == 1
    assert len(executed) + len(replayed) + len(in_progress) == KEYED_TWINS
    assert all(a.json()["code"] == "idempotency_in_progress" for a in in_progress)
    assert int(get_json(cluster, f"/accounts/{account_id}")["balance"]) == 7  # type: ignore[call-overload]
    assert get_json(cluster, f"/accounts/{account_id}/audit")["consistent"] is True
    served = upstreams_that_served(cluster, account_id, KEYED_TWINS)
    assert served == {f"127.0.0.1:{replica.port}" for replica in cluster.replicas}
