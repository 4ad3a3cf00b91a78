"""The benchmark's records and its two reports: bench-<timestamp>.json and .md.

One `RunRecord` per run (the echo ceiling is the first); the markdown table
is what a person reads, the JSON what a later run or a chart compares with.
Pure: formatting and files only.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from loadtest.bench_judge import Judgement
from loadtest.bench_wrk import LoadResult
from loadtest.lock_modes import UNSAFE_MODES

OPERATION_LABELS = {
    "echo": "echo",
    "deposit": "deposits",
    "withdraw": "withdrawals",
    "transfer": "transfers",
    "setup": "set-up",
    "healthz": "GET /healthz",
    "read": "reads",
}


@dataclass
class RunRecord:
    store: str  # sqlite, postgresql; "-" for the echo ceiling
    mode: str
    operation: str
    accounts: int
    requests_per_second: float = 0.0
    p50_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None
    ok_2xx: int = 0
    refused_409: int = 0
    retry_503: int = 0  # 503 with Retry-After: an honest refusal
    other: int = 0  # every other answer (5xx without Retry-After, 4xx, ...)
    socket_errors: int = 0
    unknown_outcomes: int = 0
    ratio_to_echo: float | None = None
    invariants_held: bool | None = None  # None: not audited (echo) or not measured
    lost_updates: int = 0
    money_unexplained: int = 0
    verdict: str = "ERROR"  # PASS, FAIL, LOST (unsafe mode), ERROR, CEILING
    problems: list[str] = field(default_factory=list)
    attempts: int = 1
    served_modes: dict[str, int] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return self.verdict in ("FAIL", "ERROR")

    def fill_load(self, load: LoadResult) -> None:
        self.requests_per_second = load.requests_per_second
        self.p50_ms, self.p99_ms, self.max_ms = load.p50_ms, load.p99_ms, load.max_ms
        self.ok_2xx = load.successes
        self.refused_409 = load.refusals_409
        self.retry_503 = load.retry_after_503
        self.other = sum(load.statuses.values()) - self.ok_2xx - self.refused_409 - self.retry_503
        self.socket_errors = sum(load.socket_errors.values())
        self.unknown_outcomes = load.unanswered
        self.served_modes = dict(load.served_modes)

    def fill_judgement(self, judgement: Judgement) -> None:
        self.invariants_held = judgement.invariants_held
        self.lost_updates = judgement.lost_updates
        self.money_unexplained = judgement.money_unexplained
        self.problems = [*judgement.broken, *judgement.anomalies]
        if judgement.failed(self.mode):
            self.verdict = "FAIL"
        elif judgement.broken:
            self.verdict = "LOST (unsafe)"
        else:
            self.verdict = "PASS"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["unsafe_mode"] = self.mode in UNSAFE_MODES
        return data


def cell(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def yes_no(value: bool | None) -> str:
    return "-" if value is None else ("yes" if value else "**no**")


def markdown_table(records: Sequence[RunRecord]) -> list[str]:
    lines = [
        "| store | mode | operation | accounts | req/s | x echo | p50 ms | p99 ms | max ms "
        "| 2xx | 409 | 503 | other | socket err | invariants held | lost updates | verdict |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---|",
    ]
    for record in records:
        lines.append(
            f"| {record.store} | {record.mode} | {OPERATION_LABELS[record.operation]} "
            f"| {record.accounts:,} | {cell(record.requests_per_second, 0)} "
            f"| {cell(record.ratio_to_echo, 2)} | {cell(record.p50_ms)} | {cell(record.p99_ms)} "
            f"| {cell(record.max_ms)} | {record.ok_2xx:,} | {record.refused_409:,} "
            f"| {record.retry_503:,} | {record.other:,} | {record.socket_errors:,} "
            f"| {yes_no(record.invariants_held)} | {record.lost_updates:,} | {record.verdict} |"
        )
    return lines


def run_label(record: RunRecord) -> str:
    return (
        f"{record.store} {record.mode} {OPERATION_LABELS[record.operation]} "
        f"on {record.accounts:,} accounts"
    )


def failure_lines(records: Sequence[RunRecord]) -> list[str]:
    """Every finding of every failed run, one line each."""
    return [
        f"- {run_label(record)} ({record.verdict}): {problem}"
        for record in records
        if record.failed
        for problem in record.problems
    ]


def loss_lines(records: Sequence[RunRecord]) -> list[str]:
    """One line per unsafe-mode run that lost money: the demonstration, not a failure."""
    return [
        f"- {run_label(record)}: {'; '.join(record.problems)}"
        for record in records
        if record.verdict == "LOST (unsafe)"
    ]


def note_lines(records: Sequence[RunRecord]) -> list[str]:
    """Findings of passing runs (requests left unanswered when the load stopped)."""
    return [
        f"- {run_label(record)}: {problem}"
        for record in records
        if record.verdict in ("PASS", "CEILING")
        for problem in record.problems
    ]


def summary_line(records: Sequence[RunRecord]) -> str:
    failed = [record for record in records if record.failed]
    if failed:
        return (
            f"**{len(failed)} run(s) FAILED**: see the problems below; these figures are no result."
        )
    return "Every safe-mode run kept every invariant."


def write_markdown(
    path: Path,
    records: Sequence[RunRecord],
    configuration: Mapping[str, Any],
    envelope: Sequence[str] = (),
) -> None:
    """The report; `envelope` is the envelope's table (loadtest/bench_envelope.py), first."""
    lines = ["# bankrace benchmark", ""]
    lines += [f"- {key}: {value}" for key, value in configuration.items()]
    if envelope:
        lines += ["", "## The envelope", "", *envelope, "", "## Every mode", ""]
    lines += ["", summary_line(records), "", *markdown_table(records)]
    for title, section in (
        ("Failures", failure_lines(records)),
        ("What the unsafe modes lost", loss_lines(records)),
        ("Notes", note_lines(records)),
    ):
        if section:
            lines += ["", f"## {title}", "", *section]
    lines += ["", READING_NOTE]
    path.write_text("\n".join(lines) + "\n")


def write_json(
    path: Path,
    records: Sequence[RunRecord],
    configuration: Mapping[str, Any],
    wall_time_s: float,
    envelope: Sequence[Mapping[str, Any]] = (),
    envelope_failed: bool = False,
) -> None:
    document = {
        "configuration": dict(configuration),
        "wall_time_s": round(wall_time_s, 1),
        "passed": not envelope_failed and not any(record.failed for record in records),
        "envelope": [dict(row) for row in envelope],
        "runs": [record.to_dict() for record in records],
    }
    path.write_text(json.dumps(document, indent=2) + "\n")


READING_NOTE = """\
How to read it: req/s counts the answers that arrived within the run's
duration; "x echo" divides it by the echo app's req/s on the same gunicorn
settings in the same benchmark. Latencies are wrk's (with its correction for
coordinated omission). 409 is a correct refusal (insufficient funds, or in
fenced a stale lock's write refused), 503 an honest one (with Retry-After);
"other" counts every other answer. After each run the balances and the
server's audits are compared with the acknowledged operations: a safe mode
(locked, optimistic, atomic, fenced) that breaks an invariant is FAIL, never
a result; unsafe modes (unlocked, process-lock, redis-lock) that lose money
show LOST and the lost updates (|expected - stored| / amount).
See docs/benchmark.md."""
