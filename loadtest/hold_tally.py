"""What the server acknowledged about holds, and the hold invariants judged from it.

The `holds` load scenario (DESIGN §3 "Holds (two-phase)") places holds,
captures, voids and lets them expire, racing requests on the same hold. A
`HoldTally` keeps, per hold, every acknowledged outcome (from the answers
only: black-box), and per account every read of `held` and `available`.
`judge_holds` turns it, with the final reads, into `HoldFindings`:

- double capture: two captures of one hold both acknowledged 201 (the extra
  captures are counted);
- capture after void: a capture 201 and a void 200 on the same hold;
- capture after expiry: a capture 201 whose request left at or after the
  hold's `expires_at` as the server stated it (plus `EXPIRY_CLOCK_MARGIN_S`
  for the clocks of client and server), so that whatever the server checked,
  it checked after the expiry;
- over-hold: a read of the account (during the run or at the end) showing
  `available` below 0 or `held` above `balance`;
- held drift: at the end, once quiet, the server's `held` against the sum of
  the holds the client knows to be pending and unexpired (acknowledged
  placed, no capture or void acknowledged); holds whose fate is unknown
  (no answer, a 5xx) or that expire while the read was under way (between
  sending it and its answer, widened by the margin) widen what counts as
  explained, as unknown money does in the race report.

Each is a broken invariant in a safe mode. Hold ids are the server's, so
the tallies of several Locust processes merge by id.

Pure: no HTTP, no Locust, no gevent.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from loadtest.scenarios import Operation

# How far the client's and the server's clocks may disagree: none on one host (the load
# test's usual place), a few ms between hosts kept by NTP.
EXPIRY_CLOCK_MARGIN_S = 0.05
HOLD_NOT_PENDING_CODE = "hold_not_pending"


def server_time(text: Any) -> float | None:
    """Seconds since the epoch of an ISO 8601 timestamp the server sent; None if unreadable."""
    if not isinstance(text, str):
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        return None  # a time without a zone says nothing the client can compare
    return moment.timestamp()


@dataclass
class HoldRecord:
    """One hold the server acknowledged placing, and every outcome acknowledged on it."""

    account_id: int
    amount: int
    expires_at: float  # seconds since the epoch, as the server stated it
    captured: list[int] = field(default_factory=list)  # amounts of the captures answered 201
    voids: int = 0  # voids answered 200
    captures_after_expiry: int = 0
    not_pending_refusals: int = 0  # 409 hold_not_pending: correct refusals
    unknown_outcomes: int = 0  # captures or voids whose effect nobody knows

    @property
    def final_outcomes(self) -> int:
        return len(self.captured) + self.voids

    def pending_at(self, moment: float) -> bool:
        """Pending as far as the client knows: no final outcome and not yet expired."""
        return self.final_outcomes == 0 and self.expires_at > moment

    def merge(self, other: HoldRecord) -> None:
        self.captured.extend(other.captured)
        self.voids += other.voids
        self.captures_after_expiry += other.captures_after_expiry
        self.not_pending_refusals += other.not_pending_refusals
        self.unknown_outcomes += other.unknown_outcomes


@dataclass
class AccountHolds:
    """Hold placements on one account and what its reads showed."""

    placed: int = 0
    refused: int = 0  # 409 insufficient_funds: more than `available`
    unknown_placements: int = 0
    unknown_placement_money: int = 0  # holds that may or may not exist
    reads: int = 0
    over_hold_reads: int = 0  # available < 0 or held > balance
    lowest_available: int | None = None

    def merge(self, other: AccountHolds) -> None:
        self.placed += other.placed
        self.refused += other.refused
        self.unknown_placements += other.unknown_placements
        self.unknown_placement_money += other.unknown_placement_money
        self.reads += other.reads
        self.over_hold_reads += other.over_hold_reads
        self.lowest_available = lowest(self.lowest_available, other.lowest_available)


def add_count(counts: dict[int, dict[str, int]], account_id: int, name: str, count: int) -> None:
    account = counts.setdefault(account_id, {})
    account[name] = account.get(name, 0) + count


def lowest(first: int | None, second: int | None) -> int | None:
    values = [value for value in (first, second) if value is not None]
    return min(values) if values else None


@dataclass
class HoldTally:
    """Every hold answer of one or more load-test processes, for one run."""

    holds: dict[int, HoldRecord] = field(default_factory=dict)
    accounts: dict[int, AccountHolds] = field(default_factory=dict)
    orphan_answers: int = 0  # a capture or void answer on a hold this tally never saw placed

    def account(self, account_id: int) -> AccountHolds:
        return self.accounts.setdefault(account_id, AccountHolds())

    def note(self, operation: Operation, outcome: str, body: Any, sent_at: float) -> None:
        """One final answer to a hold, capture or void (`outcome`: a `tally.Outcome`).

        `sent_at` is when the request first left (time.time()): a retry with the
        same Idempotency-Key runs, or replays, what was decided after that.
        """
        acknowledged = outcome == "acknowledged"
        unknown = outcome in ("server_error", "no_answer", "indeterminate")
        if operation.kind == "hold":
            self.note_placement(operation, acknowledged, unknown, outcome == "refused", body)
            return
        record = self.holds.get(operation.hold_id or 0)
        if record is None:
            self.orphan_answers += 1
            return
        if unknown:
            record.unknown_outcomes += 1
        elif acknowledged and operation.kind == "void":
            record.voids += 1
        elif acknowledged:
            record.captured.append(operation.amount)
            if sent_at >= record.expires_at + EXPIRY_CLOCK_MARGIN_S:
                record.captures_after_expiry += 1
        elif isinstance(body, dict) and body.get("code") == HOLD_NOT_PENDING_CODE:
            record.not_pending_refusals += 1

    def note_placement(
        self, operation: Operation, acknowledged: bool, unknown: bool, refused: bool, body: Any
    ) -> None:
        account = self.account(operation.account_id)
        if unknown:
            account.unknown_placements += 1
            account.unknown_placement_money += operation.amount
            return
        if refused:
            account.refused += 1
            return
        if not acknowledged:
            return  # an unexpected answer: the tally counts it as an anomaly
        hold_id = body.get("id") if isinstance(body, dict) else None
        expires_at = server_time(body.get("expires_at")) if isinstance(body, dict) else None
        if not isinstance(hold_id, int) or expires_at is None:
            # Placed, but the client cannot follow it: count its money as unknown.
            account.unknown_placements += 1
            account.unknown_placement_money += operation.amount
            return
        account.placed += 1
        self.holds[hold_id] = HoldRecord(operation.account_id, operation.amount, expires_at)

    def note_read(self, account_id: int, body: Any) -> None:
        """A GET /accounts/{id} answer: is `available` below 0, or `held` above `balance`?"""
        if not isinstance(body, dict):
            return
        balance, held, available = body.get("balance"), body.get("held"), body.get("available")
        if not (isinstance(balance, int) and isinstance(held, int) and isinstance(available, int)):
            return  # a service without holds
        account = self.account(account_id)
        account.reads += 1
        account.lowest_available = lowest(account.lowest_available, available)
        if available < 0 or held > balance:
            account.over_hold_reads += 1

    def live_counts(self) -> dict[int, dict[str, int]]:
        """Per account, the hold anomalies seen so far (held drift needs a quiet end: not here)."""
        counts: dict[int, dict[str, int]] = {}
        for account_id, account in self.accounts.items():
            if account.over_hold_reads:
                add_count(counts, account_id, "over_hold_reads", account.over_hold_reads)
        for record in self.holds.values():
            if len(record.captured) > 1:
                add_count(counts, record.account_id, "double_captures", len(record.captured) - 1)
            if record.captured and record.voids:
                add_count(counts, record.account_id, "captures_after_void", 1)
            if record.captures_after_expiry:
                add_count(
                    counts, record.account_id, "captures_after_expiry", record.captures_after_expiry
                )
        return counts

    def merge(self, other: HoldTally) -> None:
        for hold_id, record in other.holds.items():
            if hold_id in self.holds:
                self.holds[hold_id].merge(record)
            else:
                self.holds[hold_id] = HoldRecord(**asdict(record))
        for account_id, account in other.accounts.items():
            self.account(account_id).merge(account)
        self.orphan_answers += other.orphan_answers

    def to_dict(self) -> dict[str, Any]:
        """Plain data with string keys only (msgpack and JSON safe)."""
        return {
            "holds": {str(key): asdict(value) for key, value in self.holds.items()},
            "accounts": {str(key): asdict(value) for key, value in self.accounts.items()},
            "orphan_answers": self.orphan_answers,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> HoldTally:
        if not data:
            return cls()
        return cls(
            holds={int(key): HoldRecord(**value) for key, value in data["holds"].items()},
            accounts={int(key): AccountHolds(**value) for key, value in data["accounts"].items()},
            orphan_answers=int(data.get("orphan_answers", 0)),
        )


@dataclass(frozen=True)
class FinalHoldRead:
    """An account's `balance`, `held` and `available` read after the run, and when."""

    balance: int
    held: int
    available: int
    read_at: float  # time.time() when the answer arrived
    sent_at: float | None = None  # time.time() when the request left; None: read_at


@dataclass
class AccountHoldReport:
    account_id: int
    placed: int
    refused: int
    held: int | None  # the server's, at the end; None: not read (no holds on the service)
    available: int | None
    known_pending: int  # money of the holds the client knows pending and unexpired
    uncertain: int  # money whose hold state the client cannot know
    held_drift: int  # held - known_pending beyond `uncertain`; 0: explained
    over_hold_reads: int
    lowest_available: int | None


@dataclass
class HoldFindings:
    """The hold invariants of one run (DESIGN §3), from the acknowledgements."""

    holds_placed: int
    placements_refused: int
    captures: int
    captured_money: int
    voids: int
    not_pending_refusals: int
    unknown_outcomes: int
    double_captures: int  # captures acknowledged beyond the first, over all holds
    double_captured_money: int
    captures_after_void: int  # holds with both a capture 201 and a void 200
    captures_after_expiry: int
    over_hold_reads: int
    lowest_available: int | None
    held_drift_accounts: int
    held_drift_money: int
    accounts: list[AccountHoldReport]

    @property
    def anomalies(self) -> int:
        """Every broken hold invariant, one count (the comparison's and the live view's cell)."""
        return (
            self.double_captures
            + self.captures_after_void
            + self.captures_after_expiry
            + self.over_hold_reads
            + self.held_drift_accounts
        )

    def problems(self) -> list[str]:
        problems = []
        if self.double_captures:
            problems.append(
                f"{self.double_captures} double captures: a hold captured more than once "
                f"({self.double_captured_money} money taken beyond the first capture)"
            )
        if self.captures_after_void:
            problems.append(
                f"{self.captures_after_void} holds both captured and voided (two final outcomes)"
            )
        if self.captures_after_expiry:
            problems.append(
                f"{self.captures_after_expiry} captures acknowledged after the hold expired"
            )
        if self.over_hold_reads:
            problems.append(
                f"{self.over_hold_reads} over-holds: reads showing available below 0 "
                f"(lowest {self.lowest_available}) or held above the balance"
            )
        if self.held_drift_accounts:
            problems.append(
                f"held drift on {self.held_drift_accounts} accounts: the server's held is "
                f"{self.held_drift_money} away from the holds acknowledged pending"
            )
        return problems


def judge_holds(
    tally: HoldTally, account_ids: list[int], final_reads: Mapping[int, FinalHoldRead | None]
) -> HoldFindings:
    """Judge the run's holds on `account_ids`, with each account's read after the run."""
    records = list(tally.holds.values())
    reports = [
        account_report(tally, account_id, final_reads.get(account_id)) for account_id in account_ids
    ]
    double_captured = [record.captured[1:] for record in records if len(record.captured) > 1]
    drifting = [report for report in reports if report.held_drift]
    return HoldFindings(
        holds_placed=sum(report.placed for report in reports),
        placements_refused=sum(report.refused for report in reports),
        captures=sum(len(record.captured) for record in records),
        captured_money=sum(sum(record.captured) for record in records),
        voids=sum(record.voids for record in records),
        not_pending_refusals=sum(record.not_pending_refusals for record in records),
        unknown_outcomes=sum(record.unknown_outcomes for record in records)
        + sum(account.unknown_placements for account in tally.accounts.values()),
        double_captures=sum(len(extra) for extra in double_captured),
        double_captured_money=sum(sum(extra) for extra in double_captured),
        captures_after_void=sum(1 for record in records if record.captured and record.voids),
        captures_after_expiry=sum(record.captures_after_expiry for record in records),
        over_hold_reads=sum(report.over_hold_reads for report in reports),
        lowest_available=min(
            (r.lowest_available for r in reports if r.lowest_available is not None), default=None
        ),
        held_drift_accounts=len(drifting),
        held_drift_money=sum(abs(report.held_drift) for report in drifting),
        accounts=reports,
    )


def account_report(
    tally: HoldTally, account_id: int, final: FinalHoldRead | None
) -> AccountHoldReport:
    account = tally.accounts.get(account_id, AccountHolds())
    over_hold_reads = account.over_hold_reads
    lowest_available = account.lowest_available
    known_pending = uncertain = held_drift = 0
    if final is not None:
        if final.available < 0 or final.held > final.balance:
            over_hold_reads += 1
        lowest_available = lowest(lowest_available, final.available)
        uncertain = account.unknown_placement_money
        for record in tally.holds.values():
            if record.account_id != account_id or record.final_outcomes:
                continue
            # The server judged expiry at some moment between sending the read and its answer.
            earliest = final.read_at if final.sent_at is None else final.sent_at
            expires_during_the_read = (
                earliest - EXPIRY_CLOCK_MARGIN_S
                < record.expires_at
                <= final.read_at + EXPIRY_CLOCK_MARGIN_S
            )
            if record.unknown_outcomes or expires_during_the_read:
                uncertain += record.amount  # it may or may not still count in `held`
            elif record.pending_at(final.read_at):
                known_pending += record.amount
        difference = final.held - known_pending
        # Beyond [0, uncertain]: held money no acknowledgement explains, or missing.
        held_drift = min(difference, 0) + max(difference - uncertain, 0)
    return AccountHoldReport(
        account_id=account_id,
        placed=account.placed,
        refused=account.refused,
        held=None if final is None else final.held,
        available=None if final is None else final.available,
        known_pending=known_pending,
        uncertain=uncertain,
        held_drift=held_drift,
        over_hold_reads=over_hold_reads,
        lowest_available=lowest_available,
    )
