"""Locustfile of the benchmark's Locust fallback (`run_locust` of loadtest/bench_load.py runs it).

The same requests as loadtest/bench.lua (deposits, withdrawals or transfers
of one amount spread over the run's accounts, or POST /echo), the same
counts (answers by status, the accounts each 201 moved, answers served by
another mode), the answers within the duration for req/s, and Locust's own
percentiles, written as JSON to --bench-result when the test stops. The drain
works as in loadtest/locustfile.py: each request runs in a greenlet of its
own, so stopping a user never cuts one off, and the stop waits (bounded)
until none is in flight.

Black-box: this file talks HTTP to the service and never imports it.
"""

from __future__ import annotations

import json
import random
import re
import time
from collections import Counter
from pathlib import Path
from typing import Any

import gevent
from locust import FastHttpUser, constant, events, task
from locust.env import Environment

DRAIN_LIMIT_SECONDS = 10  # loadtest/bench_load.py's: beyond the service's lock-wait bound
REQUEST_TIMEOUT_SECONDS = 30.0
POLL_INTERVAL_SECONDS = 0.02


def bench_options(environment: Environment) -> Any:
    if environment.parsed_options is None:
        raise RuntimeError("run this locustfile with the locust command (bench_load.py does)")
    return environment.parsed_options


class Counts:
    def __init__(self) -> None:
        self.deadline = float("inf")
        self.finishing = False
        self.in_flight = 0
        self.sent = self.answered = self.answered_in_window = 0
        self.retry_after_503 = self.mode_mismatches = self.unparsed = self.socket_errors = 0
        self.statuses: Counter[int] = Counter()
        self.served_modes: Counter[str] = Counter()
        self.credits: Counter[int] = Counter()
        self.debits: Counter[int] = Counter()

    def record(self, options: Any, status: int, headers: Any, body: str) -> None:
        self.answered += 1
        if time.monotonic() < self.deadline:
            self.answered_in_window += 1
        self.statuses[status] += 1
        if status == 503 and headers.get("Retry-After"):
            self.retry_after_503 += 1
        served = headers.get("X-Lock-Mode") or "none"
        self.served_modes[served] += 1
        if options.bench_mode and served != options.bench_mode:
            self.mode_mismatches += 1
        if status == 201:
            self.count_movement(options.bench_operation, body)

    def count_movement(self, operation: str, body: str) -> None:
        if operation == "echo":
            return
        if operation == "transfer":
            source = re.search(r'"from_account"\s*:\s*(\d+)', body)
            target = re.search(r'"to_account"\s*:\s*(\d+)', body)
            if source and target:
                self.debits[int(source.group(1))] += 1
                self.credits[int(target.group(1))] += 1
                return
        else:
            account = re.search(r'"account_id"\s*:\s*(\d+)', body)
            if account:
                moved = self.credits if operation == "deposit" else self.debits
                moved[int(account.group(1))] += 1
                return
        self.unparsed += 1


COUNTS = Counts()


@events.init_command_line_parser.add_listener
def add_arguments(parser: Any) -> None:
    parser.add_argument("--bench-operation", default="echo")
    parser.add_argument("--bench-amount", type=int, default=1)
    parser.add_argument("--bench-ids-file", default="")
    parser.add_argument("--bench-mode", default="")
    parser.add_argument("--bench-duration", type=float, default=1.0)
    parser.add_argument("--bench-result", default="")


class BenchUser(FastHttpUser):
    wait_time = constant(0)
    network_timeout = REQUEST_TIMEOUT_SECONDS
    max_retries = 0  # a retried POST could move money twice

    def on_start(self) -> None:
        options = bench_options(self.environment)
        self.operation = options.bench_operation
        self.amount = options.bench_amount
        path = options.bench_ids_file
        self.accounts = [int(line) for line in Path(path).read_text().split()] if path else []
        self.rng = random.Random()  # nosec B311  # picks the load's accounts, not a secret

    def next_request(self) -> tuple[str, dict[str, int]]:
        if self.operation == "echo":
            return "/echo", {"amount": self.amount}
        if self.operation == "transfer":
            source, target = self.rng.sample(self.accounts, 2)
            body = {"from_account": source, "to_account": target, "amount": self.amount}
            return "/transfers", body
        account = self.rng.choice(self.accounts)
        return f"/accounts/{account}/{self.operation}", {"amount": self.amount}

    @task
    def operate(self) -> None:
        if COUNTS.finishing or time.monotonic() >= COUNTS.deadline:
            gevent.sleep(POLL_INTERVAL_SECONDS * 5)
            return
        path, body = self.next_request()
        COUNTS.sent += 1
        COUNTS.in_flight += 1
        # Its own greenlet: Locust stopping this user never cuts the request off.
        gevent.spawn(self.exchange, path, body).join()

    def exchange(self, path: str, body: dict[str, int]) -> None:
        options = bench_options(self.environment)
        try:
            with self.client.post(
                path, json=body, name=self.operation, catch_response=True
            ) as response:
                if not response.status_code:
                    COUNTS.socket_errors += 1  # no answer: its outcome is unknown
                    response.failure("no answer")
                    return
                COUNTS.record(options, response.status_code, response.headers, response.text)
                response.success()
        finally:
            COUNTS.in_flight -= 1


@events.test_start.add_listener
def on_test_start(environment: Environment, **_kwargs: Any) -> None:
    COUNTS.deadline = time.monotonic() + bench_options(environment).bench_duration


@events.test_stopping.add_listener
def on_test_stopping(environment: Environment, **_kwargs: Any) -> None:
    COUNTS.finishing = True
    deadline = time.monotonic() + DRAIN_LIMIT_SECONDS
    while COUNTS.in_flight and time.monotonic() < deadline:
        gevent.sleep(POLL_INTERVAL_SECONDS)


@events.test_stop.add_listener
def on_test_stop(environment: Environment, **_kwargs: Any) -> None:
    total = environment.stats.total
    result = {
        "sent": COUNTS.sent,
        "answered": COUNTS.answered,
        "answered_in_window": COUNTS.answered_in_window,
        "in_flight": COUNTS.in_flight,
        "statuses": {str(key): value for key, value in COUNTS.statuses.items()},
        "retry_after_503": COUNTS.retry_after_503,
        "socket_errors": COUNTS.socket_errors,
        "credits": {str(key): value for key, value in COUNTS.credits.items()},
        "debits": {str(key): value for key, value in COUNTS.debits.items()},
        "served_modes": dict(COUNTS.served_modes),
        "mode_mismatches": COUNTS.mode_mismatches,
        "unparsed": COUNTS.unparsed,
        "p50_ms": total.get_response_time_percentile(0.5) if total.num_requests else None,
        "p99_ms": total.get_response_time_percentile(0.99) if total.num_requests else None,
        "max_ms": total.max_response_time if total.num_requests else None,
    }
    Path(bench_options(environment).bench_result).write_text(json.dumps(result))
