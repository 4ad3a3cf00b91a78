"""The arithmetic of the live Race view: what the page shows, from the tally and the audits.

While a run is under way, some operations are in flight: the server may have
applied them and not answered yet. The view therefore takes two samples of
the tally (`LiveSample`), one before it reads the server's audits and one
after, and treats every operation started by the second sample and not yet
answered at the first as "maybe applied" — the same way the race report
treats an operation whose effect is unknown. What falls outside that margin
is unexplained, and never a false alarm from timing.

Per hot account (definitions of `loadtest.reconcile`, live):
- expected: opening balance + acknowledged credits - acknowledged debits (tally);
- stored, journal, drift, chain breaks, lowest journal balance: the server's
  `GET /accounts/{id}/audit`, one consistent snapshot;
- money lost: the larger of |drift| (the stored balance against the server's own
  journal, exact while requests fly, because a journal row and its balance
  are written together) and |stored - expected| beyond the in-flight margin;
  lost updates = money lost / amount, rounded up, as in the race report;
- overdraft: how far below zero the expected, stored or journal balance went;
- hold anomalies (the holds scenario): double captures, holds captured and
  voided, captures after expiry and over-hold reads so far, from the answers
  (`loadtest.hold_tally`); held drift needs a quiet end and is in the report only.

Pure: no HTTP, no Locust, no gevent, no Flask.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from loadtest.hold_tally import add_count
from loadtest.lock_modes import UNSAFE_MODES
from loadtest.reconcile import RunSetup, outside
from loadtest.scenarios import Operation
from loadtest.tally import AccountTally, Outcome, Tally

# Points kept for the chart: at two samples a second, the last ten minutes.
HISTORY_POINTS_LIMIT = 1200


@dataclass
class InFlight:
    """Money of the operations one process started and settled, per account, cumulative.

    An operation is started before its request leaves and settled once its
    answer (or its failure) is in the tally; the difference is in flight.
    """

    started_credit: dict[int, int] = field(default_factory=dict)
    started_debit: dict[int, int] = field(default_factory=dict)
    settled_credit: dict[int, int] = field(default_factory=dict)
    settled_debit: dict[int, int] = field(default_factory=dict)

    def start(self, operation: Operation) -> None:
        add_deltas(self.started_credit, self.started_debit, operation)

    def settle(self, operation: Operation) -> None:
        add_deltas(self.settled_credit, self.settled_debit, operation)

    def copy(self) -> InFlight:
        return InFlight(
            dict(self.started_credit),
            dict(self.started_debit),
            dict(self.settled_credit),
            dict(self.settled_debit),
        )

    def merge(self, other: InFlight) -> None:
        for target, source in zip(self.counters(), other.counters(), strict=True):
            for account_id, money in source.items():
                target[account_id] = target.get(account_id, 0) + money

    def counters(self) -> tuple[dict[int, int], ...]:
        return (self.started_credit, self.started_debit, self.settled_credit, self.settled_debit)

    def to_dict(self) -> dict[str, dict[str, int]]:
        return {
            name: {str(key): value for key, value in counter.items()}
            for name, counter in asdict(self).items()
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Mapping[str, int]]) -> InFlight:
        return cls(
            **{
                name: {int(key): int(value) for key, value in counter.items()}
                for name, counter in data.items()
            }
        )


def add_deltas(credits: dict[int, int], debits: dict[int, int], operation: Operation) -> None:
    for account_id, delta in operation.deltas():
        if delta >= 0:
            credits[account_id] = credits.get(account_id, 0) + delta
        else:
            debits[account_id] = debits.get(account_id, 0) - delta


@dataclass
class LiveSample:
    """One or more processes' tally and operations in flight, at one moment."""

    run_id: str
    taken_at: float  # time.time() of the sample (the latest one, when merged)
    accounts: dict[int, AccountTally] = field(default_factory=dict)
    outcomes: dict[str, int] = field(default_factory=dict)
    served_by_mode: dict[str, int] = field(default_factory=dict)
    flight: InFlight = field(default_factory=InFlight)
    hold_counts: dict[int, dict[str, int]] = field(default_factory=dict)  # account -> kind -> n

    @classmethod
    def of(cls, tally: Tally, flight: InFlight, taken_at: float) -> LiveSample:
        """A copy of a process's tally, safe to keep while the tally goes on counting."""
        return cls(
            run_id=tally.run_id,
            taken_at=taken_at,
            accounts={key: AccountTally(**asdict(value)) for key, value in tally.accounts.items()},
            outcomes={str(key): count for key, count in tally.outcomes.items()},
            served_by_mode=dict(tally.served_by_mode),
            flight=flight.copy(),
            hold_counts=tally.holds.live_counts(),
        )

    def count(self, outcome: Outcome) -> int:
        return self.outcomes.get(outcome, 0)

    def merge(self, other: LiveSample) -> None:
        self.run_id = self.run_id or other.run_id
        self.taken_at = max(self.taken_at, other.taken_at)
        for account_id, account in other.accounts.items():
            self.accounts.setdefault(account_id, AccountTally()).merge(account)
        pairs = ((self.outcomes, other.outcomes), (self.served_by_mode, other.served_by_mode))
        for target, source in pairs:
            for key, count in source.items():
                target[key] = target.get(key, 0) + count
        self.flight.merge(other.flight)
        for account_id, counts in other.hold_counts.items():
            for name, count in counts.items():
                add_count(self.hold_counts, account_id, name, count)

    def to_dict(self) -> dict[str, Any]:
        """Plain data with string keys only (msgpack and JSON safe)."""
        return {
            "run_id": self.run_id,
            "taken_at": self.taken_at,
            "accounts": {str(key): asdict(value) for key, value in self.accounts.items()},
            "outcomes": dict(self.outcomes),
            "served_by_mode": dict(self.served_by_mode),
            "flight": self.flight.to_dict(),
            "hold_counts": {str(key): dict(value) for key, value in self.hold_counts.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LiveSample:
        return cls(
            run_id=str(data["run_id"]),
            taken_at=float(data["taken_at"]),
            accounts={int(key): AccountTally(**value) for key, value in data["accounts"].items()},
            outcomes={str(key): int(count) for key, count in data["outcomes"].items()},
            served_by_mode={str(key): int(count) for key, count in data["served_by_mode"].items()},
            flight=InFlight.from_dict(data["flight"]),
            hold_counts={
                int(key): {str(name): int(count) for name, count in value.items()}
                for key, value in (data.get("hold_counts") or {}).items()
            },
        )


def merged(samples: Iterable[LiveSample], run_id: str, taken_at: float) -> LiveSample:
    total = LiveSample(run_id=run_id, taken_at=taken_at)
    for sample in samples:
        total.merge(sample)
    return total


@dataclass(frozen=True)
class AccountView:
    """One hot account in the Race view."""

    account_id: int
    opening_balance: int
    expected: int
    stored: int | None  # None: the audit could not be read this time
    journal: int | None
    drift: int | None
    difference: int | None  # stored - expected
    maybe_credit: int  # money that may have arrived without an answer yet
    maybe_debit: int  # money that may have left without an answer yet
    money_lost: int
    lost_updates: int
    chain_breaks: int
    overdraft: int  # how far below zero a balance went; 0: never
    negative_acknowledgements: int
    journal_disagreement: int  # journal - expected beyond the margin: the journal misses answers
    hold_anomalies: int = 0  # the holds scenario's anomalies on this account so far


def account_view(
    account_id: int,
    opening_balance: int,
    amount: int,
    before: LiveSample,
    after: LiveSample,
    audit: Mapping[str, Any] | None,
) -> AccountView:
    """Judge one account from the tally before and after reading its audit."""
    account = before.accounts.get(account_id, AccountTally())
    expected = opening_balance + account.credited - account.debited
    maybe_credit = account.unknown_credit + max(
        after.flight.started_credit.get(account_id, 0)
        - before.flight.settled_credit.get(account_id, 0),
        0,
    )
    maybe_debit = account.unknown_debit + max(
        after.flight.started_debit.get(account_id, 0)
        - before.flight.settled_debit.get(account_id, 0),
        0,
    )
    stored = journal = drift = difference = None
    money_lost = journal_disagreement = chain_breaks = lowest_journal = 0
    if audit is not None:
        stored, journal = int(audit["balance"]), int(audit["journal_balance"])
        drift, difference = stored - journal, stored - expected
        chain_breaks = int(audit.get("chain_breaks") or 0)
        lowest_journal = int(audit.get("lowest_journal_balance") or 0)
        unexplained = outside(difference, -maybe_debit, maybe_credit)
        money_lost = max(abs(drift), abs(unexplained))
        journal_disagreement = outside(journal - expected, -maybe_debit, maybe_credit)
    overdraft = max(0, -expected, -(stored or 0), -lowest_journal)
    return AccountView(
        account_id=account_id,
        opening_balance=opening_balance,
        expected=expected,
        stored=stored,
        journal=journal,
        drift=drift,
        difference=difference,
        maybe_credit=maybe_credit,
        maybe_debit=maybe_debit,
        money_lost=money_lost,
        lost_updates=math.ceil(money_lost / amount),
        chain_breaks=chain_breaks,
        overdraft=overdraft,
        negative_acknowledgements=account.negative_acknowledgements,
        journal_disagreement=journal_disagreement,
        hold_anomalies=sum(before.hold_counts.get(account_id, {}).values()),
    )


def money_created(accounts: list[AccountView]) -> int:
    """Σ stored - Σ expected that no in-flight operation explains; else the journal's Σ drift.

    Both are lower bounds of the money lost updates created (+) or destroyed (-);
    the larger in size wins, as for lost updates.
    """
    readable = [view for view in accounts if view.difference is not None]
    drift = sum(view.drift or 0 for view in readable)
    unexplained = outside(
        sum(view.difference or 0 for view in readable),
        -sum(view.maybe_debit for view in readable),
        sum(view.maybe_credit for view in readable),
    )
    return unexplained if abs(unexplained) > abs(drift) else drift


def race_totals(accounts: list[AccountView], before: LiveSample) -> dict[str, Any]:
    return {
        "acknowledged": before.count(Outcome.ACKNOWLEDGED),
        "refused": before.count(Outcome.REFUSED),
        "bounded_refusals": before.count(Outcome.BOUNDED_REFUSAL),
        "anomalies": sum(
            before.count(outcome)
            for outcome in (Outcome.SERVER_ERROR, Outcome.UNEXPECTED, Outcome.NO_ANSWER)
        ),
        "lost_updates": sum(view.lost_updates for view in accounts),
        "money_lost": sum(view.money_lost for view in accounts),
        "money_created": money_created(accounts),
        "chain_breaks": sum(view.chain_breaks for view in accounts),
        "overdrafted_accounts": sum(1 for view in accounts if view.overdraft),
        "overdraft_money": sum(view.overdraft for view in accounts),
        "maybe_in_flight": sum(view.maybe_credit + view.maybe_debit for view in accounts),
        "unreadable_accounts": [view.account_id for view in accounts if view.stored is None],
        "journal_disagreements": [
            view.account_id for view in accounts if view.journal_disagreement
        ],
        "served_by_mode": dict(before.served_by_mode),
        "holds": hold_totals(before),
    }


def hold_totals(sample: LiveSample) -> dict[str, int] | None:
    """Hold anomalies over every account, by kind, and their sum; None when no hold was seen."""
    if not sample.hold_counts:
        return None
    totals = {
        name: 0
        for name in (
            "double_captures",
            "captures_after_void",
            "captures_after_expiry",
            "over_hold_reads",
        )
    }
    for counts in sample.hold_counts.values():
        for name, count in counts.items():
            totals[name] = totals.get(name, 0) + count
    return {**totals, "anomalies": sum(totals.values())}


def race_accounts(
    setup: RunSetup,
    before: LiveSample,
    after: LiveSample,
    audits: Mapping[int, Mapping[str, Any] | None],
) -> list[AccountView]:
    return [
        account_view(account_id, opening, setup.amount, before, after, audits.get(account_id))
        for account_id, opening in sorted(setup.opening_balances.items())
    ]


@dataclass(frozen=True)
class HistoryPoint:
    seconds: float  # since the first point of the run
    lock_mode: str  # GET /mode at this point
    race_window_ms: int | None
    served_in: tuple[str, ...]  # the modes that served the answers since the point before
    acknowledged: int
    lost_updates: int
    chain_breaks: int
    money_created: int


class History:
    """The run's points for the chart, bounded; and its stretches of one mode.

    Right after a mode change, requests sent under the old mode still answer,
    and every worker of the service takes up to a second to follow (DESIGN §3);
    a request's write is visible in the audit a moment before its answer
    arrives. So a point is *settled* in its mode only when the answers since
    the point before it and until the point after it were all served in that
    mode; the others make a "switching" stretch, blamed on neither mode.
    """

    def __init__(self, run_id: str = "", limit: int = HISTORY_POINTS_LIMIT) -> None:
        self.run_id = run_id
        self.started_at: float | None = None
        self.served_by_mode: dict[str, int] = {}
        self.points: deque[HistoryPoint] = deque(maxlen=limit)

    def add(
        self, taken_at: float, mode: Mapping[str, Any], totals: Mapping[str, Any]
    ) -> HistoryPoint:
        if self.started_at is None:
            self.started_at = taken_at
        served = dict(totals["served_by_mode"])
        served_in = sorted(
            name for name, count in served.items() if count > self.served_by_mode.get(name, 0)
        )
        self.served_by_mode = served
        point = HistoryPoint(
            seconds=round(taken_at - self.started_at, 3),
            lock_mode=str(mode.get("lock_mode", "unknown")),
            race_window_ms=mode.get("race_window_ms"),
            served_in=tuple(served_in),
            acknowledged=int(totals["acknowledged"]),
            lost_updates=int(totals["lost_updates"]),
            chain_breaks=int(totals["chain_breaks"]),
            money_created=int(totals["money_created"]),
        )
        self.points.append(point)
        return point

    def settled(self) -> list[bool]:
        """Per point: were the answers on both sides of it all served in its mode?"""
        points = list(self.points)
        return [
            set(point.served_in) <= {point.lock_mode}
            and (index + 1 == len(points) or set(points[index + 1].served_in) <= {point.lock_mode})
            for index, point in enumerate(points)
        ]

    def segments(self) -> list[dict[str, Any]]:
        """Stretches of one settled mode and window, and the switches between, with rates.

        A settled stretch is measured from its own first point; a switch from
        the last point before it, since the change began in between.
        """
        stretches: list[tuple[tuple[Any, ...], list[HistoryPoint]]] = []
        for point, settled in zip(self.points, self.settled(), strict=True):
            key = (point.lock_mode, point.race_window_ms) if settled else ("switching",)
            if not stretches or stretches[-1][0] != key:
                stretches.append((key, []))
            stretches[-1][1].append(point)
        described = []
        for index, (key, stretch) in enumerate(stretches):
            settled = key != ("switching",)
            measured_from = stretch[0] if settled or index == 0 else stretches[index - 1][1][-1]
            described.append(describe_stretch(settled, measured_from, stretch))
        return described

    def to_list(self) -> list[dict[str, Any]]:
        return [asdict(point) for point in self.points]


def describe_stretch(
    settled: bool, measured_from: HistoryPoint, stretch: list[HistoryPoint]
) -> dict[str, Any]:
    """A stretch's mode (for a switch: the mode it switched to) and its change per second."""
    last = stretch[-1]
    seconds = last.seconds - measured_from.seconds

    def per_second(change: int) -> float | None:
        return round(change / seconds, 1) if seconds > 0 else None

    lost = last.lost_updates - measured_from.lost_updates
    acknowledged = last.acknowledged - measured_from.acknowledged
    return {
        "lock_mode": last.lock_mode,
        "race_window_ms": last.race_window_ms,
        "settled": settled,
        "unsafe": last.lock_mode in UNSAFE_MODES,
        "from_seconds": stretch[0].seconds,
        "to_seconds": last.seconds,
        "lost_updates": lost,
        "acknowledged": acknowledged,
        "lost_updates_per_second": per_second(lost),
        "acknowledged_per_second": per_second(acknowledged),
    }


def server_counts(exposition: str) -> dict[str, Any]:
    """Operations by lock mode and outcome, and refusals by code, summed over the workers."""
    operations: dict[str, dict[str, int]] = {}
    problems: dict[str, int] = {}
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.name == "bankrace_operations_total":
                by_outcome = operations.setdefault(sample.labels.get("lock_mode", "?"), {})
                outcome = sample.labels.get("outcome", "?")
                by_outcome[outcome] = by_outcome.get(outcome, 0) + int(sample.value)
            elif sample.name == "bankrace_http_problems_total":
                code = sample.labels.get("code", "?")
                problems[code] = problems.get(code, 0) + int(sample.value)
    return {"operations": operations, "problems": problems}
