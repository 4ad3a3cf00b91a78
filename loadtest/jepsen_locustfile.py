"""The Jepsen-style bank test as a Locust scenario: transfer users and snapshot readers.

    locust -f loadtest/jepsen_locustfile.py --headless -u 12 -r 12 -t 30s \\
        --host http://127.0.0.1:8000

Each process with users opens its own accounts (--jepsen-accounts, each with
--jepsen-opening-balance) when the test starts. `BankTransferUser`s move
random amounts between them (Idempotency-Key, bounded retries, as
loadtest/jepsen_bank.py); `SnapshotReadUser`s read every balance in one
GET /balances and check the total and that none is negative (a wrong read is
also a Locust failure named "snapshot check", so it shows in the stats and
the web UI). When the test stops, a final read reconciles the run; the
history is saved (--jepsen-history) and judged by loadtest/jepsen_checker.py,
whose report is printed; the exit code is 1 when it is invalid. Faults are
not injected here: run `python -m loadtest.jepsen_bank` for the nemesis, or
kill and pause workers by hand while Locust runs.

A service with BANK_API_TOKENS takes the client token of BANK_CLIENT_TOKEN (or
--bank-token); a run that cannot open its accounts (a 401 included) stops at
once with one line and exit code 1.

Black-box: HTTP only, never an import of the service.
"""

from __future__ import annotations

import itertools
import random
import sys
import time
from pathlib import Path
from typing import Any

import gevent
import requests
from gevent.event import Event
from locust import HttpUser, constant, events, task
from locust.env import Environment
from locust.runners import MasterRunner

# Locust imports this file as a top-level module: make `loadtest` importable.
REPOSITORY_ROOT = str(Path(__file__).resolve().parent.parent)
if REPOSITORY_ROOT not in sys.path:
    sys.path.insert(0, REPOSITORY_ROOT)

from loadtest.bank_http import BankClient, BankError  # noqa: E402
from loadtest.client_token import add_locust_option, admin_token, bearer, locust_token  # noqa: E402
from loadtest.jepsen_bank import (  # noqa: E402
    WorkloadOptions,
    balances_url,
    random_transfer,
    read_balances,
    transfer,
)
from loadtest.jepsen_checker import Report, check, read_balances_of, render  # noqa: E402
from loadtest.jepsen_history import History  # noqa: E402

SETUP_WAIT_SECONDS = 0.2
FINAL_READ_DEADLINE_SECONDS = 30.0
FINAL_READ_INTERVAL_SECONDS = 0.2


class JepsenRun:
    """This process's bank: its accounts, its history, its verdict."""

    def __init__(self) -> None:
        self.history: History | None = None
        self.options = WorkloadOptions()
        self.ready = Event()
        self.report: Report | None = None
        self.setup_error: str | None = None
        self.processes = itertools.count()

    def begin(self, environment: Environment) -> None:
        options = parsed_options(environment)
        self.options = WorkloadOptions(
            accounts=int(options.jepsen_accounts),
            opening_balance=int(options.jepsen_opening_balance),
            max_amount=int(options.jepsen_max_amount),
        )
        token = locust_token(options)
        client = BankClient(str(environment.host or ""), token=token, admin_token=admin_token())
        try:
            mode = client.mode()
            opening = {
                client.open_account(f"jepsen locust #{number}", self.options.opening_balance): (
                    self.options.opening_balance
                )
                for number in range(1, self.options.accounts + 1)
            }
        finally:
            client.close()
        self.history = History(
            opening,
            metadata={
                "service": str(environment.host),
                "mode": {key: mode.get(key) for key in ("lock_mode", "race_window_ms")},
                "driver": "locust",
            },
        )
        self.report = None
        self.ready.set()

    def wait(self) -> History | None:
        self.ready.wait(timeout=SETUP_WAIT_SECONDS)
        return self.history


RUN = JepsenRun()


def parsed_options(environment: Environment) -> Any:
    """The command line (Locust parses it before any test starts)."""
    if environment.parsed_options is None:
        raise RuntimeError("the jepsen locustfile needs Locust's parsed command line")
    return environment.parsed_options


def authorization(environment: Environment) -> dict[str, str]:
    """The client token's header for every request of this run (none without a token)."""
    return bearer(locust_token(parsed_options(environment)))


@events.init_command_line_parser.add_listener
def add_arguments(parser: Any) -> None:
    parser.add_argument("--jepsen-accounts", type=int, default=WorkloadOptions.accounts)
    parser.add_argument(
        "--jepsen-opening-balance", type=int, default=WorkloadOptions.opening_balance
    )
    parser.add_argument("--jepsen-max-amount", type=int, default=WorkloadOptions.max_amount)
    parser.add_argument(
        "--jepsen-history",
        default="var/jepsen/locust-history.json",
        include_in_web_ui=False,
        help="where this process saves its history (JSON)",
    )
    add_locust_option(parser)  # --bank-token


class BankTransferUser(HttpUser):
    """Random transfers between this process's accounts, each with its own key."""

    weight = 2
    wait_time = constant(0)

    def on_start(self) -> None:
        self.process = next(RUN.processes)
        self.rng = random.Random()  # nosec B311  # picks transfers and accounts, not a secret
        self.client.headers.update(authorization(self.environment))

    @task
    def transfer(self) -> None:
        history = RUN.wait()
        if history is None:
            return
        value = random_transfer(self.rng, history.account_ids, RUN.options.max_amount)
        history.append(self.process, "invoke", "transfer", value)
        kind, error, transfer_id = transfer(
            self.client, str(self.host), value, RUN.options, self.rng
        )
        history.append(self.process, kind, "transfer", value, error=error, transfer_id=transfer_id)


class SnapshotReadUser(HttpUser):
    """Reads every balance in one snapshot and checks the total at every read."""

    weight = 1
    wait_time = constant(0)

    def on_start(self) -> None:
        self.process = next(RUN.processes)
        self.client.headers.update(authorization(self.environment))

    @task
    def read(self) -> None:
        history = RUN.wait()
        if history is None:
            return
        history.append(self.process, "invoke", "read", None)
        url = balances_url(str(self.host), history.account_ids)
        kind, balances, error = read_balances(self.client, url, RUN.options.request_timeout_seconds)
        operation = history.append(self.process, kind, "read", balances, error=error)
        if kind == "ok":
            self.judge(history, operation)

    def judge(self, history: History, operation: dict[str, Any]) -> None:
        read = read_balances_of(operation)
        # One message per kind of failure, so Locust's error table groups them.
        for broken, message in (
            (sum(read.values()) != history.total, "a snapshot's total is not the opening total"),
            (min(read.values(), default=0) < 0, "a snapshot holds a negative balance"),
        ):
            if broken:
                events.request.fire(
                    request_type="CHECK",
                    name="snapshot check",
                    response_time=0,
                    response_length=0,
                    exception=AssertionError(message),
                )


@events.test_start.add_listener
def on_test_start(environment: Environment, **_kwargs: Any) -> None:
    if isinstance(environment.runner, MasterRunner):
        return  # the master has no users: each process with users keeps its own bank
    RUN.ready.clear()
    RUN.history = None
    RUN.setup_error = None
    try:
        RUN.begin(environment)
    except (requests.RequestException, BankError, KeyError, ValueError) as error:
        RUN.setup_error = f"could not open the accounts at {environment.host}: {error}"
        print(f"jepsen locustfile: {RUN.setup_error}", file=sys.stderr, flush=True)
        RUN.ready.set()
        stop_soon(environment)


def stop_soon(environment: Environment) -> None:
    """End a run that cannot work (no load of refusals), once test_start has returned."""
    runner = environment.runner
    if runner is not None:
        headless = bool(getattr(environment.parsed_options, "headless", False))
        gevent.spawn_later(0, runner.quit if headless else runner.stop)


@events.test_stop.add_listener
def on_test_stop(environment: Environment, **_kwargs: Any) -> None:
    history = RUN.history
    if history is None or isinstance(environment.runner, MasterRunner):
        return
    process = next(RUN.processes)
    url = balances_url(str(environment.host), history.account_ids)
    deadline = time.monotonic() + FINAL_READ_DEADLINE_SECONDS
    with requests.Session() as session:
        session.headers.update(authorization(environment))
        while True:
            history.append(process, "invoke", "read", None, final=True)
            kind, balances, error = read_balances(session, url, RUN.options.request_timeout_seconds)
            history.append(process, kind, "read", balances, error=error, final=True)
            if kind == "ok" or time.monotonic() > deadline:
                break
            time.sleep(FINAL_READ_INTERVAL_SECONDS)  # polling interval under a deadline
    path = Path(parsed_options(environment).jepsen_history)
    history.save(path)
    RUN.report = check(history.to_dict())
    print(f"{render(RUN.report)}\nhistory: {path}", flush=True)


@events.quitting.add_listener
def on_quitting(environment: Environment, **_kwargs: Any) -> None:
    if RUN.setup_error is not None:
        environment.process_exit_code = 1  # a run that could not start proves nothing
    elif RUN.report is not None:
        environment.process_exit_code = 0 if RUN.report.valid else 1
