"""The benchmark: the bank's write path against the framework's own ceiling.

    python -m loadtest.bench [--duration 1] [--connections 32] [--workers 2] [--threads 8]
                             [--modes locked,atomic,...] [--operations deposit,withdraw,transfer]
                             [--accounts 5,1000] [--stores sqlite,postgresql]
                             [--postgres-url URL] [--race-window-ms 0] [--out reports]

In one run, on the same gunicorn settings: wrk against a minimal Flask JSON
echo app (loadtest/echo_app.py, the ceiling), then deposits, withdrawals and
transfers in every lock mode on a few hot accounts and on many spread ones,
on SQLite, and on PostgreSQL when BANK_TEST_POSTGRES_URL or --postgres-url
names a server (a fresh database, dropped afterwards). The service is started
once per store (`python -m service serve`) and switched between modes with
`PUT /mode`. After every run the balances and the server's audits are checked
against the acknowledged operations (loadtest/bench_judge.py).

Writes <out>/bench-<timestamp>.json and .md (the servers' logs beside them in
bench-<timestamp>-logs/) and prints the table. Exit code 0 when every run was
measured and every safe mode kept every invariant; 1 otherwise (a fast run
that lost money in a safe mode is a failure, never a result); 2 when wrk
cannot be had.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import requests

from loadtest.bank_http import BankError
from loadtest.bench_bank import BenchBank
from loadtest.bench_judge import OPERATIONS, SAFE_MODES, UNSAFE_MODES, RunEvidence, judge
from loadtest.bench_report import (
    OPERATION_LABELS,
    RunRecord,
    markdown_table,
    problem_lines,
    summary_line,
    write_json,
    write_markdown,
)
from loadtest.bench_targets import (
    EchoProcess,
    gunicorn_settings,
    hide_password,
    new_admin_token,
    postgres_database,
    service_settings,
    sqlite_database,
)
from loadtest.bench_wrk import LoadError, LoadResult, ensure_wrk, run_wrk
from loadtest.service_process import REPOSITORY_ROOT, ServiceProcess

ALL_MODES = ("unlocked", "locked", "process-lock", "optimistic", "atomic")
STORES = ("sqlite", "postgresql")
POSTGRES_URL_VARIABLE = "BANK_TEST_POSTGRES_URL"
DEFAULT_DURATION_S = 1
DEFAULT_ACCOUNTS = (5, 1000)
FRESH_ACCOUNTS_LIMIT = 20  # sets this small are opened anew for every run
DEFAULT_AMOUNT = 1
DEFAULT_OPENING_BALANCE = 1_000_000
RUN_ATTEMPTS = 2  # a run served partly by the previous mode is measured once more
DURATION_LIMIT_S = 600
ACCOUNTS_LIMIT = 10_000
# What makes one run unmeasurable without stopping the others.
MEASUREMENT_ERRORS = (
    LoadError,
    BankError,
    requests.RequestException,
    OSError,
    ValueError,
    KeyError,
)


def bounded_int(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low} and {high}")
        return value

    return parse


def choices(allowed: tuple[str, ...]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        chosen = [item.strip() for item in text.split(",") if item.strip()]
        unknown = [item for item in chosen if item not in allowed]
        if unknown or not chosen:
            raise argparse.ArgumentTypeError(f"choose from {', '.join(allowed)}")
        return chosen

    return parse


def account_counts(text: str) -> list[int]:
    try:
        counts = [int(item) for item in text.split(",") if item.strip()]
    except ValueError as error:
        raise argparse.ArgumentTypeError("a comma-separated list of account counts") from error
    if not counts or any(not 2 <= count <= ACCOUNTS_LIMIT for count in counts):
        raise argparse.ArgumentTypeError(f"each count between 2 and {ACCOUNTS_LIMIT}")
    return counts


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.bench", description=__doc__.split("\n\n")[0]
    )
    add = parser.add_argument
    add(
        "--duration",
        type=bounded_int(1, DURATION_LIMIT_S),
        default=DEFAULT_DURATION_S,
        help=f"seconds of load per run (default {DEFAULT_DURATION_S})",
    )
    add("--connections", type=bounded_int(1, 1000), default=32, help="wrk connections (default 32)")
    add("--wrk-threads", type=bounded_int(1, 64), default=2, help="wrk threads (default 2)")
    add("--workers", type=bounded_int(1, 64), default=2, help="gunicorn workers (default 2)")
    add(
        "--threads",
        type=bounded_int(1, 256),
        default=8,
        help="gunicorn threads per worker (default 8)",
    )
    add(
        "--modes",
        type=choices(ALL_MODES),
        default=list(ALL_MODES),
        help="comma-separated lock modes (default: all five)",
    )
    add(
        "--operations",
        type=choices(OPERATIONS),
        default=list(OPERATIONS),
        help="comma-separated: deposit, withdraw, transfer (default: all three)",
    )
    add(
        "--accounts",
        type=account_counts,
        default=list(DEFAULT_ACCOUNTS),
        help="comma-separated account counts per run (default 5,1000: hot and spread)",
    )
    add(
        "--stores",
        type=choices(STORES),
        default=None,
        help="sqlite, postgresql (default: sqlite, and postgresql when a URL is known)",
    )
    add(
        "--postgres-url",
        default=os.environ.get(POSTGRES_URL_VARIABLE, ""),
        help=f"PostgreSQL server for a fresh database (default ${POSTGRES_URL_VARIABLE})",
    )
    add(
        "--race-window-ms",
        type=bounded_int(0, 5000),
        default=0,
        help="BANK_RACE_WINDOW_MS in every mode (default 0)",
    )
    add(
        "--amount",
        type=bounded_int(1, 10**6),
        default=DEFAULT_AMOUNT,
        help=f"amount of every operation (default {DEFAULT_AMOUNT})",
    )
    add(
        "--opening-balance",
        type=bounded_int(0, 10**12),
        default=DEFAULT_OPENING_BALANCE,
        help=f"opening balance of every account (default {DEFAULT_OPENING_BALANCE:,})",
    )
    add("--out", type=Path, default=Path("reports"),
        help="directory of bench-<timestamp>.json and .md (default reports)")  # fmt: skip
    arguments = parser.parse_args(argv)
    if arguments.stores is None:
        arguments.stores = ["sqlite", "postgresql"] if arguments.postgres_url else ["sqlite"]
    if "postgresql" in arguments.stores and not arguments.postgres_url:
        parser.error(f"postgresql needs --postgres-url or ${POSTGRES_URL_VARIABLE}")
    return arguments


def execution_order(modes: list[str]) -> list[str]:
    """Safe modes first, so that their audits start from a bank no unsafe mode has touched."""
    return [mode for mode in modes if mode in SAFE_MODES] + [
        mode for mode in modes if mode in UNSAFE_MODES
    ]


def git_commit() -> str:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPOSITORY_ROOT, capture_output=True, text=True,
            timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPOSITORY_ROOT,
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{commit} (with uncommitted changes)" if dirty else commit


def configuration(arguments: argparse.Namespace, wrk: str, stamp: str) -> dict[str, Any]:
    stores = [
        hide_password(arguments.postgres_url) if store == "postgresql" else store
        for store in arguments.stores
    ]
    return {
        "started": stamp,
        "gunicorn": f"{arguments.workers} workers x {arguments.threads} threads (gthread)",
        "workers": arguments.workers,
        "threads": arguments.threads,
        "load tool": wrk_version(wrk),
        "connections": arguments.connections,
        "duration per run (s)": arguments.duration,
        "race window (ms)": arguments.race_window_ms,
        "amount": arguments.amount,
        "opening balance": arguments.opening_balance,
        "accounts per run": ", ".join(map(str, arguments.accounts)),
        "modes": ", ".join(arguments.modes),
        "operations": ", ".join(arguments.operations),
        "stores": ", ".join(stores),
        "git commit": git_commit(),
        "machine cores": os.cpu_count(),
    }


def wrk_version(wrk: str) -> str:
    completed = subprocess.run([wrk, "--version"], capture_output=True, text=True, check=False)
    first_line = (completed.stdout or completed.stderr).splitlines()[:1]
    return " ".join(first_line[0].split()[:2]) if first_line else "wrk"


class Benchmark:
    def __init__(self, arguments: argparse.Namespace, wrk: str, log_directory: Path) -> None:
        self.arguments = arguments
        self.wrk = wrk
        self.log_directory = log_directory
        self.echo_requests_per_second = 0.0

    def load(
        self, url: str, operation: str, accounts: list[int], mode: str, workdir: Path
    ) -> LoadResult:
        arguments = self.arguments
        return run_wrk(
            self.wrk, url, operation=operation, amount=arguments.amount, account_ids=accounts,
            expected_mode=mode, duration_s=arguments.duration, connections=arguments.connections,
            threads=arguments.wrk_threads, workdir=workdir,
        )  # fmt: skip

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

    def measure_store(self, store: str) -> list[RunRecord]:
        with tempfile.TemporaryDirectory(prefix=f"bankrace-bench-{store}-") as workdir_name:
            workdir = Path(workdir_name)
            database: AbstractContextManager[str] = (
                postgres_database(self.arguments.postgres_url, workdir)
                if store == "postgresql"
                else sqlite_database(workdir)
            )
            try:
                with database as database_url:
                    return self.measure_service(store, database_url, workdir)
            except Exception as error:  # any set-up failure is this store's ERROR row
                return [setup_failure(store, error)]

    def measure_service(self, store: str, database_url: str, workdir: Path) -> list[RunRecord]:
        arguments = self.arguments
        token = new_admin_token()
        settings = service_settings(
            database_url, arguments.workers, arguments.threads, arguments.race_window_ms, token
        )
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
        try:
            bank.set_mode(mode, self.arguments.race_window_ms)
            mode_problem = None
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
            if load.mode_mismatches and attempt < RUN_ATTEMPTS:
                bank.confirm_mode(record.mode, arguments.race_window_ms)
                continue
            break
        record.fill_load(load)
        if self.echo_requests_per_second:
            record.ratio_to_echo = record.requests_per_second / self.echo_requests_per_second
        record.fill_judgement(judge(evidence))
        if not load.drained:
            record.problems.append(
                f"{load.unanswered} requests were still unanswered when wrk was stopped"
            )

    def observe(
        self, bank: BenchBank, record: RunRecord, accounts: list[int], *, fresh: bool,
        workdir: Path,
    ) -> tuple[RunEvidence, LoadResult]:  # fmt: skip
        before = bank.balances(accounts)
        audit_before = bank.server_audit()
        load = self.load(bank.base_url, record.operation, accounts, record.mode, workdir / "wrk")
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


def new_stamp(out: Path) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for suffix in ["", *(f"-{number}" for number in range(1, 100))]:
        if not (out / f"bench-{stamp}{suffix}.json").exists():
            return f"{stamp}{suffix}"
    raise RuntimeError(f"cannot name a report under {out}")


def main(argv: list[str] | None = None) -> int:
    started = time.monotonic()
    arguments = parse_arguments(argv)
    wrk = ensure_wrk()
    if wrk is None:
        print("[bench] wrk is not installed and cannot be installed here "
              "(Debian package wrk: apt-get install wrk)", file=sys.stderr)  # fmt: skip
        return 2
    arguments.out.mkdir(parents=True, exist_ok=True)
    stamp = new_stamp(arguments.out)
    log_directory = arguments.out / f"bench-{stamp}-logs"
    settings = configuration(arguments, wrk, stamp)
    benchmark = Benchmark(arguments, wrk, log_directory)
    echo = benchmark.measure_echo()
    announce(echo)
    records = [echo]
    for store in arguments.stores:
        records += benchmark.measure_store(store)
    records.sort(key=report_order(arguments))
    wall_time_s = time.monotonic() - started
    settings["wall time (s)"] = round(wall_time_s, 1)
    json_path = arguments.out / f"bench-{stamp}.json"
    markdown_path = arguments.out / f"bench-{stamp}.md"
    write_json(json_path, records, settings, wall_time_s)
    write_markdown(markdown_path, records, settings)
    print(
        "\n".join(
            ["", *markdown_table(records), "", summary_line(records), *problem_lines(records)]
        )
    )
    print(f"[bench] {json_path} and {markdown_path}, wall time {wall_time_s:.0f} s", flush=True)
    return 1 if any(record.failed for record in records) else 0


if __name__ == "__main__":
    sys.exit(main())
