"""The envelope: what the bank's common requests reach against the echo app, at a glance.

`make bench` measures this first and prints it first: in one command run, on
the same gunicorn settings (2 workers x 4 threads by default) and the same
wrk load (32 connections, `--envelope-duration` seconds per run, 5 by
default), the echo app's `POST /echo`, then the service with every default on
(logs, metrics, request ids, overload bounds) in locked mode:

- `GET /healthz` (no store at all),
- `GET /accounts/{id}` (one row read),
- locked deposits and locked transfers,
- locked deposits with an `Idempotency-Key` each (their ratio to the unkeyed
  deposits of the same run too),
- on PostgreSQL, locked deposits, when the benchmark has a server.

Each row gives req/s, its ratio to the echo of the same run, p99, the issue's
target and whether it was met, and the per-worker split: the CPU seconds each
gunicorn worker spent during the run (utime + stime from /proc/<pid>/stat of
the master's children), which shows one worker doing most of the work. Every
money run is audited like the benchmark's others (`judge`, loadtest/bench_report.py):
a safe-mode run that broke an invariant is FAIL, never a figure.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loadtest.bench_bank import BenchBank
from loadtest.bench_load import LoadResult
from loadtest.bench_report import RunRecord, cell, judge
from loadtest.bench_runs import EchoProcess, gunicorn_settings, new_admin_token, service_settings
from loadtest.service_process import ServiceProcess

if TYPE_CHECKING:
    from loadtest.bench_runs import Benchmark

ENVELOPE_MODE = "locked"
CLOCK_TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
PROC = Path("/proc")


@dataclass(frozen=True)
class Target:
    """A row's goal: a least ratio (to the echo, or to another row), and perhaps a p99 bound."""

    least_ratio: float
    max_p99_ms: float | None = None
    relative_to: str | None = None  # a row's key; None: the echo

    def describe(self) -> str:
        against = "echo" if self.relative_to is None else ROW_LABELS[self.relative_to]
        text = f">= {self.least_ratio:g} x {against}"
        return text if self.max_p99_ms is None else f"{text}, p99 <= {self.max_p99_ms:g} ms"


@dataclass(frozen=True)
class RowSpec:
    key: str
    store: str  # "-" for the echo, sqlite, postgresql
    operation: str  # a bench.lua operation
    keyed: bool = False
    target: Target | None = None


ROW_LABELS = {
    "echo": "echo (POST /echo)",
    "healthz": "GET /healthz",
    "read": "GET /accounts/{id}",
    "deposit": "locked deposits",
    "transfer": "locked transfers",
    "keyed": "keyed locked deposits",
    "pg-deposit": "locked deposits, PostgreSQL",
}
SQLITE_ROWS = (
    RowSpec("healthz", "sqlite", "healthz", target=Target(0.8)),
    RowSpec("read", "sqlite", "read", target=Target(0.6)),
    RowSpec("deposit", "sqlite", "deposit", target=Target(0.5, max_p99_ms=30)),
    RowSpec("transfer", "sqlite", "transfer", target=Target(0.35)),
    RowSpec("keyed", "sqlite", "deposit", keyed=True, target=Target(0.8, relative_to="deposit")),
)
POSTGRES_ROWS = (
    RowSpec("pg-deposit", "postgresql", "deposit", target=Target(0.35, max_p99_ms=50)),
)


@dataclass
class EnvelopeRow:
    key: str
    label: str
    store: str
    record: RunRecord
    worker_cpu_s: list[float] = field(default_factory=list)
    ratio: float | None = None  # to the echo, or to the row the target names
    target: str = "-"
    met: bool | None = None

    @property
    def failed(self) -> bool:
        return self.record.failed

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["record"] = self.record.to_dict()
        return data


def worker_pids(master_pid: int) -> list[int]:
    """The master's children (gunicorn's workers), from /proc."""
    pids = []
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # exited meanwhile
        if int(fields[1]) == master_pid:
            pids.append(int(entry.name))
    return sorted(pids)


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of a process, in seconds; None once it is gone."""
    try:
        fields = (PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    # After the command's ")": state is field 3 of proc(5), utime 14, stime 15.
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS_PER_SECOND


class WorkerClock:
    """The CPU seconds each worker of one master spends between start() and stop()."""

    def __init__(self, master_pid: int | None) -> None:
        self.master_pid = master_pid
        self.started: dict[int, float] = {}

    def start(self) -> None:
        pids = worker_pids(self.master_pid) if self.master_pid else []
        self.started = {pid: seconds for pid in pids if (seconds := cpu_seconds(pid)) is not None}

    def stop(self) -> list[float]:
        spent = []
        for pid, before in self.started.items():
            after = cpu_seconds(pid)
            if after is not None:
                spent.append(round(after - before, 2))
        return sorted(spent, reverse=True)


def split_cell(worker_cpu_s: Sequence[float]) -> str:
    """`2.1 + 1.9 s (53/47 %)`: each worker's CPU seconds, busiest first, and its share."""
    if not worker_cpu_s:
        return "-"
    total = sum(worker_cpu_s)
    seconds = " + ".join(f"{value:.1f}" for value in worker_cpu_s)
    if total <= 0:
        return f"{seconds} s"
    shares = "/".join(f"{100 * value / total:.0f}" for value in worker_cpu_s)
    return f"{seconds} s ({shares} %)"


def audit_cell(record: RunRecord) -> str:
    """`held` for an audited money run that kept every invariant; `-` where nothing is audited."""
    if record.operation in ("echo", "healthz", "read") and not record.failed:
        return "-"
    return "held" if record.invariants_held and not record.failed else record.verdict


def envelope_table(rows: Sequence[EnvelopeRow]) -> list[str]:
    lines = [
        "| run | req/s | x echo | target | met | p99 ms | worker CPU (split) | audit |",
        "|---|---:|---:|---|---|---:|---|---|",
    ]
    for row in rows:
        record = row.record
        ratio = cell(record.ratio_to_echo, 2)
        if row.ratio is not None and row.ratio != record.ratio_to_echo:
            ratio += f" ({row.ratio:.2f} x unkeyed)"
        met = "-" if row.met is None else ("yes" if row.met else "**no**")
        audit = audit_cell(record)
        lines.append(
            f"| {row.label} | {cell(record.requests_per_second, 0)} | {ratio} | {row.target} "
            f"| {met} | {cell(record.p99_ms)} | {split_cell(row.worker_cpu_s)} | {audit} |"
        )
    return lines


def judge_targets(rows: Sequence[EnvelopeRow], specs: Sequence[RowSpec]) -> None:
    """Fill each row's ratio (to the echo or to its reference row) and whether it met its target."""
    by_key = {row.key: row for row in rows}
    for spec in specs:
        row = by_key.get(spec.key)
        if row is None or spec.target is None:
            continue
        target = spec.target
        row.target = target.describe()
        if target.relative_to is None:
            row.ratio = row.record.ratio_to_echo
        else:
            reference = by_key.get(target.relative_to)
            base = reference.record.requests_per_second if reference else 0.0
            row.ratio = row.record.requests_per_second / base if base else None
        if row.ratio is None or row.record.failed:
            row.met = None
            continue
        p99 = row.record.p99_ms
        row.met = row.ratio >= target.least_ratio and (
            target.max_p99_ms is None or (p99 is not None and p99 <= target.max_p99_ms)
        )


def empty_record(store: str, spec: RowSpec, accounts: int) -> RunRecord:
    return RunRecord(store=store, mode=ENVELOPE_MODE, operation=spec.operation, accounts=accounts)


class Envelope:
    """Measures the envelope's rows with a Benchmark's load and audit."""

    def __init__(self, benchmark: Benchmark, announce: Callable[[str], None]) -> None:
        self.benchmark = benchmark
        self.arguments = benchmark.arguments
        self.announce = announce
        self.echo_requests_per_second = 0.0

    def measure(self) -> list[EnvelopeRow]:
        rows = [self.measure_echo()]
        specs: list[RowSpec] = list(SQLITE_ROWS)
        if "postgresql" in self.arguments.stores:
            specs += POSTGRES_ROWS
        for store in dict.fromkeys(spec.store for spec in specs):
            rows += self.measure_store(store, [spec for spec in specs if spec.store == store])
        judge_targets(rows, specs)
        return rows

    def measure_echo(self) -> EnvelopeRow:
        arguments = self.arguments
        record = RunRecord(store="-", mode="-", operation="echo", accounts=0)
        row = EnvelopeRow("echo", ROW_LABELS["echo"], "-", record)
        settings = gunicorn_settings(arguments.workers, arguments.threads)
        log_path = self.benchmark.log_directory / "envelope-echo-server.log"
        with tempfile.TemporaryDirectory(prefix="bankrace-envelope-echo-") as workdir:
            try:
                with EchoProcess(settings, Path(workdir), log_path) as echo:
                    clock = WorkerClock(echo.process.pid if echo.process else None)
                    clock.start()
                    load = self.load(echo.url, "echo", [], "", Path(workdir), keyed=False)
                    row.worker_cpu_s = clock.stop()
            except Exception as error:  # any failure is this row's ERROR, not the command's end
                record.problems.append(f"echo not measured: {error}")
                self.report(row)
                return row
        record.fill_load(load)
        self.echo_requests_per_second = load.requests_per_second
        record.ratio_to_echo = 1.0 if load.requests_per_second else None
        record.verdict = "CEILING" if load.successes and not record.other else "ERROR"
        self.report(row)
        return row

    def measure_store(self, store: str, specs: Sequence[RowSpec]) -> list[EnvelopeRow]:
        benchmark = self.benchmark
        accounts = self.arguments.envelope_accounts
        rows = [
            EnvelopeRow(spec.key, ROW_LABELS[spec.key], store, empty_record(store, spec, accounts))
            for spec in specs
        ]
        try:
            with benchmark.store_database(store) as (database_url, workdir):
                self.measure_service(store, specs, rows, database_url, workdir)
        except Exception as error:  # a store that cannot be set up: its rows are ERROR
            for row in rows:
                if row.record.verdict == "ERROR" and not row.record.problems:
                    row.record.problems.append(
                        f"{store} not measured: {type(error).__name__}: {error}"
                    )
                    self.report(row)
        return rows

    def measure_service(
        self, store: str, specs: Sequence[RowSpec], rows: list[EnvelopeRow],
        database_url: str, workdir: Path,
    ) -> None:  # fmt: skip
        arguments = self.arguments
        token = new_admin_token()
        settings = service_settings(database_url, arguments.workers, arguments.threads, 0, token)
        settings["BANK_REDIS_URL"] = arguments.redis_url
        log_path = self.benchmark.log_directory / f"envelope-{store}-server.log"
        with ServiceProcess(settings, workdir, log_path) as service:
            bank = BenchBank(service.url, token)
            try:
                accounts = bank.open_accounts(
                    arguments.envelope_accounts, "envelope", arguments.opening_balance
                )
                for spec, row in zip(specs, rows, strict=True):
                    clock = WorkerClock(service.process.pid if service.process else None)
                    self.measure_row(spec, row, bank, accounts, workdir, clock)
                    self.report(row)
            finally:
                bank.close()

    def measure_row(
        self, spec: RowSpec, row: EnvelopeRow, bank: BenchBank, accounts: list[int],
        workdir: Path, clock: WorkerClock,
    ) -> None:  # fmt: skip
        record = row.record
        run_dir = workdir / f"envelope-{spec.key}"
        try:
            if spec.operation in ("healthz", "read"):
                clock.start()
                load = self.load(bank.base_url, spec.operation, accounts, "", run_dir,
                                 keyed=False)  # fmt: skip
                row.worker_cpu_s = clock.stop()
                record.fill_load(load)
                record.verdict = "PASS" if load.successes and not record.other else "ERROR"
                if record.verdict == "ERROR":
                    record.problems.append(f"answers other than 200: {load.statuses}")
            else:
                clock.start()
                evidence, load = self.benchmark.observe(
                    bank, record, accounts, fresh=False, workdir=run_dir, keyed=spec.keyed,
                    duration_s=self.arguments.envelope_duration,
                )  # fmt: skip
                row.worker_cpu_s = clock.stop()
                record.fill_load(load)
                record.fill_judgement(judge(evidence))
        except Exception as error:  # one row's failure is that row's ERROR, not the command's
            record.verdict = "ERROR"
            record.problems = [f"not measured: {error}"]
            return
        if self.echo_requests_per_second:
            record.ratio_to_echo = record.requests_per_second / self.echo_requests_per_second

    def load(
        self, url: str, operation: str, accounts: list[int], mode: str, workdir: Path,
        *, keyed: bool,
    ) -> LoadResult:  # fmt: skip
        return self.benchmark.load(
            url, operation, accounts, mode, workdir,
            duration_s=self.arguments.envelope_duration, keyed=keyed,
        )  # fmt: skip

    def report(self, row: EnvelopeRow) -> None:
        record = row.record
        if record.verdict == "ERROR":
            self.announce(f"[envelope] {row.label}: ERROR {record.problems}")
            return
        ratio = "" if record.ratio_to_echo is None else f" ({record.ratio_to_echo:.2f} x echo)"
        self.announce(
            f"[envelope] {row.label}: {record.requests_per_second:,.0f} req/s{ratio}, "
            f"p99 {cell(record.p99_ms)} ms, workers {split_cell(row.worker_cpu_s)}, "
            f"{record.verdict}"
        )
