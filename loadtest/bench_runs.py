"""The benchmark's runs: every store x lock mode x operation, loaded, then audited.

`Benchmark.measure_every_mode` measures the echo ceiling, then for each store
starts the service once and, for each lock mode (safe ones first, switched
with `PUT /mode`), each operation and each account count, loads one run
(loadtest/bench_load.py), reads the balances and the server's audits before
and after it (loadtest/bench_bank.py) and judges it (`judge` of
loadtest/bench_report.py). The envelope (loadtest/bench_envelope.py) measures
its rows with the same `load` and `observe`.

What it loads: the echo app, `python -m loadtest.echo_app`, and the service,
`python -m service serve` (loadtest/service_process.py) with unsafe modes
allowed and a generated admin token, so that modes switch with `PUT /mode`
instead of a restart. A PostgreSQL store is a fresh database created for the
run, migrated with `python -m service db upgrade`, and dropped afterwards; an
SQLite store is a file in a temporary directory, which `serve` migrates
itself. Nothing here imports `service`.
"""

from __future__ import annotations

import argparse
import secrets
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import requests
from sqlalchemy.engine import make_url

from loadtest.bank_http import BankError
from loadtest.bench_bank import BenchBank
from loadtest.bench_load import LoadError, LoadPlan, LoadResult, run_locust, run_wrk
from loadtest.bench_report import OPERATION_LABELS, RunEvidence, RunRecord, judge
from loadtest.lock_modes import REDIS_MODES, SAFE_MODES, UNSAFE_MODES
from loadtest.redis_target import LEAVE_OUT_HINT, redis_problem
from loadtest.service_process import REPOSITORY_ROOT, ServiceProcess, service_environment
from loadtest.throwaway_postgres import throwaway_postgres

DATA_DIRECTORY = REPOSITORY_ROOT / "var"
FRESH_ACCOUNTS_LIMIT = 20  # sets this small are opened anew for every run
RUN_ATTEMPTS = 2  # a run served partly by the previous mode is measured once more
UPGRADE_DEADLINE_SECONDS = 120
LOCK_TIMEOUT_MS = 5000  # the service's default bound on every lock wait, stated explicitly
# What makes one run unmeasurable without stopping the others.
MEASUREMENT_ERRORS = (
    LoadError,
    BankError,
    requests.RequestException,
    OSError,
    ValueError,
    KeyError,
)


def execution_order(modes: list[str]) -> list[str]:
    """Safe modes first, so that their audits start from a bank no unsafe mode has touched."""
    return [mode for mode in modes if mode in SAFE_MODES] + [
        mode for mode in modes if mode in UNSAFE_MODES
    ]


class Benchmark:
    def __init__(self, arguments: argparse.Namespace, wrk: str | None, log_directory: Path) -> None:
        self.arguments = arguments
        self.wrk = wrk
        self.log_directory = log_directory
        self.echo_requests_per_second = 0.0

    def measure_every_mode(self) -> list[RunRecord]:
        """The echo ceiling, then every store x mode x operation x account count, sorted."""
        echo = self.measure_echo()
        announce(echo)
        records = [echo]
        for store in self.arguments.stores:
            records += self.measure_store(store)
        records.sort(key=report_order(self.arguments))
        return records

    def load(
        self, url: str, operation: str, accounts: list[int], mode: str, workdir: Path,
        *, duration_s: int | None = None, keyed: bool | None = None,
    ) -> LoadResult:  # fmt: skip
        arguments = self.arguments
        duration_s = arguments.duration if duration_s is None else duration_s
        keyed = arguments.idempotency_keys if keyed is None else keyed
        plan = LoadPlan(url, operation, arguments.amount, accounts, mode, duration_s,
                        arguments.connections, workdir)  # fmt: skip
        if self.wrk is None:
            return run_locust(plan)
        return run_wrk(self.wrk, plan, threads=arguments.wrk_threads, keyed=keyed)

    def measure_echo(self) -> RunRecord:
        record = RunRecord(store="-", mode="-", operation="echo", accounts=0)
        settings = gunicorn_settings(self.arguments.workers, self.arguments.threads)
        with tempfile.TemporaryDirectory(prefix="bankrace-bench-echo-") as workdir:
            echo = EchoProcess(settings, Path(workdir), self.log_directory / "echo-server.log")
            try:
                with echo:
                    load = self.load(echo.url, "echo", [], "", Path(workdir))
            except (RuntimeError, OSError) as error:
                record.problems.append(f"echo ceiling not measured: {error}")
                return record
        record.fill_load(load)
        self.echo_requests_per_second = load.requests_per_second
        record.ratio_to_echo = 1.0 if load.requests_per_second else None
        record.verdict = "CEILING" if load.successes and not record.other else "ERROR"
        return record

    @contextmanager
    def store_database(self, store: str) -> Iterator[tuple[str, Path]]:
        """A fresh database of `store` and a working directory beside it: (URL, directory)."""
        # Under the project's var/, not /tmp: on a tmpfs SQLite's fsync would cost nothing.
        DATA_DIRECTORY.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(
            prefix=f"bench-{store}-", dir=DATA_DIRECTORY
        ) as workdir_name:
            workdir = Path(workdir_name)
            database: AbstractContextManager[str] = (
                postgres_database(self.arguments.postgres_url, workdir)
                if store == "postgresql"
                else sqlite_database(workdir)
            )
            with database as database_url:
                yield database_url, workdir

    def measure_store(self, store: str) -> list[RunRecord]:
        try:
            with self.store_database(store) as (database_url, workdir):
                return self.measure_service(store, database_url, workdir)
        except Exception as error:  # any set-up failure is this store's ERROR row
            return [setup_failure(store, error)]

    def measure_service(self, store: str, database_url: str, workdir: Path) -> list[RunRecord]:
        arguments = self.arguments
        token = new_admin_token()
        settings = service_settings(
            database_url, arguments.workers, arguments.threads, arguments.race_window_ms, token
        )
        settings["BANK_REDIS_URL"] = arguments.redis_url
        service = ServiceProcess(settings, workdir, self.log_directory / f"{store}-server.log")
        records = []
        with service:
            bank = BenchBank(service.url, token)
            try:
                shared = {
                    count: bank.open_accounts(count, f"bench-{count}", arguments.opening_balance)
                    for count in arguments.accounts
                    if count > FRESH_ACCOUNTS_LIMIT
                }
                for mode in execution_order(arguments.modes):
                    records += self.measure_mode(bank, store, mode, shared, workdir)
            finally:
                bank.close()
        return records

    def measure_mode(
        self, bank: BenchBank, store: str, mode: str, shared: dict[int, list[int]], workdir: Path
    ) -> list[RunRecord]:
        records = []
        unreachable = redis_problem(self.arguments.redis_url) if mode in REDIS_MODES else None
        mode_problem = f"{unreachable}: {LEAVE_OUT_HINT}" if unreachable else None
        try:
            if mode_problem is None:
                bank.set_mode(mode, self.arguments.race_window_ms)
        except (BankError, requests.RequestException, ValueError) as error:
            mode_problem = str(error)
        for operation in self.arguments.operations:
            for count in self.arguments.accounts:
                record = RunRecord(store=store, mode=mode, operation=operation, accounts=count)
                if mode_problem:
                    record.problems.append(mode_problem)
                else:
                    self.measure_run(record, bank, shared.get(count), workdir)
                announce(record)
                records.append(record)
        return records

    def measure_run(
        self, record: RunRecord, bank: BenchBank, shared: list[int] | None, workdir: Path
    ) -> None:
        """Load, audit and judge one run into `record`; measured again if modes were mixed."""
        arguments = self.arguments
        for attempt in range(1, RUN_ATTEMPTS + 1):
            record.attempts = attempt
            try:
                if attempt > 1:  # the last run was served partly by the previous mode
                    bank.confirm_mode(record.mode, arguments.race_window_ms)
                accounts = shared or bank.open_accounts(
                    record.accounts, f"hot-{record.mode}-{record.operation}",
                    arguments.opening_balance,
                )  # fmt: skip
                evidence, load = self.observe(bank, record, accounts, fresh=shared is None,
                                              workdir=workdir)  # fmt: skip
            except MEASUREMENT_ERRORS as error:
                record.verdict = "ERROR"
                record.problems = [f"not measured: {error}"]
                return
            if not load.mode_mismatches:
                break
        record.fill_load(load)
        if self.echo_requests_per_second:
            record.ratio_to_echo = record.requests_per_second / self.echo_requests_per_second
        record.fill_judgement(judge(evidence))
        if not load.drained:
            record.problems.append(
                f"{load.unanswered} requests were still unanswered when the load stopped "
                "(counted as unknown outcomes)"
            )

    def observe(
        self, bank: BenchBank, record: RunRecord, accounts: list[int], *, fresh: bool,
        workdir: Path, keyed: bool | None = None, duration_s: int | None = None,
    ) -> tuple[RunEvidence, LoadResult]:  # fmt: skip
        before = bank.balances(accounts)
        audit_before = bank.server_audit()
        load = self.load(
            bank.base_url, record.operation, accounts, record.mode, workdir / "wrk",
            keyed=keyed, duration_s=duration_s,
        )  # fmt: skip
        after = bank.balances(accounts)
        audit_after = bank.server_audit()
        server_errors = load.server_errors
        evidence = RunEvidence(
            operation=record.operation,
            amount=self.arguments.amount,
            before=before,
            after=after,
            credits=load.credits,
            debits=load.debits,
            acknowledged=load.successes,
            unknown_outcomes=load.unanswered + server_errors,
            server_errors=server_errors,
            unexpected=sum(load.statuses.values()) - load.successes - load.refusals_409
            - load.count(low=500, high=599),
            unparsed=load.unparsed,
            mode_mismatches=load.mode_mismatches,
            audit_before=audit_before,
            audit_after=audit_after,
            account_audits=bank.account_audits(accounts) if fresh else {},
        )  # fmt: skip
        return evidence, load


def setup_failure(store: str, error: BaseException) -> RunRecord:
    record = RunRecord(store=store, mode="-", operation="setup", accounts=0)
    record.problems.append(f"{store} not measured: {type(error).__name__}: {error}")
    announce(record)
    return record


def announce(record: RunRecord) -> None:
    label = OPERATION_LABELS[record.operation]
    if record.verdict == "ERROR":
        print(f"[bench] {record.store} {record.mode} {label}: ERROR {record.problems}", flush=True)
        return
    ratio = "" if record.ratio_to_echo is None else f" ({record.ratio_to_echo:.2f} x echo)"
    p99 = "-" if record.p99_ms is None else f"{record.p99_ms:.1f} ms"
    print(
        f"[bench] {record.store} {record.mode} {label} on {record.accounts:,} accounts: "
        f"{record.requests_per_second:,.0f} req/s{ratio}, p99 {p99}, {record.verdict}",
        flush=True,
    )


def report_order(arguments: argparse.Namespace) -> Callable[[RunRecord], tuple[int, ...]]:
    def key(record: RunRecord) -> tuple[int, ...]:
        if record.operation == "echo":
            return (-1,)
        return (
            arguments.stores.index(record.store),
            arguments.modes.index(record.mode) if record.mode in arguments.modes else -1,
            arguments.operations.index(record.operation)
            if record.operation in arguments.operations
            else -1,
            arguments.accounts.index(record.accounts) if record.accounts in arguments.accounts
            else -1,
        )  # fmt: skip

    return key


# ---------------------------------------------------------------- what it loads


class EchoProcess(ServiceProcess):
    """`python -m loadtest.echo_app` on a free loopback port, same gunicorn settings."""

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "loadtest.echo_app", "--bind", self.settings["BANK_BIND"],
            "--workers", self.settings["BANK_WORKERS"], "--threads", self.settings["BANK_THREADS"],
        ]  # fmt: skip

    def environment(self) -> dict[str, str]:
        return service_environment({})  # its settings are on its command line

    def ready_workers(self) -> int:
        if not self.log_path.exists():
            return 0
        return self.log_path.read_text(errors="replace").count("echo: worker ")


def gunicorn_settings(workers: int, threads: int) -> dict[str, str]:
    return {"BANK_WORKERS": str(workers), "BANK_THREADS": str(threads)}


def service_settings(
    database_url: str, workers: int, threads: int, race_window_ms: int, admin_token: str
) -> dict[str, str]:
    return {
        **gunicorn_settings(workers, threads),
        "BANK_DATABASE_URL": database_url,
        "BANK_LOCK_MODE": "locked",
        "BANK_RACE_WINDOW_MS": str(race_window_ms),
        "BANK_ALLOW_UNSAFE_MODES": "1",
        "BANK_ADMIN_TOKEN": admin_token,
        "BANK_LOCK_TIMEOUT_MS": str(LOCK_TIMEOUT_MS),
    }


def new_admin_token() -> str:
    return secrets.token_urlsafe(24)


def hide_password(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


@contextmanager
def sqlite_database(workdir: Path) -> Iterator[str]:
    yield f"sqlite:///{workdir / 'bench.db'}"


def postgres_database(server_url: str, workdir: Path) -> AbstractContextManager[str]:
    """A fresh database on the server at `server_url`, migrated by `serve`'s own command."""
    return throwaway_postgres(server_url, "bankrace_bench", lambda url: migrate(url, workdir))


def migrate(database_url: str, workdir: Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "service", "db", "upgrade"],
        cwd=workdir,
        env=service_environment({"BANK_DATABASE_URL": database_url}),
        capture_output=True,
        text=True,
        timeout=UPGRADE_DEADLINE_SECONDS,
        check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"bankrace db upgrade failed: {completed.stderr[-1000:]}")
