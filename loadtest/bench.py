"""The benchmark: the bank's write path against the framework's own ceiling.

    python -m loadtest.bench [--duration 1] [--connections 32] [--workers 2] [--threads 8]
                             [--modes locked,atomic,...] [--operations deposit,withdraw,transfer]
                             [--accounts 5,1000] [--stores sqlite,postgresql]
                             [--postgres-url URL] [--race-window-ms 0] [--out reports]
                             [--load-tool auto|wrk|locust] (--help for the rest)

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
that lost money in a safe mode is a failure, never a result); 2 when
--load-tool wrk was asked for and wrk cannot be had (auto falls back to Locust).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import requests

from loadtest.bank_http import BankError
from loadtest.bench_bank import BenchBank
from loadtest.bench_envelope import Envelope, EnvelopeRow, envelope_table
from loadtest.bench_judge import RunEvidence, judge
from loadtest.bench_locust import run_locust
from loadtest.bench_options import configuration, parse_arguments
from loadtest.bench_report import (
    OPERATION_LABELS,
    RunRecord,
    failure_lines,
    markdown_table,
    note_lines,
    summary_line,
    write_json,
    write_markdown,
)
from loadtest.bench_targets import (
    EchoProcess,
    gunicorn_settings,
    new_admin_token,
    postgres_database,
    service_settings,
    sqlite_database,
)
from loadtest.bench_wrk import LoadError, LoadResult, ensure_wrk, run_wrk
from loadtest.lock_modes import REDIS_MODES, SAFE_MODES, UNSAFE_MODES
from loadtest.redis_target import LEAVE_OUT_HINT, redis_problem
from loadtest.service_process import REPOSITORY_ROOT, ServiceProcess

DATA_DIRECTORY = REPOSITORY_ROOT / "var"
FRESH_ACCOUNTS_LIMIT = 20  # sets this small are opened anew for every run
RUN_ATTEMPTS = 2  # a run served partly by the previous mode is measured once more
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

    def load(
        self, url: str, operation: str, accounts: list[int], mode: str, workdir: Path,
        *, duration_s: int | None = None, keyed: bool | None = None,
    ) -> LoadResult:  # fmt: skip
        arguments = self.arguments
        duration_s = arguments.duration if duration_s is None else duration_s
        keyed = arguments.idempotency_keys if keyed is None else keyed
        if self.wrk is None:
            return run_locust(
                url, operation=operation, amount=arguments.amount, account_ids=accounts,
                expected_mode=mode, duration_s=duration_s,
                connections=arguments.connections, workdir=workdir,
            )  # fmt: skip
        return run_wrk(
            self.wrk, url, operation=operation, amount=arguments.amount, account_ids=accounts,
            expected_mode=mode, duration_s=duration_s, connections=arguments.connections,
            threads=arguments.wrk_threads, workdir=workdir, keyed=keyed,
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


def new_stamp(out: Path) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for suffix in ["", *(f"-{number}" for number in range(1, 100))]:
        if not (out / f"bench-{stamp}{suffix}.json").exists():
            return f"{stamp}{suffix}"
    raise RuntimeError(f"cannot name a report under {out}")


def main(argv: list[str] | None = None) -> int:
    started = time.monotonic()
    arguments = parse_arguments(argv)
    wrk = None if arguments.load_tool == "locust" else ensure_wrk()
    if wrk is None and arguments.load_tool == "wrk":
        print("[bench] wrk is not installed and cannot be installed here "
              "(Debian package wrk: apt-get install wrk)", file=sys.stderr)  # fmt: skip
        return 2
    if wrk is None:
        print("[bench] load tool: Locust FastHttpUser (wrk cannot be had)", flush=True)
    arguments.out.mkdir(parents=True, exist_ok=True)
    stamp = new_stamp(arguments.out)
    log_directory = arguments.out / f"bench-{stamp}-logs"
    settings = configuration(arguments, wrk, stamp)
    benchmark = Benchmark(arguments, wrk, log_directory)
    envelope = measure_envelope(benchmark, arguments, wrk)
    records = []
    if not arguments.envelope_only:
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
    envelope_lines = envelope_table(envelope) if envelope else []
    envelope_failed = any(row.failed for row in envelope)
    write_json(json_path, records, settings, wall_time_s,
               [row.to_dict() for row in envelope], envelope_failed)  # fmt: skip
    write_markdown(markdown_path, records, settings, envelope_lines)
    if envelope_lines:
        print("\n".join(["", "The envelope (ratios to the echo of this run):", *envelope_lines]))
        for row in envelope:
            for problem in row.record.problems if row.failed else ():
                print(f"- {row.label} ({row.record.verdict}): {problem}")
    if records:
        losses = sum(1 for record in records if record.verdict == "LOST (unsafe)")
        print("\n".join(["", *markdown_table(records), "", summary_line(records)]))
        for line in [*failure_lines(records), *note_lines(records)]:
            print(line)
        print(f"[bench] unsafe modes lost money in {losses} run(s), as expected; see the report")
    print(f"[bench] {json_path} and {markdown_path}, wall time {wall_time_s:.0f} s", flush=True)
    failed = envelope_failed or any(record.failed for record in records)
    return 1 if failed else 0


def measure_envelope(
    benchmark: Benchmark, arguments: argparse.Namespace, wrk: str | None
) -> list[EnvelopeRow]:
    """The envelope's rows, printed as they come; none without wrk (its GET loads are wrk's)."""
    if arguments.no_envelope:
        return []
    if wrk is None:
        print("[bench] the envelope needs wrk: skipped", flush=True)
        return []
    return Envelope(benchmark, lambda line: print(line, flush=True)).measure()


if __name__ == "__main__":
    sys.exit(main())
