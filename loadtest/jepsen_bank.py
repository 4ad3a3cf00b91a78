"""A Jepsen-style bank test: random transfers, snapshot reads, faults, and a checked history.

    python -m loadtest.jepsen_bank --serve --lock-mode locked --duration 20
    python -m loadtest.jepsen_bank --host http://127.0.0.1:8000 --master-pid PID

After Jepsen's `bank` workload: a few accounts hold a known total; writer
threads transfer random amounts between random pairs (each with its own
Idempotency-Key, retried a bounded number of times); reader threads read
*every* balance in one snapshot (GET /balances?ids=...) and each read must sum
to the opening total with no balance below zero; with `--holders N`, N more
threads place holds of up to an account's opening balance (DESIGN §3 Holds)
and void them or let them expire (no money moves), so that holds race
transfers out for the same available money, and every read also checks that
no `held` exceeds its balance (`available` below zero); a nemesis kills and pauses
gunicorn workers and, on PostgreSQL, cuts the database's connections through
a TCP proxy (loadtest/jepsen_nemesis.py). An operation nobody knows the fate
of (timeout, reset, a 5xx that may have applied) is recorded "info", never
"fail"; after the faults heal, a final read reconciles them. The history is
saved as JSON (loadtest/jepsen_history.py) and judged by
loadtest/jepsen_checker.py; the exit code is 0 when it is valid.

`--serve` starts its own `python -m service serve` (and, for a PostgreSQL
`--database` with the `cut` fault, a proxy in front of it); `--host` drives a
running service (pass `--master-pid` for the worker faults); one started with
BANK_API_TOKENS takes the client token of BANK_CLIENT_TOKEN (a 401 stops the
run before its load, with one line and exit code 2). Black-box: HTTP and
signals only, never an import of the service.
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import requests
from sqlalchemy.engine import make_url

from loadtest.bank_http import BankClient, TokenRefused
from loadtest.client_token import bearer, client_token
from loadtest.jepsen_checker import check, render
from loadtest.jepsen_history import History, balances_value
from loadtest.jepsen_nemesis import (
    DEFAULT_CUT_SECONDS,
    DEFAULT_INTERVAL_SECONDS,
    DEFAULT_PAUSE_SECONDS,
    FAULTS,
    Nemesis,
    available_faults,
)
from loadtest.service_process import REPOSITORY_ROOT, ServiceProcess, service_environment
from loadtest.tally import OUTCOME_UNKNOWN_CODE
from loadtest.tcp_proxy import TcpProxy

# Every request gets a new connection: kept-alive connections stick to one
# gunicorn worker and would dodge the worker faults.
NEW_CONNECTION = {"Connection": "close"}
RETRY_BACKOFF_BASE_SECONDS = 0.05
RETRY_BACKOFF_CAP_SECONDS = 1.0
FAILED_READ_PAUSE_SECONDS = 0.05
FINAL_READ_INTERVAL_SECONDS = 0.2
# 503s whose problem says nothing was written: the only 5xx that are a "fail". A write
# that may have been applied is 503 outcome_unknown instead (indeterminate: "info").
NOTHING_WRITTEN_CODES = frozenset(
    {"lock_timeout", "write_conflict", "overloaded", "store_unavailable"}
)
DEFAULT_HISTORY = Path("var/jepsen/history.json")
# Holders: each hold lives the API's shortest time; this share is left to expire.
HOLD_SECONDS = 1
LEFT_TO_EXPIRE = 0.25


@dataclass(frozen=True)
class WorkloadOptions:
    accounts: int = 5
    opening_balance: int = 100
    writers: int = 4
    readers: int = 2
    duration_seconds: float = 10.0
    max_amount: int = 5
    request_timeout_seconds: float = 3.0
    retry_attempts: int = 3
    final_read_deadline_seconds: float = 30.0
    seed: int | None = None
    holders: int = 0  # threads placing holds and voiding them (or letting them expire)

    def __post_init__(self) -> None:
        if self.accounts < 2 or self.writers < 1 or self.readers < 0 or self.holders < 0:
            raise ValueError("a bank run needs 2+ accounts, 1+ writer, 0+ readers and holders")

    @property
    def clients(self) -> int:
        """Client processes: writers, then readers, then holders (the final read is next)."""
        return self.writers + self.readers + self.holders
        if self.max_amount < 1 or self.opening_balance < 0 or self.retry_attempts < 1:
            raise ValueError("amounts are positive, balances not negative, attempts 1+")


@dataclass(frozen=True)
class Attempt:
    """What one HTTP exchange told: the status (0: no answer) and the problem code."""

    status: int
    code: str | None = None
    retry_after: str | None = None
    transfer_id: int | None = None

    @property
    def uncertain(self) -> bool:
        """Nobody knows whether this attempt moved money."""
        if self.code == OUTCOME_UNKNOWN_CODE:
            return True
        if self.status == 0 or self.status >= 500:
            return not (self.status == 503 and self.code in NOTHING_WRITTEN_CODES)
        return self.status == 409 and self.code == "idempotency_in_progress"

    @property
    def worth_retrying(self) -> bool:
        return self.uncertain or self.status == 503


def random_transfer(rng: random.Random, account_ids: list[int], max_amount: int) -> dict[str, int]:
    """A transfer's history value: two different accounts, an amount from 1 to max_amount."""
    source, target = rng.sample(account_ids, 2)
    return {"from": source, "to": target, "amount": rng.randint(1, max_amount)}


def transfer(
    session: requests.Session,
    base_url: str,
    value: dict[str, int],
    options: WorkloadOptions,
    rng: random.Random,
) -> tuple[str, str | None, int | None]:
    """One transfer, retried with its key: ("ok" | "fail" | "info", error, transfer id).

    "fail" only when every attempt certainly changed nothing; an attempt whose
    fate is unknown makes the operation "info" unless a later one succeeded
    (a replay of the first, or a first execution: the key allows only one).
    """
    body = {"from_account": value["from"], "to_account": value["to"], "amount": value["amount"]}
    headers = {**NEW_CONNECTION, "Idempotency-Key": uuid.uuid4().hex}
    uncertain = False
    attempt = Attempt(0)
    for number in range(options.retry_attempts):
        try:
            response = session.post(
                f"{base_url}/transfers",
                json=body,
                headers=headers,
                timeout=options.request_timeout_seconds,
            )
            attempt = _attempt(response)
        except requests.RequestException:
            attempt = Attempt(0)
        if 200 <= attempt.status < 300:
            return "ok", None, attempt.transfer_id
        uncertain = uncertain or attempt.uncertain
        if not attempt.worth_retrying or number + 1 == options.retry_attempts:
            break
        time.sleep(_backoff_seconds(number, attempt.retry_after, rng))
    return ("info" if uncertain else "fail"), _describe(attempt), None


def place_hold(
    session: requests.Session, base_url: str, value: dict[str, int], options: WorkloadOptions
) -> tuple[str, str | None, int | None]:
    """One hold, once: ("ok", None, hold id), ("fail", why, None) or ("info", why, None)."""
    body = {"amount": value["amount"], "expires_in_s": HOLD_SECONDS}
    try:
        response = session.post(
            f"{base_url}/accounts/{value['account']}/holds",
            json=body,
            headers={**NEW_CONNECTION, "Idempotency-Key": uuid.uuid4().hex},
            timeout=options.request_timeout_seconds,
        )
    except requests.RequestException as error:
        return "info", type(error).__name__, None
    attempt = _attempt(response)
    if response.status_code == 201:
        try:
            return "ok", None, int(response.json()["id"])
        except (ValueError, KeyError, TypeError):
            return "info", "an undecodable hold", None
    return ("info" if attempt.uncertain else "fail"), _describe(attempt), None


def void_hold(
    session: requests.Session, base_url: str, hold_id: int, options: WorkloadOptions
) -> tuple[str, str | None]:
    """One void, once: "ok", "fail" (409 hold_not_pending: it expired first) or "info"."""
    try:
        response = session.post(
            f"{base_url}/holds/{hold_id}/void",
            headers={**NEW_CONNECTION, "Idempotency-Key": uuid.uuid4().hex},
            timeout=options.request_timeout_seconds,
        )
    except requests.RequestException as error:
        return "info", type(error).__name__
    attempt = _attempt(response)
    if response.status_code == 200:
        return "ok", None
    return ("info" if attempt.uncertain else "fail"), _describe(attempt)


def read_held(
    session: requests.Session, base_url: str, account_ids: list[int], timeout_seconds: float
) -> dict[str, dict[str, int]] | None:
    """Each account's balance and held from its own GET (one row each, not a snapshot)."""
    reads: dict[str, dict[str, int]] = {}
    for account_id in account_ids:
        try:
            response = session.get(
                f"{base_url}/accounts/{account_id}",
                headers=NEW_CONNECTION,
                timeout=timeout_seconds,
            )
            account = response.json() if response.status_code == 200 else None
            if not isinstance(account, dict) or "held" not in account:
                return None
            reads[str(account_id)] = {
                "balance": int(account["balance"]),
                "held": int(account["held"]),
            }
        except (requests.RequestException, ValueError, KeyError, TypeError):
            return None
    return reads


def balances_url(base_url: str, account_ids: list[int]) -> str:
    return f"{base_url}/balances?ids=" + ",".join(str(account_id) for account_id in account_ids)


def read_balances(
    session: requests.Session, url: str, timeout_seconds: float
) -> tuple[str, dict[str, int] | None, str | None]:
    """One snapshot read: ("ok", balances, None) or ("fail" | "info", None, why)."""
    kind, balances, _held, error = read_snapshot(session, url, timeout_seconds)
    return kind, balances, error


def read_snapshot(
    session: requests.Session, url: str, timeout_seconds: float
) -> tuple[str, dict[str, int] | None, dict[str, int] | None, str | None]:
    """One snapshot read, with each account's `held` when the service reports it (holds).

    ("ok", balances, held or None, None) or ("fail" | "info", None, None, why).
    """
    try:
        response = session.get(url, headers=NEW_CONNECTION, timeout=timeout_seconds)
    except requests.RequestException as error:
        return "info", None, None, type(error).__name__
    if response.status_code == 0:  # Locust's HttpSession: no answer, instead of raising
        return "info", None, None, "no answer"
    if response.status_code != 200:
        return "fail", None, None, _describe(_attempt(response))
    try:
        items = response.json()["items"]
        balances = {int(item["account_id"]): int(item["balance"]) for item in items}
        held = {int(item["account_id"]): int(item["held"]) for item in items if "held" in item}
    except (ValueError, KeyError, TypeError):
        return "fail", None, None, "an undecodable answer"
    return "ok", balances_value(balances), balances_value(held) if held else None, None


class Clients:
    """The writer and reader threads of one run, all stopped by one event."""

    def __init__(
        self, base_url: str, history: History, options: WorkloadOptions, token: str | None = None
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.history = history
        self.options = options
        self.authorization = bearer(token)  # on every session; never in the history
        self.stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.balances_url = balances_url(self.base_url, history.account_ids)

    def start(self) -> None:
        seed = self.options.seed
        readers_end = self.options.writers + self.options.readers
        for process in range(self.options.clients):
            rng = random.Random(None if seed is None else seed * 1000 + process)  # nosec B311  # seeded to replay
            target = self._write if process < self.options.writers else self._read
            target = self._hold if process >= readers_end else target
            thread = threading.Thread(target=target, args=(process, rng), name=f"client-{process}")
            self._threads.append(thread)
            thread.start()

    def join(self) -> None:
        # A writer finishes its current operation: every attempt and backoff is bounded.
        bound = self.options.retry_attempts * (
            self.options.request_timeout_seconds + RETRY_BACKOFF_CAP_SECONDS
        )
        deadline = time.monotonic() + bound + 5
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def session(self) -> requests.Session:
        session = requests.Session()
        session.headers.update(self.authorization)
        return session

    def _write(self, process: int, rng: random.Random) -> None:
        with self.session() as session:
            while not self.stop.is_set():
                value = random_transfer(rng, self.history.account_ids, self.options.max_amount)
                self.history.append(process, "invoke", "transfer", value)
                kind, error, transfer_id = transfer(
                    session, self.base_url, value, self.options, rng
                )
                self.history.append(
                    process, kind, "transfer", value, error=error, transfer_id=transfer_id
                )

    def _read(self, process: int, _rng: random.Random) -> None:
        with self.session() as session:
            while not self.stop.is_set():
                self.history.append(process, "invoke", "read", None)
                kind, balances, held, error = self.read_once(session)
                held_reads = self.held_reads(session) if kind == "ok" and held is None else None
                self.history.append(
                    process, kind, "read", balances, error=error, held=held, held_reads=held_reads
                )
                if kind != "ok":
                    self.stop.wait(FAILED_READ_PAUSE_SECONDS)

    def read_once(
        self, session: requests.Session
    ) -> tuple[str, dict[str, int] | None, dict[str, int] | None, str | None]:
        return read_snapshot(session, self.balances_url, self.options.request_timeout_seconds)

    def held_reads(self, session: requests.Session) -> dict[str, dict[str, int]] | None:
        """With holders, and /balances silent on held: each account's own balance and held."""
        if not self.options.holders:
            return None
        return read_held(
            session, self.base_url, self.history.account_ids, self.options.request_timeout_seconds
        )

    def _hold(self, process: int, rng: random.Random) -> None:
        """Place a hold of up to the opening balance; void it, or let it expire (1 s)."""
        with self.session() as session:
            while not self.stop.is_set():
                value = {
                    "account": rng.choice(self.history.account_ids),
                    "amount": rng.randint(1, max(self.options.opening_balance, 1)),
                }
                self.history.append(process, "invoke", "hold", value)
                kind, error, hold_id = place_hold(session, self.base_url, value, self.options)
                self.history.append(process, kind, "hold", value, error=error, hold_id=hold_id)
                if hold_id is None or rng.random() < LEFT_TO_EXPIRE:
                    continue
                void_value = {"hold": hold_id}
                self.history.append(process, "invoke", "void", void_value)
                kind, error = void_hold(session, self.base_url, hold_id, self.options)
                self.history.append(process, kind, "void", void_value, error=error)


def _attempt(response: requests.Response) -> Attempt:
    try:
        answer = response.json()
    except ValueError:
        answer = None
    answer = answer if isinstance(answer, dict) else {}
    code = answer.get("code") if response.status_code >= 300 else None
    transfer_id = answer.get("id") if response.status_code < 300 else None
    return Attempt(
        response.status_code,
        code if isinstance(code, str) else None,
        response.headers.get("Retry-After"),
        transfer_id if isinstance(transfer_id, int) else None,
    )


def _backoff_seconds(attempt: int, retry_after: str | None, rng: random.Random) -> float:
    backoff = min(RETRY_BACKOFF_CAP_SECONDS, RETRY_BACKOFF_BASE_SECONDS * 2**attempt)
    told = float(retry_after) if retry_after and retry_after.isdigit() else 0.0
    return max(min(told, RETRY_BACKOFF_CAP_SECONDS), rng.uniform(0, backoff))


def _describe(attempt: Attempt) -> str:
    if attempt.status == 0:
        return "no answer"
    return f"{attempt.status} {attempt.code}" if attempt.code else str(attempt.status)


# --------------------------------------------------------------------------- a run


def run_workload(
    base_url: str,
    options: WorkloadOptions,
    nemesis: Nemesis | None = None,
    metadata: dict[str, Any] | None = None,
    token: str | None = None,
) -> History:
    """Open the accounts, run clients and nemesis for the duration, heal, read a final time.

    `token`: the client token of a service with BANK_API_TOKENS (`TokenRefused`
    before any load when the service answers 401).
    """
    client = BankClient(base_url, timeout_seconds=30.0, token=token)
    try:
        mode = client.mode()
        run = uuid.uuid4().hex[:8]
        opening = {
            client.open_account(f"jepsen {run} #{number}", options.opening_balance): (
                options.opening_balance
            )
            for number in range(1, options.accounts + 1)
        }
    finally:
        client.close()
    history = History(
        opening,
        metadata={
            "service": base_url,
            "mode": {key: mode.get(key) for key in ("lock_mode", "race_window_ms")},
            "options": asdict(options),
            "faults": list(nemesis.faults) if nemesis else [],
            **(metadata or {}),
        },
    )
    clients = Clients(base_url, history, options, token)
    clients.start()
    if nemesis is not None:
        nemesis.start(history)
    try:
        clients.stop.wait(options.duration_seconds)
    finally:
        clients.stop.set()
        if nemesis is not None:
            nemesis.stop_and_heal()
        clients.join()
    final_read(clients, options)
    return history


def final_read(clients: Clients, options: WorkloadOptions) -> None:
    """After the faults healed: read until the service answers (bounded), marked `final`."""
    process = options.clients
    session = clients.session()
    deadline = time.monotonic() + options.final_read_deadline_seconds
    try:
        while True:
            clients.history.append(process, "invoke", "read", None, final=True)
            kind, balances, held, error = clients.read_once(session)
            held_reads = clients.held_reads(session) if kind == "ok" and held is None else None
            clients.history.append(
                process,
                kind,
                "read",
                balances,
                error=error,
                final=True,
                held=held,
                held_reads=held_reads,
            )
            if kind == "ok" or time.monotonic() > deadline:
                return
            time.sleep(FINAL_READ_INTERVAL_SECONDS)  # polling interval under a deadline
    finally:
        session.close()


# --------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.jepsen_bank", description=__doc__.split("\n")[0]
    )
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--host", help="a running service, e.g. http://127.0.0.1:8000")
    target.add_argument("--serve", action="store_true", help="start a service for the run")
    parser.add_argument("--master-pid", type=int, help="--host: its gunicorn master (kill, pause)")
    parser.add_argument(
        "--database",
        default="",
        help="--serve: BANK_DATABASE_URL (default: a new SQLite file beside --history)",
    )
    parser.add_argument("--lock-mode", default="locked", help="--serve: BANK_LOCK_MODE")
    parser.add_argument("--race-window-ms", type=int, default=0, help="--serve: race window")
    parser.add_argument("--workers", type=int, default=2, help="--serve: gunicorn workers")
    parser.add_argument("--threads", type=int, default=4, help="--serve: threads per worker")
    parser.add_argument(
        "--nemesis",
        default="",
        help=f"comma-separated faults of {', '.join(FAULTS)}; default: every one possible; "
        "'none' for none",
    )
    parser.add_argument("--nemesis-interval", type=float, default=DEFAULT_INTERVAL_SECONDS)
    parser.add_argument("--pause-seconds", type=float, default=DEFAULT_PAUSE_SECONDS)
    parser.add_argument("--cut-seconds", type=float, default=DEFAULT_CUT_SECONDS)
    defaults = WorkloadOptions()
    parser.add_argument("--accounts", type=int, default=defaults.accounts)
    parser.add_argument("--opening-balance", type=int, default=defaults.opening_balance)
    parser.add_argument("--writers", type=int, default=defaults.writers)
    parser.add_argument("--readers", type=int, default=defaults.readers)
    parser.add_argument(
        "--holders",
        type=int,
        default=defaults.holders,
        help="threads placing holds and voiding them (a service with holds)",
    )
    parser.add_argument("--duration", type=float, default=defaults.duration_seconds)
    parser.add_argument("--max-amount", type=int, default=defaults.max_amount)
    parser.add_argument("--timeout", type=float, default=defaults.request_timeout_seconds)
    parser.add_argument("--attempts", type=int, default=defaults.retry_attempts)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--history", type=Path, default=DEFAULT_HISTORY)
    return parser


def workload_options(arguments: argparse.Namespace) -> WorkloadOptions:
    return WorkloadOptions(
        accounts=arguments.accounts,
        opening_balance=arguments.opening_balance,
        writers=arguments.writers,
        readers=arguments.readers,
        holders=arguments.holders,
        duration_seconds=arguments.duration,
        max_amount=arguments.max_amount,
        request_timeout_seconds=arguments.timeout,
        retry_attempts=arguments.attempts,
        seed=arguments.seed,
    )


def chosen_faults(requested: str, master_pid: int | None, proxy: TcpProxy | None) -> list[str]:
    if requested == "none":
        return []
    if not requested:
        return available_faults(master_pid, proxy)
    faults = [fault.strip() for fault in requested.split(",") if fault.strip()]
    unknown = [fault for fault in faults if fault not in FAULTS]
    if unknown:
        raise ValueError(f"unknown fault(s) {', '.join(unknown)}; choose from {', '.join(FAULTS)}")
    return faults


@contextmanager
def served(arguments: argparse.Namespace) -> Iterator[tuple[str, int | None, TcpProxy | None]]:
    """The service to drive: (url, gunicorn master pid, database proxy)."""
    if not arguments.serve:
        yield arguments.host, arguments.master_pid, None
        return
    workdir = arguments.history.resolve().parent
    database = arguments.database or f"sqlite:///{workdir / f'bank-{uuid.uuid4().hex[:8]}.db'}"
    with ExitStack() as stack:
        proxy = None
        url = make_url(database)
        if url.get_backend_name() == "postgresql":
            _upgrade(database)
            if "cut" in arguments.nemesis or not arguments.nemesis:
                proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432)
                stack.callback(proxy.close)
                database = url.set(host="127.0.0.1", port=proxy.port).render_as_string(
                    hide_password=False
                )
        settings = {
            "BANK_DATABASE_URL": database,
            "BANK_LOCK_MODE": arguments.lock_mode,
            "BANK_RACE_WINDOW_MS": str(arguments.race_window_ms),
            "BANK_ALLOW_UNSAFE_MODES": "1",
            "BANK_WORKERS": str(arguments.workers),
            "BANK_THREADS": str(arguments.threads),
        }
        service = ServiceProcess(settings, workdir, workdir / "service.log")
        stack.enter_context(service)
        assert service.process is not None
        yield service.url, service.process.pid, proxy


def _upgrade(database: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "service", "db", "upgrade"],
        cwd=REPOSITORY_ROOT,
        env=service_environment({"BANK_DATABASE_URL": database}),
        check=True,
        capture_output=True,
        timeout=120,
    )


def main(argv: Sequence[str] | None = None) -> int:
    arguments = build_parser().parse_args(argv)
    try:
        options = workload_options(arguments)
    except ValueError as error:
        print(f"jepsen_bank: {error}", file=sys.stderr)
        return 2
    with served(arguments) as (url, master_pid, proxy):
        try:
            faults = chosen_faults(arguments.nemesis, master_pid, proxy)
            nemesis = Nemesis(
                faults,
                master_pid=master_pid,
                proxy=proxy,
                interval_seconds=arguments.nemesis_interval,
                pause_seconds=arguments.pause_seconds,
                cut_seconds=arguments.cut_seconds,
                seed=arguments.seed,
            )
        except ValueError as error:
            print(f"jepsen_bank: {error}", file=sys.stderr)
            return 2
        try:
            history = run_workload(url, options, nemesis, token=client_token())
        except TokenRefused as error:
            print(f"jepsen_bank: {error}", file=sys.stderr)
            return 2
    history.save(arguments.history)
    report = check(history.to_dict())
    print(render(report))
    print(f"history: {arguments.history}")
    return 0 if report.valid else 1


if __name__ == "__main__":
    sys.exit(main())
