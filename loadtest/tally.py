"""What the server told one load-test process: every answer, sorted by what it means.

A tally counts, per account, the money the server *acknowledged* moving (2xx),
and, globally, every other kind of answer. Tallies of several Locust worker
processes merge into one (`Tally.merge`) and travel as plain dicts
(`to_dict` / `from_dict`), because Locust's messages carry msgpack data.

Pure: no HTTP, no Locust, no gevent.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from loadtest.hold_tally import HOLD_NOT_PENDING_CODE, HoldTally
from loadtest.scenarios import Operation

# Latency samples kept per tally for the median; the count and maximum stay exact.
LATENCY_SAMPLES_LIMIT = 10_000
# `fenced` (DESIGN §2): this request's lock lease ran out and a newer holder took the account;
# its write changed nothing, and the client may send it again.
STALE_LOCK_CODE = "stale_lock"
# A 503 whose write lost its COMMIT on the way: it may have been applied (the only
# 503 that may have changed something); a repeat with the same Idempotency-Key tells.
OUTCOME_UNKNOWN_CODE = "outcome_unknown"
# Correct refusals (DESIGN §3): the server said no and changed nothing.
REFUSAL_CODES = frozenset(
    {"insufficient_funds", "balance_limit_exceeded", STALE_LOCK_CODE, HOLD_NOT_PENDING_CODE}
)


class Outcome(StrEnum):
    """What an answer means for the money and for the verdict."""

    ACKNOWLEDGED = "acknowledged"  # 2xx: the operation happened
    REFUSED = "refused"  # 409 insufficient_funds / ... / stale_lock / hold_not_pending: correct
    BOUNDED_REFUSAL = "bounded_refusal"  # 503 with Retry-After: nothing changed, honest
    INDETERMINATE = "indeterminate"  # 503 outcome_unknown: honest, but it may have happened
    SERVER_ERROR = "server_error"  # any other 5xx: an anomaly, effect unknown
    UNEXPECTED = "unexpected"  # any other answer (4xx, 3xx): an anomaly, nothing changed
    NO_ANSWER = "no_answer"  # connection error or timeout: an anomaly, effect unknown


ANOMALOUS_OUTCOMES = frozenset({Outcome.SERVER_ERROR, Outcome.UNEXPECTED, Outcome.NO_ANSWER})
UNKNOWN_EFFECT_OUTCOMES = frozenset(
    {Outcome.SERVER_ERROR, Outcome.NO_ANSWER, Outcome.INDETERMINATE}
)


def classify(status: int, code: str | None, retry_after: str | None) -> Outcome:
    """Sort one answer; `status` 0 means no HTTP answer arrived."""
    if status == 0:
        return Outcome.NO_ANSWER
    if 200 <= status < 300:
        return Outcome.ACKNOWLEDGED
    if status == 409 and code in REFUSAL_CODES:
        return Outcome.REFUSED
    if status == 503 and code == OUTCOME_UNKNOWN_CODE:
        return Outcome.INDETERMINATE  # never a refusal: its money is counted as unknown
    if status == 503 and retry_after:
        return Outcome.BOUNDED_REFUSAL
    if status >= 500:
        return Outcome.SERVER_ERROR
    return Outcome.UNEXPECTED


@dataclass(frozen=True)
class Answer:
    """The parts of one HTTP answer the tally needs."""

    status: int
    latency_ms: float
    code: str | None = None
    retry_after: str | None = None
    lock_mode: str | None = None
    # Accounts the server itself acknowledged leaving below zero (balance_after < 0).
    negative_account_ids: tuple[int, ...] = ()

    @property
    def label(self) -> str:
        if self.status == 0:
            return "no answer"
        return f"{self.status} {self.code}" if self.code else str(self.status)


def negative_account_ids(body: Any) -> tuple[int, ...]:
    """Accounts whose acknowledged `balance_after` is negative, from a 2xx body."""
    if not isinstance(body, dict):
        return ()
    legs = body.get("legs")
    entries = legs if isinstance(legs, list) else [body]
    return tuple(
        entry["account_id"]
        for entry in entries
        if isinstance(entry, dict)
        and isinstance(entry.get("balance_after"), int)
        and isinstance(entry.get("account_id"), int)
        and entry["balance_after"] < 0
    )


@dataclass
class AccountTally:
    """Money the server acknowledged moving on one account, and what stayed unknown."""

    credited: int = 0
    debited: int = 0
    acknowledged: dict[str, int] = field(default_factory=dict)  # leg kind -> count
    refusals: int = 0
    negative_acknowledgements: int = 0
    unknown_outcomes: int = 0
    unknown_credit: int = 0  # money that may or may not have arrived
    unknown_debit: int = 0  # money that may or may not have left

    def acknowledge(self, leg_kind: str, delta: int) -> None:
        self.acknowledged[leg_kind] = self.acknowledged.get(leg_kind, 0) + 1
        if delta >= 0:
            self.credited += delta
        else:
            self.debited -= delta

    def merge(self, other: AccountTally) -> None:
        self.credited += other.credited
        self.debited += other.debited
        for leg_kind, count in other.acknowledged.items():
            self.acknowledged[leg_kind] = self.acknowledged.get(leg_kind, 0) + count
        self.refusals += other.refusals
        self.negative_acknowledgements += other.negative_acknowledgements
        self.unknown_outcomes += other.unknown_outcomes
        self.unknown_credit += other.unknown_credit
        self.unknown_debit += other.unknown_debit


def leg_kind(operation: Operation, delta: int) -> str:
    """The journal kind of one effect of an operation (DESIGN §1)."""
    if operation.kind == "transfer":
        return "transfer_in" if delta > 0 else "transfer_out"
    if operation.kind == "capture":
        return "capture"
    return "deposit" if operation.kind == "deposit" else "withdrawal"


@dataclass
class LatencySummary:
    """Count, exact maximum and a bounded sample of latencies of one kind of answer."""

    count: int = 0
    max_ms: float = 0.0
    samples_ms: list[float] = field(default_factory=list)

    def add(self, latency_ms: float) -> None:
        self.count += 1
        self.max_ms = max(self.max_ms, latency_ms)
        if len(self.samples_ms) < LATENCY_SAMPLES_LIMIT:
            self.samples_ms.append(latency_ms)

    def merge(self, other: LatencySummary) -> None:
        self.count += other.count
        self.max_ms = max(self.max_ms, other.max_ms)
        room = LATENCY_SAMPLES_LIMIT - len(self.samples_ms)
        self.samples_ms.extend(other.samples_ms[: max(room, 0)])

    @property
    def median_ms(self) -> float:
        return statistics.median(self.samples_ms) if self.samples_ms else 0.0


@dataclass
class Tally:
    """Everything one or more load-test processes were told, for one run."""

    run_id: str = ""
    accounts: dict[int, AccountTally] = field(default_factory=dict)
    outcomes: dict[str, int] = field(default_factory=dict)  # Outcome -> count
    responses: dict[str, int] = field(default_factory=dict)  # "withdraw 409 code" -> count
    served_by_mode: dict[str, int] = field(default_factory=dict)  # X-Lock-Mode -> count
    lock_timeouts: LatencySummary = field(default_factory=LatencySummary)
    setup_missing: int = 0  # users that never learnt the accounts of the run
    reporters: int = 1  # processes merged into this tally
    retries: int = 0  # requests sent again with the same Idempotency-Key
    replays: int = 0  # answers marked Idempotent-Replayed: the server ran nothing again
    stale_lock_refusals: int = 0  # final answers 409 stale_lock (fenced): nothing written
    stale_lock_retries: int = 0  # 409 stale_lock answers after which the request went again
    holds: HoldTally = field(default_factory=HoldTally)  # the holds scenario's outcomes

    def account(self, account_id: int) -> AccountTally:
        return self.accounts.setdefault(account_id, AccountTally())

    def record(self, operation: Operation, answer: Answer) -> Outcome:
        outcome = classify(answer.status, answer.code, answer.retry_after)
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
        label = f"{operation.kind} {answer.label}"
        self.responses[label] = self.responses.get(label, 0) + 1
        if answer.lock_mode:
            self.served_by_mode[answer.lock_mode] = self.served_by_mode.get(answer.lock_mode, 0) + 1
        if answer.code == "lock_timeout":
            self.lock_timeouts.add(answer.latency_ms)
        if outcome is Outcome.ACKNOWLEDGED:
            for account_id, delta in operation.deltas():
                self.account(account_id).acknowledge(leg_kind(operation, delta), delta)
            for account_id in answer.negative_account_ids:
                self.account(account_id).negative_acknowledgements += 1
        elif outcome is Outcome.REFUSED:
            self.account(operation.account_id).refusals += 1
            if answer.code == STALE_LOCK_CODE:
                self.stale_lock_refusals += 1
        elif outcome in UNKNOWN_EFFECT_OUTCOMES:
            for account_id, delta in operation.deltas():
                account = self.account(account_id)
                account.unknown_outcomes += 1
                if delta >= 0:
                    account.unknown_credit += delta
                else:
                    account.unknown_debit -= delta
        return outcome

    def note_retry(self, operation: Operation, answer: Answer) -> None:
        """An answer after which the same keyed request was sent again (not its outcome)."""
        self.retries += 1
        label = f"{operation.kind} {answer.label} (retried)"
        self.responses[label] = self.responses.get(label, 0) + 1
        if answer.code == "lock_timeout":
            self.lock_timeouts.add(answer.latency_ms)
        if answer.code == STALE_LOCK_CODE:
            self.stale_lock_retries += 1

    def count(self, outcome: Outcome) -> int:
        return self.outcomes.get(outcome, 0)

    def merge(self, other: Tally) -> None:
        if self.run_id and other.run_id and self.run_id != other.run_id:
            raise ValueError(f"cannot merge tallies of runs {self.run_id} and {other.run_id}")
        self.run_id = self.run_id or other.run_id
        for account_id, account in other.accounts.items():
            self.account(account_id).merge(account)
        for target, source in (
            (self.outcomes, other.outcomes),
            (self.responses, other.responses),
            (self.served_by_mode, other.served_by_mode),
        ):
            for key, count in source.items():
                target[key] = target.get(key, 0) + count
        self.lock_timeouts.merge(other.lock_timeouts)
        self.setup_missing += other.setup_missing
        self.reporters += other.reporters
        self.retries += other.retries
        self.replays += other.replays
        self.stale_lock_refusals += other.stale_lock_refusals
        self.stale_lock_retries += other.stale_lock_retries
        self.holds.merge(other.holds)

    def to_dict(self) -> dict[str, Any]:
        """Plain data with string keys only (msgpack and JSON safe)."""
        return {
            "run_id": self.run_id,
            "accounts": {str(key): asdict(value) for key, value in self.accounts.items()},
            "outcomes": {str(key): count for key, count in self.outcomes.items()},
            "responses": dict(self.responses),
            "served_by_mode": dict(self.served_by_mode),
            "lock_timeouts": asdict(self.lock_timeouts),
            "setup_missing": self.setup_missing,
            "reporters": self.reporters,
            "retries": self.retries,
            "replays": self.replays,
            "stale_lock_refusals": self.stale_lock_refusals,
            "stale_lock_retries": self.stale_lock_retries,
            "holds": self.holds.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Tally:
        return cls(
            run_id=str(data["run_id"]),
            accounts={int(key): AccountTally(**value) for key, value in data["accounts"].items()},
            outcomes={str(key): int(count) for key, count in data["outcomes"].items()},
            responses={str(key): int(count) for key, count in data["responses"].items()},
            served_by_mode={str(key): int(count) for key, count in data["served_by_mode"].items()},
            lock_timeouts=LatencySummary(**data["lock_timeouts"]),
            setup_missing=int(data["setup_missing"]),
            reporters=int(data["reporters"]),
            retries=int(data.get("retries", 0)),
            replays=int(data.get("replays", 0)),
            stale_lock_refusals=int(data.get("stale_lock_refusals", 0)),
            stale_lock_retries=int(data.get("stale_lock_retries", 0)),
            holds=HoldTally.from_dict(data.get("holds")),
        )
