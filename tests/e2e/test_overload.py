"""Far beyond capacity, `bankrace serve` sheds load quickly and honestly, and loses nothing.

The service, as `bankrace serve` starts it by default (2 workers x 4 threads,
SQLite, the default queue bounds), gets deposits from wrk over many more
connections than it can serve at once (capacity is reached near 16; see
docs/overload.md). While it runs, probes poll /healthz and /readyz. Then:

- some requests were shed: 503 `overloaded` with Retry-After, and the
  server's own shed counter agrees with what the clients saw;
- no request the service ran waited in a worker's queue past
  BANK_QUEUE_WAIT_MAX_MS, by the server's own histogram (the client-side
  p50/p99 are printed, and only bounded loosely: CI machines are slow);
- every request got an answer, and every acknowledged deposit is in its
  account's balance and journal, nothing else is (shed requests moved no
  money), and the audits are consistent;
- the probes were answered 200 throughout.

A response of any kind never names the HTTP server's software or version.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from service.config import DEFAULT_LOCK_TIMEOUT_MS, DEFAULT_QUEUE_WAIT_MAX_MS
from tests.support.components import require_executable
from tests.support.overload import OverloadResult, run_overload
from tests.support.servers import ServerProcess

pytestmark = pytest.mark.e2e

ACCOUNTS = 50
LOAD_SECONDS = 4
# Capacity is reached near 16 connections (2 x 4 threads, a few waiting each);
# 256 is 16 times that: the service could serve a tenth of it at best.
CONNECTIONS = 256
PROBE_INTERVAL_SECONDS = 0.1
PROBE_TIMEOUT_SECONDS = 5
# A loose client-side bound on an acknowledged deposit: its queue wait (the
# bound under test), its lock wait (itself bounded) and a slow CI machine.
ANSWERED_LATENCY_BOUND_MS = DEFAULT_QUEUE_WAIT_MAX_MS + DEFAULT_LOCK_TIMEOUT_MS + 2000


@dataclass
class Probes:
    """/healthz and /readyz polled from a thread of their own during the load."""

    url: str
    answers: list[tuple[str, int | None, float]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        session = requests.Session()
        while not self.stop.is_set():
            for path in ("/healthz", "/readyz"):
                started = time.monotonic()
                try:
                    status: int | None = session.get(
                        f"{self.url}{path}", timeout=PROBE_TIMEOUT_SECONDS
                    ).status_code
                except requests.RequestException:
                    status = None
                self.answers.append((path, status, time.monotonic() - started))
            self.stop.wait(PROBE_INTERVAL_SECONDS)  # the polling interval


def metric_samples(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = requests.get(f"{url}/metrics", timeout=10).text
    return {
        (found.name, frozenset(found.labels.items())): float(found.value)
        for family in text_string_to_metric_families(text)
        for found in family.samples
    }


def metric(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    workdir = tmp_path_factory.mktemp("overload")
    settings = {"BANK_DATABASE_URL": f"sqlite:///{workdir / 'bank.db'}"}  # all else default
    with ServerProcess(workdir=workdir, settings=settings) as started:
        yield started


def open_accounts(url: str) -> list[int]:
    with requests.Session() as session:
        return [
            session.post(f"{url}/accounts", json={"owner": f"load {n}"}, timeout=10).json()["id"]
            for n in range(ACCOUNTS)
        ]


def print_figures(result: OverloadResult, probes: Probes, served_over_bound: float) -> None:
    probe_slowest = max((seconds for _, _, seconds in probes.answers), default=0.0)
    print(
        f"\noverload, 2 x 4 threads, SQLite, {CONNECTIONS} connections, {LOAD_SECONDS} s: "
        f"{result.summary()}\n"
        f"server: requests run after waiting past {DEFAULT_QUEUE_WAIT_MAX_MS} ms in a queue: "
        f"{served_over_bound:.0f}; probes {len(probes.answers)}, slowest "
        f"{probe_slowest * 1000:.0f} ms"
    )


def test_overload_is_shed_fast_and_nothing_acknowledged_is_lost(
    server: ServerProcess, tmp_path: Path
) -> None:
    """16x the connections the service can serve: 503 overloaded, bounded waits, books exact."""
    require_executable("wrk", "apt-get install wrk")
    account_ids = open_accounts(server.url)
    before = metric_samples(server.url)
    probes = Probes(server.url)
    prober = threading.Thread(target=probes.run, daemon=True)
    prober.start()
    try:
        result = run_overload(
            server.url,
            account_ids,
            duration_s=LOAD_SECONDS,
            connections=CONNECTIONS,
            workdir=tmp_path,
        )
    finally:
        probes.stop.set()
        prober.join(timeout=PROBE_TIMEOUT_SECONDS * 3)
    after = metric_samples(server.url)

    def increase(name: str, **labels: str) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    served = increase("bankrace_queue_wait_seconds_count")
    served_in_bound = increase(
        "bankrace_queue_wait_seconds_bucket", le=str(DEFAULT_QUEUE_WAIT_MAX_MS / 1000)
    )
    print_figures(result, probes, served - served_in_bound)

    # Every request was answered, so every deposit's fate is known.
    assert result.drained and result.unanswered == 0, result.summary()
    assert result.socket_errors == {"connect": 0, "read": 0, "write": 0, "timeout": 0}
    assert result.untimed == 0  # every answer echoed the X-Request-ID it was sent
    assert result.bannered == 0  # no answer, served or shed, had a `Server` header
    # Load was shed, honestly: every 503 is `overloaded` with Retry-After, and nothing else failed.
    assert result.shed > 0 and result.acknowledged > 0, result.summary()
    assert set(result.statuses) <= {201, 503}, result.statuses
    assert result.statuses.get(503, 0) == result.shed
    server_shed = increase("bankrace_shed_requests_total", reason="queue_full") + increase(
        "bankrace_shed_requests_total", reason="queue_wait"
    )
    assert server_shed == result.shed
    # The mechanism: no request the service ran had waited for a thread past the bound.
    assert served >= result.acknowledged
    assert served_in_bound == served
    ok_slowest = result.percentile_ms("ok", 1.0)
    assert ok_slowest is not None and ok_slowest <= ANSWERED_LATENCY_BOUND_MS
    # Probes stayed answerable.
    assert probes.answers and all(status == 200 for _, status, _ in probes.answers)

    # Nothing acknowledged is lost; nothing shed moved money.
    with requests.Session() as session:
        for account in account_ids:
            audit = session.get(f"{server.url}/accounts/{account}/audit", timeout=10).json()
            assert audit["consistent"], audit
            assert audit["balance"] == audit["journal_balance"] == result.credits.get(account, 0)
        bank = session.get(f"{server.url}/audit", timeout=30).json()
    assert bank["consistent"], bank
    assert sum(result.credits.values()) == result.acknowledged


def raw_answer(port: int, request: bytes) -> bytes:
    """Everything the server sends back to `request` until it closes (or 10 s pass)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(request)
        received = b""
        while chunk := connection.recv(65536):
            received += chunk
            if b"\r\n\r\n" in received and b"Connection: keep-alive" in received:
                break  # a kept-alive answer: its head is all this test reads
    return received


def test_no_response_names_the_server_software(server: ServerProcess) -> None:
    """No `Server` header (nor gunicorn's name) on answers of the app, of gunicorn, and refusals."""
    answers = {
        "200": raw_answer(server.port, b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n"),
        "404": raw_answer(
            server.port, b"GET /nowhere HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
        ),
        "400 (gunicorn)": raw_answer(
            server.port, b"GET / HTTP/1.1\r\nHost: t\r\nBad Header\r\n\r\n"
        ),
        "431 (gunicorn)": raw_answer(
            server.port, b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: " + b"x" * 9000 + b"\r\n\r\n"
        ),
    }
    for label, answer in answers.items():
        head = answer.split(b"\r\n\r\n")[0].lower()
        print(f"{label}: {head.splitlines()[0].decode()}")
        assert head.startswith(b"http/1.1 " + label[:3].encode()), (label, head)
        assert b"\r\nserver:" not in head, (label, head)
        assert b"gunicorn" not in answer.lower(), (label, answer[:300])
