"""The distributed-lock lesson, live: `redis-lock` loses deposits when a lock holder outlives
its lease; `fenced`, under the same pressure, loses none.

Real gunicorn and the machine's Redis, in two deployments: one server with 2 worker
processes on SQLite, and 2 replicas (1 worker process each) sharing one PostgreSQL
database. Each deployment runs both modes under two pressures, on an account of its own:

- burst: a race window (LONG_WINDOW_MS) longer than the lease (LEASE_MS), and BURST_DEPOSITS
  concurrent deposits queueing for the lock: every holder outlives its lease;
- pause: a race window shorter than the lease (so an unpaused holder is on time), deposits
  flowing from every client, and PAUSES times the worker process that holds the account's
  lock (its pid is in the lock's value) frozen with SIGSTOP while DEPOSITS_DURING_PAUSE
  more deposits go to the rest of the deployment, then resumed with SIGCONT.

Lost = deposits acknowledged (201) minus what the balance gained. `redis-lock` must lose
some, and the server's own audit must show exactly that drift; `fenced` must lose none (the
late writes are refused 409 stale_lock) with the account's books consistent. The measured
figures are printed (pytest -s) for docs/distributed-locks.md.

Each deployment uses its own Redis database number, so no other test shares its locks.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
from prometheus_client.parser import text_string_to_metric_families

from service.schema import upgrade
from tests.support.postgres import fresh_database
from tests.support.redis_service import client_for, redis_url_for_database
from tests.support.servers import ServerProcess

pytestmark = pytest.mark.e2e

ADMIN_TOKEN = "distributed-locks-admin"
LEASE_MS = 150
SHORT_WINDOW_MS = 40
LONG_WINDOW_MS = 400
BURST_DEPOSITS = 16
BURST_CLIENTS = 6
PAUSE_CLIENTS = 4
PAUSES = 3
DEPOSITS_DURING_PAUSE = 3
# Bounds on every loop: the steady clients stop at this many deposits whatever happens.
PAUSE_PHASE_MAX_DEPOSITS = 400
HOLDER_DEADLINE_SECONDS = 15.0
# Freeze the holder once it has held the lock this long: past its read (and, in fenced, the
# claim's short write transaction, which on SQLite would hold up every other writer), inside
# its race window -- the moment a GC pause or a swap-in would hurt.
HELD_BEFORE_PAUSE_SECONDS = SHORT_WINDOW_MS / 4 / 1000
# DESIGN §3: a PUT /mode reaches every worker and replica within one second.
MODE_PROPAGATION_SECONDS = 1.0
MODE_POLL_SECONDS = 0.05
MODE_POLL_DEADLINE_SECONDS = 15.0
AGREEING_ANSWERS = 4
POLL_SECONDS = 0.002
REQUEST_TIMEOUT_SECONDS = 30
NEW_CONNECTION = {"Connection": "close"}  # any worker may accept the next request
# Deposits sent during a pause per one that must be answered meanwhile. Each new connection
# of a one-server deployment goes to the frozen worker's own SO_REUSEPORT socket with even
# odds, where it waits. With 3 per answer (9 for 3), fewer than 3 reached the live worker one
# pause in eleven (46 / 512): the pause then outlasted gunicorn's 30 s timeout, the master
# killed the frozen worker, and the clients whose connections it held died with it (about one
# run in two failed, in CI too). With 10 per answer: fewer than 3 of 30, about 4e-7 a pause.
PAUSED_SHARE = 10
REDIS_DATABASE = {"sqlite": 13, "postgres": 14}
# 503s with Retry-After that changed nothing: requests queued in a frozen worker outlive
# their lock wait or their queue wait. Counted and printed, never a loss.
HONEST_REFUSALS = {"lock_timeout", "overloaded"}


@dataclass
class Deployment:
    name: str
    servers: list[ServerProcess]
    redis: redis.Redis

    def master_of(self, pid: int) -> ServerProcess | None:
        """The server whose worker this pid is, if any (never signal anything else)."""
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            return None
        parent = int(
            next(line for line in status.splitlines() if line.startswith("PPid:")).split()[1]
        )
        for server in self.servers:
            if server.process is not None and server.process.pid == parent:
                return server
        return None

    def url_without(self, paused: ServerProcess) -> str:
        """A server the paused worker is not in; with one server, that server (its other worker
        accepts the new connections a stopped process cannot)."""
        others = [server for server in self.servers if server is not paused]
        return (others or self.servers)[0].url


@dataclass
class Tally:
    """What the clients were answered."""

    statuses: Counter[int] = field(default_factory=Counter)
    codes: Counter[str] = field(default_factory=Counter)
    lock_modes: Counter[str] = field(default_factory=Counter)
    unexplained: list[str] = field(default_factory=list)
    guard: threading.Lock = field(default_factory=threading.Lock)

    def record(self, response: requests.Response) -> None:
        with self.guard:
            self.statuses[response.status_code] += 1
            self.lock_modes[response.headers.get("X-Lock-Mode", "missing")] += 1
            if response.status_code != 201:
                self.codes[str(response.json().get("code"))] += 1
            if response.status_code >= 500 and not (
                response.status_code == 503 and "Retry-After" in response.headers
            ):
                self.unexplained.append(response.text[:200])

    @property
    def acknowledged(self) -> int:
        return self.statuses[201]


@dataclass(frozen=True)
class Measure:
    deployment: str
    mode: str
    pressure: str
    acknowledged: int
    gained: int
    refused: Counter[str]
    drift: int
    consistent: bool
    takeovers: int = 0

    @property
    def lost(self) -> int:
        return self.acknowledged - self.gained

    def line(self) -> str:
        refused = ", ".join(f"{count} {code}" for code, count in sorted(self.refused.items()))
        pauses = (
            f", {self.takeovers}/{PAUSES} pauses taken over" if self.pressure == "pause" else ""
        )
        return (
            f"{self.deployment:<28} {self.mode:<10} {self.pressure:<5}: lost {self.lost:>3} of "
            f"{self.acknowledged:>3} acknowledged deposits (refused: {refused or 'none'}; "
            f"audit drift {self.drift}{pauses})"
        )


# --------------------------------------------------------------------------- deployments


def server_settings(database_url: str, backend: str, workers: int) -> dict[str, str]:
    return {
        "BANK_DATABASE_URL": database_url,
        "BANK_ADMIN_TOKEN": ADMIN_TOKEN,
        "BANK_ALLOW_UNSAFE_MODES": "1",
        "BANK_LOCK_MODE": "redis-lock",
        "BANK_RACE_WINDOW_MS": str(LONG_WINDOW_MS),
        "BANK_REDIS_URL": redis_url_for_database(REDIS_DATABASE[backend]),
        "BANK_REDIS_LOCK_TTL_MS": str(LEASE_MS),
        "BANK_WORKERS": str(workers),
        "BANK_THREADS": "4",
    }


@pytest.fixture(
    params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)],
)
def deployment(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Deployment]:
    backend = str(request.param)
    with ExitStack() as stack:
        redis_client = client_for(redis_url_for_database(REDIS_DATABASE[backend]))
        stack.callback(redis_client.close)
        if backend == "sqlite":
            settings = server_settings(f"sqlite:///{tmp_path / 'bank.db'}", backend, workers=2)
            servers = [ServerProcess(workdir=tmp_path, settings=settings)]
            name = "SQLite, 1 server x 2 workers"
        else:
            database_url = stack.enter_context(fresh_database())
            upgrade(database_url)
            settings = server_settings(database_url, backend, workers=1)
            servers = [ServerProcess(workdir=tmp_path, settings=settings) for _ in range(2)]
            name = "PostgreSQL, 2 replicas x 1"
        for server in servers:
            stack.callback(server.stop)
            server.start()
        yield Deployment(name, servers, redis_client)


def switch_mode(deployment: Deployment, lock_mode: str, race_window_ms: int) -> None:
    """PUT /mode, then poll every server until the new mode is the only one served."""
    response = requests.put(
        f"{deployment.servers[0].url}/mode",
        json={"lock_mode": lock_mode, "race_window_ms": race_window_ms},
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        timeout=REQUEST_TIMEOUT_SECONDS,
    )
    assert response.status_code == 200, response.text
    changed_at = time.monotonic()
    # Ask every server (new connections: any worker may answer) until each has answered
    # the new mode several times in a row and the propagation bound has passed, after
    # which no worker may serve the old one: then every deposit below is in the new mode.
    agreeing = dict.fromkeys((server.url for server in deployment.servers), 0)
    while min(agreeing.values()) < AGREEING_ANSWERS or (
        time.monotonic() - changed_at <= MODE_PROPAGATION_SECONDS
    ):
        assert time.monotonic() - changed_at < MODE_POLL_DEADLINE_SECONDS, agreeing
        for url in agreeing:
            mode = get_json(f"{url}/mode")
            agrees = (mode["lock_mode"], mode["race_window_ms"]) == (lock_mode, race_window_ms)
            agreeing[url] = agreeing[url] + 1 if agrees else 0
        time.sleep(MODE_POLL_SECONDS)  # polling interval, not synchronisation


def open_account(deployment: Deployment, owner: str) -> int:
    response = requests.post(
        f"{deployment.servers[0].url}/accounts",
        json={"owner": owner},
        timeout=REQUEST_TIMEOUT_SECONDS,
    )
    assert response.status_code == 201, response.text
    return int(response.json()["id"])


def get_json(url: str) -> dict[str, Any]:
    response = requests.get(url, headers=NEW_CONNECTION, timeout=REQUEST_TIMEOUT_SECONDS)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def deposit(base_url: str, account_id: int, tally: Tally) -> None:
    response = requests.post(
        f"{base_url}/accounts/{account_id}/deposit",
        json={"amount": 1},
        headers=NEW_CONNECTION,
        timeout=REQUEST_TIMEOUT_SECONDS,
    )
    tally.record(response)


def measure(
    deployment: Deployment, mode: str, pressure: str, account_id: int, tally: Tally, **extra: Any
) -> Measure:
    url = deployment.servers[0].url
    account = get_json(f"{url}/accounts/{account_id}")
    audit = get_json(f"{url}/accounts/{account_id}/audit")
    result = Measure(
        deployment.name,
        mode,
        pressure,
        tally.acknowledged,
        int(account["balance"]),
        +tally.codes,
        int(audit["drift"]),
        bool(audit["consistent"]),
        **extra,
    )
    print(result.line())
    assert tally.unexplained == [], tally.unexplained
    assert set(tally.lock_modes) == {mode}, tally.lock_modes
    return result


# --------------------------------------------------------------------------- pressures


def burst(deployment: Deployment, mode: str) -> Measure:
    """BURST_DEPOSITS concurrent deposits of 1, spread over the servers, each holder's race
    window longer than its lease."""
    account_id = open_account(deployment, f"burst {mode}")
    tally = Tally()
    urls = [
        deployment.servers[index % len(deployment.servers)].url for index in range(BURST_DEPOSITS)
    ]
    with ThreadPoolExecutor(max_workers=BURST_CLIENTS) as pool:
        list(pool.map(lambda url: deposit(url, account_id, tally), urls))
    return measure(deployment, mode, "burst", account_id, tally)


def pauses(deployment: Deployment, mode: str) -> Measure:
    """Deposits flow from PAUSE_CLIENTS clients while, PAUSES times, the lock holder's worker
    process is frozen past its lease."""
    account_id = open_account(deployment, f"pause {mode}")
    tally = Tally()
    stop = threading.Event()
    sent = Counter[str]()
    sent_guard = threading.Lock()

    def client(index: int) -> None:
        url = deployment.servers[index % len(deployment.servers)].url
        while not stop.is_set():
            with sent_guard:
                if sent["deposits"] >= PAUSE_PHASE_MAX_DEPOSITS:
                    return
                sent["deposits"] += 1
            deposit(url, account_id, tally)

    takeovers = 0
    with ThreadPoolExecutor(max_workers=PAUSE_CLIENTS) as pool:
        futures = [pool.submit(client, index) for index in range(PAUSE_CLIENTS)]
        try:
            for _ in range(PAUSES):
                takeovers += pause_the_holder(deployment, account_id, tally)
        finally:
            stop.set()
        for future in futures:
            future.result()
    return measure(deployment, mode, "pause", account_id, tally, takeovers=takeovers)


def pause_the_holder(deployment: Deployment, account_id: int, tally: Tally) -> int:
    """Freeze the worker holding the account's lock, until DEPOSITS_DURING_PAUSE deposits
    were answered by the rest of the deployment, then let the frozen one go on. 1 if any of
    them landed meanwhile (the lock was taken over while its holder slept), else 0."""
    pid, server = wait_for_a_holder(deployment, f"bankrace:lock:account:{account_id}")
    acknowledged_before = tally.acknowledged
    url = deployment.url_without(server)
    answered = threading.Semaphore(0)

    def deposit_and_tell() -> None:
        try:
            deposit(url, account_id, tally)
        finally:
            answered.release()

    os.kill(pid, signal.SIGSTOP)
    # Each worker of a server listens on its own SO_REUSEPORT socket, and the kernel deals
    # new connections to the frozen worker's socket too (they wait for it to run). So the
    # deposits go out together, and the pause lasts until DEPOSITS_DURING_PAUSE of them were
    # answered by the rest of the deployment; the others are answered after SIGCONT.
    # Replicas of their own (PostgreSQL): the other one gets every deposit, one per answer.
    sent = DEPOSITS_DURING_PAUSE * (PAUSED_SHARE if len(deployment.servers) == 1 else 1)
    with ThreadPoolExecutor(max_workers=sent) as pool:
        try:
            for _ in range(sent):
                pool.submit(deposit_and_tell)
            for _ in range(DEPOSITS_DURING_PAUSE):
                if not answered.acquire(timeout=REQUEST_TIMEOUT_SECONDS):
                    raise AssertionError("the rest of the deployment answered no deposit")
            return 1 if tally.acknowledged > acknowledged_before else 0
        finally:
            os.kill(pid, signal.SIGCONT)


def wait_for_a_holder(deployment: Deployment, key: str) -> tuple[int, ServerProcess]:
    """The worker (pid, server) holding the lock once it has held it HELD_BEFORE_PAUSE_SECONDS."""
    deadline = time.monotonic() + HOLDER_DEADLINE_SECONDS
    seen, seen_at = None, 0.0
    while time.monotonic() < deadline:
        value = deployment.redis.get(key)
        if value != seen:
            seen, seen_at = value, time.monotonic()
        elif value is not None and time.monotonic() - seen_at >= HELD_BEFORE_PAUSE_SECONDS:
            pid = int(value.split()[1])
            server = deployment.master_of(pid)
            if server is not None:
                return pid, server
        time.sleep(POLL_SECONDS)  # polling interval, not synchronisation
    raise AssertionError(f"no worker of this deployment held {key} for long")


def counter_total(deployment: Deployment, name: str, lock_mode: str) -> float:
    """A counter summed over every server's /metrics."""
    total = 0.0
    for server in deployment.servers:
        text = requests.get(f"{server.url}/metrics", timeout=REQUEST_TIMEOUT_SECONDS).text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and sample.labels.get("lock_mode") == lock_mode:
                    total += sample.value
    return total


# --------------------------------------------------------------------------- the test


def test_redis_lock_loses_deposits_past_its_lease_and_fenced_loses_none(
    deployment: Deployment,
) -> None:
    """Same pressures, same Redis: redis-lock's losses are real and audited; fenced's are 0."""
    print(
        f"\nlease {LEASE_MS} ms; burst: race window {LONG_WINDOW_MS} ms, {BURST_DEPOSITS} "
        f"deposits from {BURST_CLIENTS} clients; pause: race window {SHORT_WINDOW_MS} ms, "
        f"{PAUSE_CLIENTS} clients, {PAUSES} x SIGSTOP of the lock holder while "
        f"{DEPOSITS_DURING_PAUSE} more deposits went to the rest of the deployment"
    )
    redis_burst = burst(deployment, "redis-lock")  # the servers start in it
    switch_mode(deployment, "redis-lock", SHORT_WINDOW_MS)
    redis_pause = pauses(deployment, "redis-lock")
    switch_mode(deployment, "fenced", SHORT_WINDOW_MS)
    fenced_pause = pauses(deployment, "fenced")
    switch_mode(deployment, "fenced", LONG_WINDOW_MS)
    fenced_burst = burst(deployment, "fenced")

    for lossy in (redis_burst, redis_pause):
        assert lossy.lost > 0, lossy.line()
        # the server itself sees it: every acknowledged deposit is journaled, the balance is not
        assert lossy.drift == -lossy.lost and not lossy.consistent, lossy.line()
        assert set(lossy.refused) <= HONEST_REFUSALS, lossy.line()
    for fenced in (fenced_pause, fenced_burst):
        assert fenced.lost == 0, fenced.line()
        assert fenced.drift == 0 and fenced.consistent, fenced.line()
        assert set(fenced.refused) <= HONEST_REFUSALS | {"stale_lock"}, fenced.line()
        assert fenced.refused["stale_lock"] > 0, fenced.line()
    assert redis_pause.takeovers > 0 and fenced_pause.takeovers > 0
    assert counter_total(deployment, "bankrace_lock_lease_expiries_total", "redis-lock") > 0
    assert counter_total(deployment, "bankrace_stale_lock_refusals_total", "fenced") == sum(
        measured.refused["stale_lock"] for measured in (fenced_pause, fenced_burst)
    )
