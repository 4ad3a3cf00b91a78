"""What `loadtest.audit_scale` measures with, and how it prints it.

Wall time and the process's peak resident-memory growth around a call
(`measured`), atomic deposits timed alone and while an audit runs in
another thread (`writes_during`), and the Markdown table of the results.
Timings are printed, never judged.
"""

from __future__ import annotations

import os
import resource
import statistics
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TypeVar

from loadtest.audit_scale_bank import LOCK_MODE
from service.domain import Leg, TransactionKind
from service.stores.base import LegWrite, Store

T = TypeVar("T")

RSS_SAMPLE_INTERVAL_SECONDS = 0.001
# Writes timed around an audit: a bound on count and on time, whichever comes first.
WRITES_BASELINE_COUNT = 50
WRITES_DURING_AUDIT_MAX = 2000
WRITE_PHASE_DEADLINE_SECONDS = 60


def resident_bytes() -> int:
    """This process's resident set size now (Linux /proc; peak so far elsewhere)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@dataclass
class Measured:
    wall_ms: float = 0.0
    rss_growth_bytes: int = 0


@contextmanager
def measured() -> Iterator[Measured]:
    """Wall time and peak resident-memory growth of the block (sampled every millisecond)."""
    result = Measured()
    start_bytes = resident_bytes()
    peak = [start_bytes]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(RSS_SAMPLE_INTERVAL_SECONDS):
            peak[0] = max(peak[0], resident_bytes())

    sampler = threading.Thread(target=sample, name="rss-sampler", daemon=True)
    sampler.start()
    started = time.perf_counter()
    try:
        yield result
    finally:
        result.wall_ms = (time.perf_counter() - started) * 1000
        done.set()
        sampler.join()
        result.rss_growth_bytes = max(peak[0], resident_bytes()) - start_bytes


@dataclass
class Row:
    store: str
    journal_rows: int
    measurement: str
    wall_ms: float | None
    rss_growth_bytes: int | None
    verdict: str
    correct: bool = True


@dataclass
class WriteWaits:
    store: str
    during_audit: list[float] = field(default_factory=list)
    baseline: list[float] = field(default_factory=list)
    audits: int = 0
    note: str = ""


def timed_call(call: Callable[[], T]) -> tuple[T, float]:
    started = time.perf_counter()
    value = call()
    return value, (time.perf_counter() - started) * 1000


def deposit_one(store: Store, account_id: int) -> float:
    """One atomic deposit of 1; its latency in ms."""
    leg = Leg(account_id, TransactionKind.DEPOSIT, 1)
    return timed_call(lambda: store.write_legs([LegWrite(leg)], LOCK_MODE))[1]


def writes_during(store: Store, account_id: int, audit: Callable[[], object]) -> WriteWaits:
    """Deposits timed with no audit, then while `audit` runs in another thread (bounded)."""
    waits = WriteWaits(store="")
    waits.baseline = [deposit_one(store, account_id) for _ in range(WRITES_BASELINE_COUNT)]
    outcome: list[BaseException] = []

    def run_audit() -> None:
        try:
            audit()
        except BaseException as error:  # reported by the caller, never swallowed
            outcome.append(error)

    auditor = threading.Thread(target=run_audit, name="auditor", daemon=True)
    deadline = time.monotonic() + WRITE_PHASE_DEADLINE_SECONDS
    auditor.start()
    while (
        auditor.is_alive()
        and len(waits.during_audit) < WRITES_DURING_AUDIT_MAX
        and time.monotonic() < deadline
    ):
        waits.during_audit.append(deposit_one(store, account_id))
    auditor.join(WRITE_PHASE_DEADLINE_SECONDS)
    waits.audits = 1
    if outcome:
        raise outcome[0]
    return waits


# --------------------------------------------------------------------------- report


def mebibytes(size: int | None) -> str:
    return "" if size is None else f"{size / 2**20:.1f}"


def milliseconds(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:,.3f}" if value < 10 else f"{value:,.0f}"


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def report(rows: Sequence[Row], waits: Sequence[WriteWaits]) -> str:
    lines = [
        "| store | journal rows | measurement | wall ms | RSS growth MiB | result |",
        "|---|---:|---|---:|---:|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row.store} | {row.journal_rows:,} | {row.measurement} | "
            f"{milliseconds(row.wall_ms)} | {mebibytes(row.rss_growth_bytes)} | {row.verdict} |"
        )
    lines += [
        "",
        "Writes (atomic deposits of 1) while an audit runs, against the same writes alone:",
        "",
        "| store | writes during audit | audits | median ms | p99 ms | max ms "
        "| alone: median ms | alone: max ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for wait in waits:
        during = wait.during_audit or [float("nan")]
        lines.append(
            f"| {wait.store} | {len(wait.during_audit):,} | {wait.audits:,} | "
            f"{statistics.median(during):.3f} | {percentile(during, 0.99):.3f} | "
            f"{max(during):.3f} | {statistics.median(wait.baseline):.3f} | "
            f"{max(wait.baseline):.3f} |"
        )
    lines += [f"{wait.store}: {wait.note}" for wait in waits if wait.note]
    return "\n".join(lines)
