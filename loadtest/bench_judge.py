"""The audit of one benchmark run: did the bank keep the money invariants?

A run's evidence is what the load counted (acknowledged credits and debits
per account, parsed from the 201 answers; requests whose outcome is unknown)
and what the bank says before and after (balances, `GET /audit`, and for
fresh accounts `GET /accounts/{id}/audit`). The judgement:

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

Pure: no HTTP, no processes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

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
