"""Each run's record, the audit that judges it, and the two reports.

The audit (`judge`): a run's evidence is what the load counted (acknowledged
credits and debits per account, parsed from the 201 answers; requests whose
outcome is unknown) and what the bank says before and after (balances,
`GET /audit`, and for fresh accounts `GET /accounts/{id}/audit`). The judgement:

- no lost update: each account moved by exactly amount x (acknowledged
  credits - acknowledged debits), give or take the unknown outcomes (a
  request wrk sent whose answer never came may or may not have run);
- no overdraft: no balance below zero, no new negative account in the audit;
- conservation: transfers leave the total unchanged (whatever the unknown
  outcomes: every transfer conserves); deposits and withdrawals change it by
  exactly the acknowledged count x amount, within the unknown outcomes;
- the server's own audit: no new chain break, drift or inconsistent account.

In a safe mode any broken invariant makes the run a FAILURE, never a result.
In an unsafe mode the losses are the measurement: lost updates =
Σ |expected - stored| / amount. Anomalies (a 5xx without Retry-After, an
unexpected status, an answer served by another mode, an unreadable account)
fail a run in any mode: they mean the figures cannot be trusted.

The record (`RunRecord`): one per run, the echo ceiling first, with its
figures and its verdict. The reports: bench-<timestamp>.md, whose table is
what a person reads, and bench-<timestamp>.json, what a later run or a chart
compares with. Pure: no HTTP, no processes; formatting and files only.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from loadtest.bench_load import LoadResult
from loadtest.lock_modes import UNSAFE_MODES
from loadtest.reconcile import outside

OPERATIONS = ("deposit", "withdraw", "transfer")
# Counters of GET /audit that a run must never raise in a safe mode.
AUDIT_COUNTERS = ("chain_breaks", "inconsistent_accounts", "negative_accounts")


@dataclass(frozen=True)
class RunEvidence:
    operation: str
    amount: int
    before: Mapping[int, int | None]
    after: Mapping[int, int | None]
    credits: Mapping[int, int]  # acknowledged credits per account (201 answers)
    debits: Mapping[int, int]
    acknowledged: int  # 201 answers
    unknown_outcomes: int  # sent but never answered, plus 5xx without Retry-After
    server_errors: int = 0  # 5xx other than 503 with Retry-After
    unexpected: int = 0  # answers other than 201, 409, 503 with Retry-After, 5xx
    unparsed: int = 0  # 201 answers whose account could not be read
    mode_mismatches: int = 0  # answers whose X-Lock-Mode was not the run's mode
    audit_before: Mapping[str, Any] | None = None  # GET /audit
    audit_after: Mapping[str, Any] | None = None
    account_audits: Mapping[int, Mapping[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class Judgement:
    broken: tuple[str, ...]  # invariants broken
    anomalies: tuple[str, ...]  # why the figures cannot be trusted
    lost_updates: int
    money_lost: int
    money_unexplained: int  # Σ after - Σ before beyond the acknowledged movement

    @property
    def invariants_held(self) -> bool:
        return not self.broken

    def failed(self, mode: str) -> bool:
        """A failure of the benchmark: anomalies anywhere, broken invariants in a safe mode."""
        return bool(self.anomalies) or (mode not in UNSAFE_MODES and bool(self.broken))


def unknown_window(operation: str, unknown_money: int) -> tuple[int, int]:
    """How far unanswered requests may have moved one account's balance."""
    low = -unknown_money if operation in ("withdraw", "transfer") else 0
    high = unknown_money if operation in ("deposit", "transfer") else 0
    return low, high


def judge(evidence: RunEvidence) -> Judgement:
    broken: list[str] = []
    anomalies = anomalies_of(evidence)
    amount = evidence.amount
    unknown_money = evidence.unknown_outcomes * amount
    low, high = unknown_window(evidence.operation, unknown_money)
    money_lost = 0
    overdrawn = []
    for account, before in sorted(evidence.before.items()):
        after = evidence.after.get(account)
        if before is None or after is None:
            continue
        if after < 0:
            overdrawn.append(account)
        moved = amount * (evidence.credits.get(account, 0) - evidence.debits.get(account, 0))
        money_lost += abs(outside(after - before - moved, low, high))
    lost_updates = math.ceil(money_lost / amount)
    if lost_updates:
        broken.append(f"{lost_updates} lost updates ({money_lost} money off the acknowledgements)")
    if overdrawn:
        broken.append(f"negative balance on accounts {overdrawn[:10]}")
    money_unexplained = conservation_gap(evidence, unknown_money)
    if money_unexplained:
        broken.append(
            f"conservation broken: the total moved {money_unexplained:+d} beyond the "
            "acknowledged operations"
        )
    broken.extend(audit_findings(evidence))
    return Judgement(tuple(broken), anomalies, lost_updates, money_lost, money_unexplained)


def conservation_gap(evidence: RunEvidence, unknown_money: int) -> int:
    readable = [
        account
        for account, before in evidence.before.items()
        if before is not None and evidence.after.get(account) is not None
    ]
    total_before = sum(evidence.before[account] or 0 for account in readable)
    total_after = sum(evidence.after[account] or 0 for account in readable)
    moved = evidence.amount * (sum(evidence.credits.values()) - sum(evidence.debits.values()))
    if evidence.operation == "transfer":
        return total_after - total_before  # every transfer conserves, answered or not
    low, high = unknown_window(evidence.operation, unknown_money)
    return outside(total_after - total_before - moved, low, high)


def audit_findings(evidence: RunEvidence) -> list[str]:
    findings = []
    before, after = evidence.audit_before, evidence.audit_after
    if before is not None and after is not None:
        for counter in AUDIT_COUNTERS:
            raised = int(after.get(counter) or 0) - int(before.get(counter) or 0)
            if raised > 0:
                findings.append(f"the server's audit counts {raised} more {counter}")
        drifted = int(after.get("drift") or 0) - int(before.get("drift") or 0)
        if drifted:
            findings.append(f"the server's audit: balances drifted {drifted:+d} from the journal")
    inconsistent = sorted(
        account for account, audit in evidence.account_audits.items() if not audit["consistent"]
    )
    if inconsistent:
        findings.append(f"the server's audit finds accounts {inconsistent[:10]} inconsistent")
    return findings


def anomalies_of(evidence: RunEvidence) -> tuple[str, ...]:
    anomalies = []
    unreadable = sorted(
        account
        for account in evidence.before
        if evidence.before[account] is None or evidence.after.get(account) is None
    )
    if unreadable:
        anomalies.append(f"could not read the balances of accounts {unreadable[:10]}")
    if evidence.audit_before is not None and evidence.audit_after is None:
        anomalies.append("could not read GET /audit after the run")
    if evidence.server_errors:
        anomalies.append(f"{evidence.server_errors} server errors (5xx without Retry-After)")
    if evidence.unexpected:
        anomalies.append(f"{evidence.unexpected} unexpected answers")
    if evidence.unparsed:
        anomalies.append(f"{evidence.unparsed} acknowledgements named no account")
    if evidence.mode_mismatches:
        anomalies.append(f"{evidence.mode_mismatches} answers served by another lock mode")
    counted = sum(evidence.credits.values()) + sum(evidence.debits.values())
    legs = 2 if evidence.operation == "transfer" else 1
    if not evidence.unparsed and counted != legs * evidence.acknowledged:
        anomalies.append(
            f"{evidence.acknowledged} acknowledgements but {counted} account movements counted"
        )
    return tuple(anomalies)


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


def new_stamp(out: Path) -> str:
    """The reports' timestamp: bench-<stamp>.json names no report already in `out`."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for suffix in ["", *(f"-{number}" for number in range(1, 100))]:
        if not (out / f"bench-{stamp}{suffix}.json").exists():
            return f"{stamp}{suffix}"
    raise RuntimeError(f"cannot name a report under {out}")


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
