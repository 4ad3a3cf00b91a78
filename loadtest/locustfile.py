"""Locust load test of bankrace that exposes the race and prints a race report.

    locust -f loadtest/locustfile.py --headless -u 50 -r 50 -t 30s --host http://127.0.0.1:8000

works with no other flag (and with the web UI, `--processes N`, `--master`/`--worker`).
Options: --bank-scenario deposits|withdrawals|transfers|mixed|deadlock|holds, --bank-accounts,
--bank-opening-balance, --bank-amount, --bank-report-json PATH, --bank-token (a service
with BANK_API_TOKENS: better set BANK_CLIENT_TOKEN, which it defaults to; see
loadtest.client_token). A service that answers 401 stops the run before any load.

Who does what, so that a distributed run gives one correct report:
- the master (or the only process) opens the run's accounts on test_start and
  sends them to its workers (`bank_setup`); a worker that joins late asks for them;
- every process with users tallies every answer (`loadtest.tally`);
- every request runs to its answer, even when Locust stops or ramps down its
  user (a request cut off halfway would leave its effect unknown);
- on stop, each worker, asked by the master (`bank_finish`), waits for its
  requests in flight and sends its tally (`bank_tally`); the master waits for
  all of them, bounded, and it alone reconciles (`loadtest.reconcile`) and prints;
- the exit code is 1 when the report found an anomaly, 0 otherwise;
- with the web UI, `loadtest.race_view` shows the race live at /race (the Race
  tab); workers send it their tally twice a second.

The holds scenario (`--bank-scenario holds`) runs one hold plan per task
(`loadtest.scenarios.HoldPlan`): it places the hold, sends the plan's captures
and voids together (so that they race), reads the account (`held`,
`available`), and deposits back what it captured, so that balances stay
near the opening one; `loadtest.hold_tally` counts what was acknowledged.

Black-box: this file talks HTTP to the service and never imports it.
"""

from __future__ import annotations

import json
import logging
import random
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import gevent
import requests
from gevent.event import Event
from locust import FastHttpUser, constant, events, task
from locust.env import Environment
from locust.runners import MasterRunner, WorkerRunner

# Locust imports this file as a top-level module; make the `loadtest` package
# importable from any working directory, whether or not it is installed.
REPOSITORY_ROOT = str(Path(__file__).resolve().parent.parent)
if REPOSITORY_ROOT not in sys.path:
    sys.path.insert(0, REPOSITORY_ROOT)

from loadtest import race_view  # noqa: E402
from loadtest.bank_http import BankClient, BankError  # noqa: E402
from loadtest.client_token import add_locust_option, admin_token, bearer, locust_token  # noqa: E402
from loadtest.hold_tally import server_time  # noqa: E402
from loadtest.race_live import InFlight  # noqa: E402
from loadtest.race_report import render_text  # noqa: E402
from loadtest.reconcile import Reconciliation, RunSetup, reconcile  # noqa: E402
from loadtest.retry_policy import RETRY_ATTEMPTS, retry_delay_seconds, should_retry  # noqa: E402
from loadtest.scenarios import (  # noqa: E402
    DEFAULT_ACCOUNT_COUNT,
    DEFAULT_AMOUNT,
    DEFAULT_OPENING_BALANCE,
    DEFAULT_SCENARIO,
    EXPIRING_HOLD_SECONDS,
    SCENARIOS,
    HoldPlan,
    Operation,
    account_count_for,
    choose_hold_plan,
    choose_operation,
    scenario_amount,
)
from loadtest.tally import Answer, Outcome, Tally, negative_account_ids  # noqa: E402

HOLD_KINDS = ("hold", "capture", "void")

logger = logging.getLogger("bankrace.loadtest")

# Bounds on every wait (DESIGN: put a limit on everything).
CONNECT_TIMEOUT_SECONDS = 10.0
REQUEST_TIMEOUT_SECONDS = 30.0  # above the service's lock wait (5 s) plus queueing
DRAIN_DEADLINE_SECONDS = REQUEST_TIMEOUT_SECONDS + 5.0  # in-flight requests finish by then
TALLY_DEADLINE_SECONDS = DRAIN_DEADLINE_SECONDS + 15.0  # the master waits this long for workers
POLL_INTERVAL_SECONDS = 0.05
IDLE_SECONDS = 0.2  # a user with nothing to do (no accounts yet, or stopping) rests this long
# The holds scenario's late capture leaves this long after the hold's expires_at
# (beyond hold_tally's clock margin, so that an acknowledged one is a sure anomaly).
LATE_CAPTURE_SECONDS = 0.4


class LoadTestProcess:
    """This process's part of the current run; a Locust process runs one test at a time."""

    def __init__(self) -> None:
        self.run_id = ""  # master or local runner: the run being driven
        self.setup: RunSetup | None = None
        self.setup_error: str | None = None
        self.setup_ready = Event()
        self.tally = Tally()
        self.flight = InFlight()  # money of the requests sent and answered, for the Race view
        self.finishing = False
        self.in_flight = 0
        # master only: the workers' tallies for the current run
        self.expected_workers: set[str] = set()
        self.worker_tallies: dict[str, Tally] = {}
        self.tallies_complete = Event()
        self.reported_run_ids: set[str] = set()  # worker only: runs whose tally was sent
        self.report: Reconciliation | None = None
        self.report_text = "No race report yet: start a test, then stop it."

    def begin(self, setup: RunSetup) -> None:
        self.setup = setup
        self.tally = Tally(run_id=setup.run_id)
        self.flight = InFlight()
        self.finishing = False
        self.setup_ready.set()

    def forget(self) -> None:
        self.setup = None
        self.setup_ready.clear()

    def drain(self) -> None:
        """Stop starting operations and wait (bounded) until none is in flight."""
        self.finishing = True
        deadline = time.monotonic() + DRAIN_DEADLINE_SECONDS
        while self.in_flight and time.monotonic() < deadline:
            gevent.sleep(POLL_INTERVAL_SECONDS)
        if self.in_flight:
            logger.error("%d requests still in flight at the deadline", self.in_flight)

    def idle(self) -> None:
        if self.setup_ready.is_set():
            gevent.sleep(IDLE_SECONDS)
        else:
            self.setup_ready.wait(timeout=IDLE_SECONDS)


PROCESS = LoadTestProcess()


@events.init_command_line_parser.add_listener
def add_bank_arguments(parser: Any) -> None:
    parser.add_argument(
        "--bank-scenario",
        choices=SCENARIOS,
        default=DEFAULT_SCENARIO,
        help="what the users do: deposits, withdrawals, transfers, mixed (all three), "
        "deadlock (opposing transfers between two accounts), or holds (place, capture, "
        "void, let expire, and race captures and voids on the same hold)",
    )
    parser.add_argument(
        "--bank-accounts",
        type=int,
        default=DEFAULT_ACCOUNT_COUNT,
        help="how many hot accounts the run opens (deadlock always uses 2)",
    )
    parser.add_argument(
        "--bank-opening-balance",
        type=int,
        default=DEFAULT_OPENING_BALANCE,
        help="opening balance of each account, in minor units",
    )
    parser.add_argument(
        "--bank-amount",
        type=int,
        default=DEFAULT_AMOUNT,
        help="amount of every deposit, withdrawal and transfer, in minor units (holds: "
        "each hold is at least an eighth of the opening balance)",
    )
    parser.add_argument(
        "--bank-report-json",
        default="",
        include_in_web_ui=False,
        help="also write the reconciliation as JSON to this path",
    )
    add_locust_option(parser)  # --bank-token


class BankCustomer(FastHttpUser):
    """A customer hammering the run's few hot accounts with the scenario's operations."""

    wait_time = constant(0)  # no think time: a race needs overlapping requests
    connection_timeout = CONNECT_TIMEOUT_SECONDS
    network_timeout = REQUEST_TIMEOUT_SECONDS
    max_retries = 0  # retries are ours: always with the same Idempotency-Key (exchange)

    def on_start(self) -> None:
        self.rng = random.Random()  # nosec B311  # picks the load's operations, not a secret
        self.authorization = bearer(locust_token(bank_options(self.environment)))

    @task
    def operate(self) -> None:
        setup = PROCESS.setup
        if setup is None or PROCESS.finishing:
            PROCESS.idle()
            return
        if setup.scenario == "holds":
            self.run_hold_plan(choose_hold_plan(setup.account_ids, setup.amount, self.rng))
            return
        self.send(choose_operation(setup.scenario, setup.account_ids, setup.amount, self.rng))

    def send(self, *operations: Operation) -> list[tuple[Outcome, Any]]:
        """Send the operations at once (racing each other); their outcomes and bodies.

        Locust kills a user it ramps down mid-request; each exchange runs in a
        greenlet of its own so that the request still completes and its answer
        is tallied (a request cut off halfway would leave its effect unknown).
        """
        PROCESS.in_flight += len(operations)
        exchanges = [
            gevent.spawn(self.exchange, operation, PROCESS.tally, PROCESS.flight)
            for operation in operations
        ]
        gevent.joinall(exchanges)
        return [exchange.value or (Outcome.NO_ANSWER, None) for exchange in exchanges]

    def run_hold_plan(self, plan: HoldPlan) -> None:
        """Place the plan's hold(s), race its captures and voids, read, deposit back."""
        placed = self.send(*plan.placements)
        captured = 0
        for outcome, body in placed:
            if outcome is not Outcome.ACKNOWLEDGED or not isinstance(body, dict):
                continue
            hold_id = body.get("id")
            if not isinstance(hold_id, int) or not plan.actions(hold_id):
                continue
            if plan.waits_for_expiry and not self.wait_for_expiry(body):
                continue
            if PROCESS.finishing:
                break
            actions = plan.actions(hold_id)
            for action, (action_outcome, _body) in zip(actions, self.send(*actions), strict=True):
                if action.kind == "capture" and action_outcome is Outcome.ACKNOWLEDGED:
                    captured += action.amount
        self.read_account(plan.account_id)
        if captured and not PROCESS.finishing:
            self.send(Operation("deposit", plan.account_id, captured))

    def wait_for_expiry(self, hold: dict[str, Any]) -> bool:
        """Sleep until just past the hold's expires_at (bounded); False if that is unknown."""
        expires_at = server_time(hold.get("expires_at"))
        if expires_at is None:
            return False
        delay = expires_at + LATE_CAPTURE_SECONDS - time.time()
        gevent.sleep(min(max(delay, 0.0), EXPIRING_HOLD_SECONDS + LATE_CAPTURE_SECONDS + 1))
        return True

    def read_account(self, account_id: int) -> None:
        """GET the account: held and available, for the over-hold count."""
        with self.client.get(
            f"/accounts/{account_id}",
            headers=self.authorization,
            name="GET /accounts/{id}",
            catch_response=True,
        ) as response:
            try:
                body = response.json() if response.status_code == 200 else None
            except Exception:  # an undecodable body reads as nothing
                body = None
            if body is None:
                response.failure(f"read: {response.status_code}")
                return
            response.success()
            PROCESS.tally.holds.note_read(account_id, body)

    def exchange(self, operation: Operation, tally: Tally, flight: InFlight) -> tuple[Outcome, Any]:
        """Send one operation with its own Idempotency-Key; retry the same key when told to.

        A timeout, a dropped connection, a 502/504 from a balancer, a 503 with
        Retry-After, a 409 `idempotency_in_progress` or `stale_lock` leaves the
        client unsure or asked to come back: it retries with the same key
        (`loadtest.retry_policy`: bounded, with backoff), which can never move
        the money twice. Only the last answer is tallied; retries and replays
        are counted apart.
        """
        started = time.perf_counter()
        sent_at = time.time()
        recorded = False
        result: tuple[Outcome, Any] = (Outcome.NO_ANSWER, None)
        flight.start(operation)
        headers = {"Idempotency-Key": uuid.uuid4().hex, **self.authorization}
        try:
            for attempt in range(RETRY_ATTEMPTS):
                with self.client.post(
                    operation.path,
                    json=operation.body,
                    headers=headers,
                    name=operation.kind,
                    catch_response=True,
                ) as response:
                    answer, body = read_answer(response, started)
                    if attempt + 1 < RETRY_ATTEMPTS and should_retry(answer):
                        response.success()  # handled: the same request goes again
                        tally.note_retry(operation, answer)
                        gevent.sleep(retry_delay_seconds(attempt, answer.retry_after))
                        continue
                    if (response.headers or {}).get("Idempotent-Replayed") == "true":
                        tally.replays += 1
                    outcome = tally.record(operation, answer)
                    if operation.kind in HOLD_KINDS:
                        tally.holds.note(operation, outcome, body, sent_at)
                    result = (outcome, body)
                    recorded = True
                    if outcome in (Outcome.ACKNOWLEDGED, Outcome.REFUSED):
                        response.success()
                    else:
                        response.failure(f"{outcome}: {response.status_code}")
                    break
        finally:
            if not recorded:  # the exchange itself failed: the effect is unknown
                tally.record(operation, Answer(0, elapsed_ms(started)))
                if operation.kind in HOLD_KINDS:
                    tally.holds.note(operation, Outcome.NO_ANSWER, None, sent_at)
            flight.settle(operation)
            PROCESS.in_flight -= 1
        return result


def elapsed_ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000


def read_answer(response: Any, started: float) -> tuple[Answer, Any]:
    status = int(response.status_code or 0)
    try:
        body = response.json() if status else None
    except Exception:  # any undecodable body; the status still says what happened
        body = None
    headers = response.headers or {}
    answer = Answer(
        status=status,
        latency_ms=elapsed_ms(started),
        code=body.get("code") if status >= 300 and isinstance(body, dict) else None,
        retry_after=headers.get("Retry-After"),
        lock_mode=headers.get("X-Lock-Mode"),
        negative_account_ids=negative_account_ids(body) if 200 <= status < 300 else (),
    )
    return answer, body


# --- set-up: one process opens the accounts --------------------------------------------


def bank_options(environment: Environment) -> Any:
    """The parsed command line (Locust fills it in before any test starts)."""
    options = environment.parsed_options
    if options is None:
        raise RuntimeError("the locustfile needs Locust's parsed command line")
    return options


def open_run(environment: Environment, run_id: str) -> RunSetup:
    options = bank_options(environment)
    scenario = str(options.bank_scenario)
    account_count = account_count_for(scenario, int(options.bank_accounts))
    opening_balance = int(options.bank_opening_balance)
    amount = scenario_amount(scenario, int(options.bank_amount), opening_balance)
    client = bank_client(environment, str(environment.host or ""), REQUEST_TIMEOUT_SECONDS)
    try:
        mode = client.mode()
        opening_balances = {
            client.open_account(f"loadtest {run_id} #{number}", opening_balance): opening_balance
            for number in range(1, account_count + 1)
        }
    finally:
        client.close()
    logger.info(
        "run %s: %s on accounts %s (lock mode %s, race window %s ms)",
        run_id,
        scenario,
        sorted(opening_balances),
        mode.get("lock_mode"),
        mode.get("race_window_ms"),
    )
    return RunSetup(
        run_id=run_id,
        scenario=scenario,
        amount=amount,
        opening_balances=opening_balances,
        host=str(environment.host),
        mode=mode,
    )


def bank_client(environment: Environment, host: str, timeout_seconds: float) -> BankClient:
    """The set-up's and the reconciliation's client, with the run's tokens."""
    token = locust_token(bank_options(environment))
    return BankClient(host, timeout_seconds, token=token, admin_token=admin_token())


def is_worker(environment: Environment) -> bool:
    # A worker that joins a running test can get its first spawn (and so its
    # test_start) before Locust has stored the runner: the option tells earlier.
    options = environment.parsed_options
    return isinstance(environment.runner, WorkerRunner) or bool(getattr(options, "worker", False))


@events.test_start.add_listener
def on_test_start(environment: Environment, **_kwargs: Any) -> None:
    runner = environment.runner
    if is_worker(environment):
        if PROCESS.setup is None and runner is not None:  # joined after the announcement
            runner.send_message("bank_setup_request", {})
        return
    PROCESS.run_id = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"
    PROCESS.report = None
    PROCESS.setup_error = None
    PROCESS.worker_tallies = {}
    PROCESS.forget()
    try:
        PROCESS.begin(open_run(environment, PROCESS.run_id))
    except (requests.RequestException, BankError, KeyError, ValueError) as error:
        PROCESS.setup_error = f"{type(error).__name__}: {error}"
        logger.error("could not open the run's accounts at %s: %s", environment.host, error)
        stop_soon(environment)
        return
    if isinstance(runner, MasterRunner) and PROCESS.setup is not None:
        runner.send_message("bank_setup", PROCESS.setup.to_dict())


def stop_soon(environment: Environment) -> None:
    """End a run that cannot work, once test_start has returned."""
    runner = environment.runner
    assert runner is not None
    options = environment.parsed_options
    gevent.spawn_later(0, runner.quit if options and options.headless else runner.stop)


# --- stop: drain, collect, reconcile ------------------------------------------------------


@events.test_stopping.add_listener
def on_test_stopping(environment: Environment, **_kwargs: Any) -> None:
    if not isinstance(environment.runner, MasterRunner):
        PROCESS.drain()  # a local runner or a worker: let the requests in flight answer


@events.test_stop.add_listener
def on_test_stop(environment: Environment, **_kwargs: Any) -> None:
    runner = environment.runner
    if is_worker(environment):
        return
    if PROCESS.report is not None or not PROCESS.run_id:
        return  # already reported, or no run happened
    if isinstance(runner, MasterRunner):
        tally, reporters = collect_worker_tallies(environment)
    else:
        tally, reporters = PROCESS.tally, 1
    finish_report(environment, tally, reporters)


def collect_worker_tallies(environment: Environment) -> tuple[Tally, int]:
    """Ask every connected worker for its tally and wait for all of them, bounded."""
    runner = environment.runner
    assert isinstance(runner, MasterRunner)
    run_id = PROCESS.run_id
    # Connected workers, and those that already left but sent their tally first.
    PROCESS.expected_workers = {client.id for client in runner.clients.all}
    PROCESS.expected_workers |= set(PROCESS.worker_tallies)
    PROCESS.tallies_complete.clear()
    if not PROCESS.expected_workers <= set(PROCESS.worker_tallies):
        runner.send_message("bank_finish", {"run_id": run_id})
        if not PROCESS.tallies_complete.wait(timeout=TALLY_DEADLINE_SECONDS):
            logger.error(
                "only %d of %d workers sent their tally within %.0f s",
                len(PROCESS.worker_tallies),
                len(PROCESS.expected_workers),
                TALLY_DEADLINE_SECONDS,
            )
    merged = Tally(run_id=run_id, reporters=0)
    for tally in PROCESS.worker_tallies.values():
        merged.merge(tally)
    return merged, len(PROCESS.expected_workers)


def finish_report(environment: Environment, tally: Tally, expected_reporters: int) -> None:
    options = bank_options(environment)
    setup = PROCESS.setup or RunSetup(
        run_id=PROCESS.run_id,
        scenario=str(options.bank_scenario),
        amount=int(options.bank_amount),
        opening_balances={},
        host=str(environment.host),
    )
    client = bank_client(
        environment, setup.host or str(environment.host or ""), REQUEST_TIMEOUT_SECONDS
    )
    try:
        observations = {account_id: client.observe(account_id) for account_id in setup.account_ids}
        server_audit = client.server_audit()
    finally:
        client.close()
    result = reconcile(
        setup, tally, observations, server_audit, expected_reporters, PROCESS.setup_error
    )
    PROCESS.report = result
    PROCESS.report_text = render_text(result)
    print(PROCESS.report_text, flush=True)
    logger.info("race report %s: %s", result.verdict, "; ".join(result.problems) or "no anomaly")
    if options.bank_report_json:
        path = Path(options.bank_report_json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result.to_dict(), indent=2) + "\n")


@events.quitting.add_listener
def on_quitting(environment: Environment, **_kwargs: Any) -> None:
    runner = environment.runner
    if not is_worker(environment) and PROCESS.report is None and PROCESS.run_id:
        # Ctrl-C or SIGTERM mid-run: Locust decides the exit code before it stops
        # the runner, so stop (and reconcile) now.
        assert runner is not None
        runner.stop()
    if isinstance(runner, WorkerRunner):
        # The master judges the run; a worker's own failures (honest 503s) are in its tally.
        environment.process_exit_code = 0
    elif PROCESS.report is not None:
        environment.process_exit_code = 0 if PROCESS.report.passed else 1


# --- messages between master and workers ---------------------------------------------------


def on_setup(environment: Environment, msg: Any, **_kwargs: Any) -> None:
    """Worker: the master announced the run's accounts."""
    setup = RunSetup.from_dict(msg.data)
    if PROCESS.setup is None or PROCESS.setup.run_id != setup.run_id:
        PROCESS.begin(setup)


def on_finish(environment: Environment, msg: Any, **_kwargs: Any) -> None:
    """Worker: the master collects the tallies of the run."""
    send_tally(environment, str(msg.data["run_id"]))


def send_tally(environment: Environment, run_id: str) -> None:
    """Worker: let in-flight requests answer, then send this process's tally, once per run."""
    runner = environment.runner
    if runner is None or run_id in PROCESS.reported_run_ids:
        return
    PROCESS.drain()
    if PROCESS.setup is not None and PROCESS.setup.run_id == run_id:
        tally = PROCESS.tally
    else:
        tally = Tally(run_id=run_id)
        tally.setup_missing = runner.user_count
    runner.send_message("bank_tally", tally.to_dict())
    PROCESS.reported_run_ids.add(run_id)
    PROCESS.forget()


def on_worker_quitting(environment: Environment, **_kwargs: Any) -> None:
    """Worker leaving mid-run (Ctrl-C): hand the tally over before Locust says goodbye."""
    if PROCESS.setup is not None:
        send_tally(environment, PROCESS.setup.run_id)


def on_setup_request(environment: Environment, msg: Any, **_kwargs: Any) -> None:
    """Master: a worker that connected late asks for the accounts of the running test."""
    running = PROCESS.setup is not None and PROCESS.report is None
    if running and PROCESS.setup is not None and environment.runner is not None:
        environment.runner.send_message("bank_setup", PROCESS.setup.to_dict(), msg.node_id)


def on_tally(environment: Environment, msg: Any, **_kwargs: Any) -> None:
    """Master: one worker's tally arrived."""
    tally = Tally.from_dict(msg.data)
    if tally.run_id != PROCESS.run_id:
        logger.warning("ignoring a tally of run %s from %s", tally.run_id, msg.node_id)
        return
    PROCESS.worker_tallies[msg.node_id] = tally
    if PROCESS.expected_workers <= set(PROCESS.worker_tallies):
        PROCESS.tallies_complete.set()


@events.init.add_listener
def on_init(environment: Environment, **_kwargs: Any) -> None:
    runner = environment.runner
    if isinstance(runner, MasterRunner):
        runner.register_message("bank_tally", on_tally)
        runner.register_message("bank_setup_request", on_setup_request)
    elif isinstance(runner, WorkerRunner):
        runner.register_message("bank_setup", on_setup)
        runner.register_message("bank_finish", on_finish)
        # Registered after the runner's own listener, so (quitting fires in
        # reverse order) the tally reaches the master before the worker's "quit".
        environment.events.quitting.add_listener(on_worker_quitting)
        # If a test is already running, the master answers with its accounts.
        runner.send_message("bank_setup_request", {})
    if environment.web_ui is not None and environment.web_ui.app is not None:
        environment.web_ui.app.add_url_rule(
            "/race-report",
            "race_report",
            lambda: (PROCESS.report_text, 200, {"Content-Type": "text/plain; charset=utf-8"}),
        )
    race_view.install(environment, PROCESS)  # the Race tab (web UI) or live tallies (worker)
