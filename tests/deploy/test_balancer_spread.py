"""Through nginx, every worker of every replica works: kept connections are placed anew.

nginx keeps idle connections to each replica and reuses the most recently used one first;
the kernel gives each new connection to one worker of the replica (that worker's own
SO_REUSEPORT socket, at random). With kept connections living for 1,000 requests, a burst
ran on the few connections nginx had opened first, and these could all sit on one worker:
on two real replicas behind this nginx, one worker did 2 % of its replica's work in a burst
(4 % in another run; 2 % in CI's compose run), and about one burst in four left a worker
less than a quarter. The template now closes a kept connection after 16 requests
(`keepalive_requests`), so a burst's work is spread over many connections, each placed on a
worker afresh.

Against two real `bankrace serve` replicas (2 workers x 4 threads each, the defaults, each
on a SQLite file of its own) behind the project's nginx: ten bursts of 32 clients, each
sending 50 GET /healthz on a kept-alive connection of its own, each worker's CPU seconds read
from /proc. In every burst, each worker must do at least a quarter of its replica's work and
each replica at least a quarter of the whole.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from loadtest.bench_envelope import WorkerClock
from tests.deploy.balancer import Balancer, require_nginx
from tests.support.load import keep_alive_burst
from tests.support.servers import ServerProcess

pytestmark = pytest.mark.e2e

REPLICA_COUNT = 2
BURSTS = 10
BURST_CONNECTIONS = 32
BURST_REQUESTS_EACH = 50
LEAST_WORKER_SHARE = 1 / 4
LEAST_REPLICA_SHARE = 1 / 4


@dataclass
class Deployment:
    balancer: Balancer
    replicas: list[ServerProcess]


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    require_nginx()
    replicas: list[ServerProcess] = []
    try:
        for index in range(REPLICA_COUNT):
            # Listed before it starts: one that fails to become healthy is stopped too.
            replicas.append(ServerProcess(workdir=tmp_path_factory.mktemp(f"replica-{index}")))
            replicas[-1].start()  # its own SQLite file, in its own directory
        upstreams = [f"127.0.0.1:{replica.port}" for replica in replicas]
        balancer_directory = tmp_path_factory.mktemp("balancer")
        with Balancer(workdir=balancer_directory, upstream_servers=upstreams) as balancer:
            yield Deployment(balancer, replicas)
    finally:
        for replica in replicas:
            replica.stop()


def shares(spent: list[float]) -> list[float]:
    total = max(sum(spent), 1e-9)
    return [seconds / total for seconds in spent]


def test_kept_alive_bursts_through_nginx_keep_every_worker_busy(deployment: Deployment) -> None:
    """Ten bursts through nginx: every worker a quarter of its replica, every replica a
    quarter of the whole."""
    clocks = [WorkerClock(replica.process.pid) for replica in deployment.replicas]  # type: ignore[union-attr]
    bursts: list[list[list[float]]] = []
    for _ in range(BURSTS):
        for clock in clocks:
            clock.start()
        statuses = keep_alive_burst(
            f"{deployment.balancer.url}/healthz", BURST_CONNECTIONS, BURST_REQUESTS_EACH
        )
        assert statuses == {200: BURST_CONNECTIONS * BURST_REQUESTS_EACH}, statuses
        bursts.append([clock.stop() for clock in clocks])
    print(f"\nworker CPU seconds per replica, {BURSTS} bursts through nginx: {bursts}")
    for spent_per_replica in bursts:
        assert all(len(spent) == 2 for spent in spent_per_replica), bursts
        assert min(shares([sum(spent) for spent in spent_per_replica])) >= LEAST_REPLICA_SHARE, (
            bursts
        )
        for spent in spent_per_replica:
            assert min(shares(spent)) >= LEAST_WORKER_SHARE, bursts
