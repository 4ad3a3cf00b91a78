"""The echo app, the benchmark's ceiling, spreads kept-alive connections over its workers too.

Every envelope figure is a ratio to the echo of the same run (loadtest/bench_envelope.py). On
one listening socket shared by its workers, a burst of wrk's 32 kept-alive connections could
all go to one echo worker, and an echo on half its cores flattered every ratio to it (seen in
4 of 6 rounds on a loaded machine). It runs like `bankrace serve`: each worker its own
SO_REUSEPORT socket. The same check as tests/e2e/test_worker_balance.py's for the service.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from loadtest.bench_runs import EchoProcess, gunicorn_settings
from tests.e2e.test_worker_balance import (
    CONNECTIONS,
    FEWEST_PER_WORKER,
    TRIES,
    connections_per_worker,
    worker_pids,
)

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def echo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EchoProcess]:
    workdir = tmp_path_factory.mktemp("echo-balance")
    with EchoProcess(gunicorn_settings(2, 4), workdir, workdir / "echo.log") as started:
        yield started


def test_the_echo_spreads_kept_alive_connections_over_its_workers(echo: EchoProcess) -> None:
    """Ten bursts of 32 keep-alive connections: each echo worker holds at least 4 of each."""
    pids = worker_pids(echo)  # type: ignore[arg-type]
    assert len(pids) == 2, pids
    splits = [connections_per_worker(echo, pids) for _ in range(TRIES)]  # type: ignore[arg-type]
    print(f"\n{CONNECTIONS} kept-alive connections per echo worker, {TRIES} bursts: {splits}")
    assert all(sum(split) == CONNECTIONS for split in splits), splits
    assert all(min(split) >= FEWEST_PER_WORKER for split in splits), splits
