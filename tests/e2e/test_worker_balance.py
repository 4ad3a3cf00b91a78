"""Kept-alive connections are spread over the workers, not taken by the first one awake.

On one listening socket shared by every worker, a burst of connections went
to whichever worker woke first: at the default 2 workers x 4 threads, 32
keep-alive connections (wrk's way) all went to one worker in 4 of 10 runs
while the other sat idle, and the service ran on half its cores. Now each
worker listens on its own SO_REUSEPORT socket and the kernel spreads new
connections between them (service/cli.py, docs/performance.md).

Against a real `bankrace serve` (2 x 4, the defaults): ten times, 32
connections open at once, each sends a request and keeps its connection;
which worker holds each one is read from /proc (the worker's socket
descriptors against the established TCP connections of the port). Each
worker must hold at least an eighth of them every time: a fair coin puts
fewer than 4 of 32 on one side about once in 400,000 tries; the shared
socket did it in a third of the tries.

With the master no longer binding the address, `bankrace serve` checks it
before starting: a port in use stops it with one line, not with workers
failing to bind one after another.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.servers import STARTUP_DEADLINE_SECONDS, ServerProcess, clean_environment

pytestmark = pytest.mark.e2e

TRIES = 10
CONNECTIONS = 32
FEWEST_PER_WORKER = CONNECTIONS // 8
TCP_ESTABLISHED = "01"
ANSWER_DEADLINE_SECONDS = 10


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with ServerProcess(workdir=tmp_path_factory.mktemp("balance")) as started:  # 2 x 4
        yield started


def worker_pids(server: ServerProcess) -> list[int]:
    assert server.process is not None
    children = subprocess.run(
        ["pgrep", "-P", str(server.process.pid)], capture_output=True, text=True, check=False
    )
    return sorted(int(pid) for pid in children.stdout.split())


def socket_inodes(pid: int) -> set[str]:
    """The inodes of the sockets process `pid` holds open."""
    inodes = set()
    for descriptor in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(descriptor)
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            inodes.add(target.removeprefix("socket:[").removesuffix("]"))
    return inodes


def established_inodes(port: int) -> set[str]:
    """The inodes of the server's side of the established IPv4 connections to `port`."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port = int(fields[1].rpartition(":")[2], 16)
        if local_port == port and fields[3] == TCP_ESTABLISHED:
            inodes.add(fields[9])
    return inodes


def answered(connection: socket.socket) -> bool:
    """Read one response head (the body of /healthz is short: it comes with it)."""
    received = b""
    deadline = time.monotonic() + ANSWER_DEADLINE_SECONDS
    while b"\r\n\r\n" not in received and time.monotonic() < deadline:
        connection.settimeout(max(deadline - time.monotonic(), 0.001))
        chunk = connection.recv(4096)
        if not chunk:
            return False
        received += chunk
    return received.startswith(b"HTTP/1.1 200 ") and b"connection: close" not in received.lower()


def connections_per_worker(server: ServerProcess, pids: list[int]) -> list[int]:
    """Open CONNECTIONS at once, one request on each, and count who holds them."""
    earlier = established_inodes(server.port)  # say, a readiness probe's client not yet collected
    connections = [
        socket.create_connection(("127.0.0.1", server.port), timeout=ANSWER_DEADLINE_SECONDS)
        for _ in range(CONNECTIONS)
    ]
    try:
        for connection in connections:
            connection.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert all(answered(connection) for connection in connections)
        server_side = established_inodes(server.port) - earlier
        return [len(socket_inodes(pid) & server_side) for pid in pids]
    finally:
        for connection in connections:
            connection.close()


def test_kept_alive_connections_are_spread_over_the_workers(server: ServerProcess) -> None:
    """Ten bursts of 32 keep-alive connections: every worker holds at least 4 of each."""
    pids = worker_pids(server)
    assert len(pids) == 2, pids
    splits = [connections_per_worker(server, pids) for _ in range(TRIES)]
    print(f"\n{CONNECTIONS} kept-alive connections per worker, {TRIES} bursts: {splits}")
    assert all(sum(split) == CONNECTIONS for split in splits), splits
    assert all(min(split) >= FEWEST_PER_WORKER for split in splits), splits


def test_a_port_in_use_stops_serve_with_one_line(tmp_path: Path) -> None:
    """Another listener on the port: `bankrace serve` exits 1 at once, naming the address."""
    with socket.create_server(("127.0.0.1", 0)) as taken:
        bind = f"127.0.0.1:{taken.getsockname()[1]}"
        environment = clean_environment(
            {"BANK_BIND": bind, "BANK_DATABASE_URL": f"sqlite:///{tmp_path / 'bank.db'}"}
        )
        result = subprocess.run(
            [sys.executable, "-m", "service", "serve"],
            cwd=tmp_path,
            env=environment,
            capture_output=True,
            text=True,
            timeout=STARTUP_DEADLINE_SECONDS,
            check=False,
        )
    print(f"port in use: exit {result.returncode}, {result.stderr.strip()!r}")
    assert result.returncode == 1
    assert result.stderr.strip() == f"bankrace: cannot listen on {bind}: Address already in use"
