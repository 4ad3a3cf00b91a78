"""The race report: what the server acknowledged versus what it stored.

`reconcile` compares, per account, the balance the acknowledged operations
imply (opening + deposits - withdrawals ± transfer legs) with the balance the
server reports, reads the server's own audit, and names every broken
invariant. `render_text` turns the result into the report a person reads.

Definitions (printed with every report):
- expected balance: opening balance + acknowledged credits - acknowledged debits.
- lost updates: money lost is |actual - expected| per account; every operation
  moves the same fixed amount, so the count is money lost ÷ amount (rounded up).
  Lost updates that cancel out in a sum are still caught by the server's journal
  chain check (`chain_breaks`).
- overdraft: acknowledged outflows beyond the funds — the expected balance, the
  stored balance or the journal's running balance went below zero, or the
  server acknowledged a negative `balance_after`.
- money created (+) / destroyed (-): Σ actual - Σ expected over the run's accounts.
  Transfers add nothing to Σ expected, so any non-zero value broke conservation
  (or hides lost deposits and withdrawals, which are listed per account).
- Operations whose effect is unknown (a 5xx without Retry-After, no answer)
  widen what counts as explained; they are anomalies in their own right.
- holds (the holds scenario): double captures, captures after a void or after
  expiry, over-holds (available below 0) and held drift, as
  `loadtest.hold_tally` defines them; a capture is a debit like a withdrawal.

Pure: no HTTP, no Locust, no gevent.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from loadtest.hold_tally import FinalHoldRead, HoldFindings, judge_holds
from loadtest.tally import AccountTally, Outcome, Tally

CREDIT_KINDS = frozenset({"open", "deposit", "transfer_in"})
DEBIT_KINDS = frozenset({"withdrawal", "transfer_out", "capture"})


@dataclass(frozen=True)
class RunSetup:
    """The accounts one run opened and how it drives them; shared with every worker."""

    run_id: str
    scenario: str
    amount: int
    opening_balances: dict[int, int]
    host: str = ""
    mode: dict[str, Any] = field(default_factory=dict)  # GET /mode when the run started

    @property
    def account_ids(self) -> list[int]:
        return sorted(self.opening_balances)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["opening_balances"] = {str(key): value for key, value in self.opening_balances.items()}
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunSetup:
        return cls(
            run_id=str(data["run_id"]),
            scenario=str(data["scenario"]),
            amount=int(data["amount"]),
            opening_balances={
                int(key): int(value) for key, value in data["opening_balances"].items()
            },
            host=str(data.get("host", "")),
            mode=dict(data.get("mode") or {}),
        )


@dataclass(frozen=True)
class JournalScan:
    """An account's journal replayed in id order by the client."""

    entries: int
    balance: int
    lowest_balance: int
    chain_breaks: int
    complete: bool = True


def scan_journal(entries: Iterable[Mapping[str, Any]], complete: bool = True) -> JournalScan:
    """Replay journal entries (any order) serially: running balance, its lowest, chain breaks."""
    ordered = sorted(entries, key=lambda entry: int(entry["id"]))
    running_balance = 0
    lowest_balance = 0
    chain_breaks = 0
    previous_balance_after = 0
    for entry in ordered:
        kind, amount = entry["kind"], int(entry["amount"])
        if kind not in CREDIT_KINDS and kind not in DEBIT_KINDS:
            raise ValueError(f"unknown journal kind {kind!r}")
        signed_amount = amount if kind in CREDIT_KINDS else -amount
        running_balance += signed_amount
        lowest_balance = min(lowest_balance, running_balance)
        if int(entry["balance_after"]) != previous_balance_after + signed_amount:
            chain_breaks += 1
        previous_balance_after = int(entry["balance_after"])
    return JournalScan(len(ordered), running_balance, lowest_balance, chain_breaks, complete)


@dataclass(frozen=True)
class AccountObservation:
    """What the server says about one account after the run."""

    account_id: int
    balance: int | None  # None: GET /accounts/{id} failed
    audit: Mapping[str, Any] | None = None  # GET /accounts/{id}/audit
    journal: JournalScan | None = None  # GET /accounts/{id}/transactions, replayed
    error: str | None = None
    holds: FinalHoldRead | None = None  # held and available, when the service has holds


@dataclass
class AccountReport:
    account_id: int
    opening_balance: int
    expected_balance: int
    actual_balance: int | None
    difference: int  # actual - expected
    lost_updates: int
    money_lost: int
    acknowledged: dict[str, int]
    refusals: int
    unknown_outcomes: int
    overdraft_money: int
    overdraft_reasons: list[str]
    journal_mismatch: int  # server journal balance - expected, beyond unknown outcomes
    server_journal_balance: int | None
    server_drift: int | None
    server_chain_breaks: int
    server_consistent: bool | None
    journal_lowest_balance: int | None
    # Journal entries beyond the opening, the acknowledged legs and the legs of
    # requests whose outcome is unknown: an operation applied more than once.
    extra_journal_entries: int = 0


@dataclass
class Reconciliation:
    run_id: str
    scenario: str
    host: str
    lock_mode: str
    race_window_ms: int | None
    amount: int
    accounts: list[AccountReport]
    acknowledged_operations: int
    refusals: int
    bounded_refusals: int
    server_errors: int
    unexpected_responses: int
    no_answers: int
    responses: dict[str, int]
    served_by_mode: dict[str, int]
    lost_updates: int
    money_lost: int
    credits_lost: int  # acknowledged money in that the balance does not show
    debits_lost: int  # acknowledged money out that the balance still shows
    server_chain_breaks: int
    overdrafts: int  # accounts overdrafted
    overdraft_money: int
    total_expected: int
    total_actual: int
    money_created: int  # Σ actual - Σ expected; negative means destroyed
    conservation_broken: bool
    lock_timeouts: int
    lock_timeout_median_ms: float
    lock_timeout_max_ms: float
    server_audit: dict[str, Any] | None
    reporters: int
    expected_reporters: int
    problems: list[str]
    retries: int = 0
    replays: int = 0
    applied_twice: int = 0
    stale_lock_refusals: int = 0  # final 409 stale_lock answers (fenced), within `refusals`
    stale_lock_retries: int = 0  # 409 stale_lock answers whose request was sent again
    outcome_unknown: int = 0  # final 503 outcome_unknown: may have been applied (unknown money)
    holds: HoldFindings | None = None  # the holds scenario (or any run that placed holds)

    @property
    def passed(self) -> bool:
        return not self.problems

    @property
    def verdict(self) -> str:
        return "PASS" if self.passed else "FAIL"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["passed"] = self.passed
        data["verdict"] = self.verdict
        data["hold_anomalies"] = 0 if self.holds is None else self.holds.anomalies
        return data


def outside(value: int, low: int, high: int) -> int:
    """How far `value` lies outside [low, high]; 0 inside."""
    if value < low:
        return value - low
    if value > high:
        return value - high
    return 0


def overdraft_findings(
    expected_balance: int, observation: AccountObservation, account: AccountTally
) -> tuple[int, list[str]]:
    """How much an account was overdrawn, and the evidence."""
    reasons: list[str] = []
    depths = [0]
    if expected_balance < 0:
        reasons.append(f"acknowledged outflows exceed its funds by {-expected_balance}")
        depths.append(-expected_balance)
    if observation.balance is not None and observation.balance < 0:
        reasons.append(f"stored balance is {observation.balance}")
        depths.append(-observation.balance)
    if account.negative_acknowledgements:
        reasons.append(f"{account.negative_acknowledgements} answers had balance_after below zero")
    journal = observation.journal
    if journal is not None and journal.lowest_balance < 0:
        reasons.append(f"its journal's running balance fell to {journal.lowest_balance}")
        depths.append(-journal.lowest_balance)
    audit = observation.audit
    if (
        journal is None
        and audit is not None
        and audit.get("consistent") is False
        and not audit.get("drift")
        and not audit.get("chain_breaks")
    ):
        # consistent = drift 0, no chain break, journal never below 0: only the last can fail.
        reasons.append("the server's audit says its journal went below zero")
    return max(depths), reasons


def reconcile_account(
    account_id: int,
    opening_balance: int,
    amount: int,
    account: AccountTally,
    observation: AccountObservation,
) -> AccountReport:
    expected_balance = opening_balance + account.credited - account.debited
    audit = observation.audit or {}
    low, high = -account.unknown_debit, account.unknown_credit
    difference = 0 if observation.balance is None else observation.balance - expected_balance
    unexplained = outside(difference, low, high)
    money_lost = abs(unexplained)
    server_journal_balance = audit.get("journal_balance")
    journal_mismatch = (
        0
        if server_journal_balance is None
        else outside(int(server_journal_balance) - expected_balance, low, high)
    )
    overdraft_money, overdraft_reasons = overdraft_findings(expected_balance, observation, account)
    extra_journal_entries = 0
    if observation.journal is not None and observation.journal.complete:
        accounted = (
            (1 if opening_balance > 0 else 0)
            + sum(account.acknowledged.values())
            + account.unknown_outcomes
        )
        extra_journal_entries = max(0, observation.journal.entries - accounted)
    return AccountReport(
        account_id=account_id,
        opening_balance=opening_balance,
        expected_balance=expected_balance,
        actual_balance=observation.balance,
        difference=difference,
        lost_updates=math.ceil(money_lost / amount),
        money_lost=money_lost,
        acknowledged=dict(account.acknowledged),
        refusals=account.refusals,
        unknown_outcomes=account.unknown_outcomes,
        overdraft_money=overdraft_money,
        overdraft_reasons=overdraft_reasons,
        journal_mismatch=journal_mismatch,
        server_journal_balance=server_journal_balance,
        server_drift=audit.get("drift"),
        server_chain_breaks=int(audit.get("chain_breaks") or 0),
        server_consistent=audit.get("consistent"),
        journal_lowest_balance=(
            None if observation.journal is None else observation.journal.lowest_balance
        ),
        extra_journal_entries=extra_journal_entries,
    )


def unobserved(account_id: int) -> AccountObservation:
    return AccountObservation(account_id, None, error="never observed")


def reconcile(
    setup: RunSetup,
    tally: Tally,
    observations: Mapping[int, AccountObservation],
    server_audit: Mapping[str, Any] | None = None,
    expected_reporters: int = 1,
    setup_error: str | None = None,
) -> Reconciliation:
    """Judge one run: every account the run opened against what the server acknowledged."""
    accounts = [
        reconcile_account(
            account_id,
            opening_balance,
            setup.amount,
            tally.accounts.get(account_id, AccountTally()),
            observations.get(account_id) or unobserved(account_id),
        )
        for account_id, opening_balance in sorted(setup.opening_balances.items())
    ]
    readable = [report for report in accounts if report.actual_balance is not None]
    total_expected = sum(report.expected_balance for report in readable)
    total_actual = sum(report.actual_balance or 0 for report in readable)
    unknown_credit = sum(tally.account(report.account_id).unknown_credit for report in readable)
    unknown_debit = sum(tally.account(report.account_id).unknown_debit for report in readable)
    money_created = total_actual - total_expected
    result = Reconciliation(
        run_id=setup.run_id,
        scenario=setup.scenario,
        host=setup.host,
        lock_mode=str(setup.mode.get("lock_mode", "unknown")),
        race_window_ms=setup.mode.get("race_window_ms"),
        amount=setup.amount,
        accounts=accounts,
        acknowledged_operations=tally.count(Outcome.ACKNOWLEDGED),
        refusals=tally.count(Outcome.REFUSED),
        bounded_refusals=tally.count(Outcome.BOUNDED_REFUSAL),
        server_errors=tally.count(Outcome.SERVER_ERROR),
        unexpected_responses=tally.count(Outcome.UNEXPECTED),
        no_answers=tally.count(Outcome.NO_ANSWER),
        responses=dict(sorted(tally.responses.items())),
        served_by_mode=dict(tally.served_by_mode),
        lost_updates=sum(report.lost_updates for report in accounts),
        money_lost=sum(report.money_lost for report in accounts),
        credits_lost=sum(-min(outside_difference(report, tally), 0) for report in accounts),
        debits_lost=sum(max(outside_difference(report, tally), 0) for report in accounts),
        server_chain_breaks=sum(report.server_chain_breaks for report in accounts),
        overdrafts=sum(1 for report in accounts if report.overdraft_reasons),
        overdraft_money=sum(report.overdraft_money for report in accounts),
        total_expected=total_expected,
        total_actual=total_actual,
        money_created=money_created,
        conservation_broken=outside(money_created, -unknown_debit, unknown_credit) != 0,
        lock_timeouts=tally.lock_timeouts.count,
        lock_timeout_median_ms=tally.lock_timeouts.median_ms,
        lock_timeout_max_ms=tally.lock_timeouts.max_ms,
        server_audit=None if server_audit is None else dict(server_audit),
        reporters=tally.reporters,
        expected_reporters=expected_reporters,
        problems=[],
        retries=tally.retries,
        replays=tally.replays,
        applied_twice=sum(report.extra_journal_entries for report in accounts),
        stale_lock_refusals=tally.stale_lock_refusals,
        stale_lock_retries=tally.stale_lock_retries,
        outcome_unknown=tally.count(Outcome.INDETERMINATE),
    )
    if setup.scenario == "holds" or tally.holds.holds or tally.holds.accounts:
        result.holds = judge_holds(
            tally.holds,
            setup.account_ids,
            {
                account_id: observation.holds
                for account_id, observation in observations.items()
                if observation is not None
            },
        )
    result.problems = find_problems(result, tally, observations, setup_error)
    return result


def outside_difference(report: AccountReport, tally: Tally) -> int:
    account = tally.account(report.account_id)
    return outside(report.difference, -account.unknown_debit, account.unknown_credit)


def find_problems(
    result: Reconciliation,
    tally: Tally,
    observations: Mapping[int, AccountObservation],
    setup_error: str | None,
) -> list[str]:
    """Every broken invariant or anomaly, one sentence each; empty means PASS."""
    problems: list[str] = []
    if setup_error:
        problems.append(f"setup failed: {setup_error}")
    if result.reporters < result.expected_reporters:
        missing = result.expected_reporters - result.reporters
        problems.append(f"{missing} load-test worker(s) never reported their tally")
    if tally.setup_missing:
        problems.append(f"{tally.setup_missing} users never learnt the run's accounts")
    unreadable = [report.account_id for report in result.accounts if report.actual_balance is None]
    if unreadable:
        reasons = {observations[i].error for i in unreadable if i in observations}
        problems.append(f"could not read accounts {unreadable}: {', '.join(map(str, reasons))}")
    if result.lost_updates:
        problems.append(
            f"{result.lost_updates} lost updates: {result.money_lost} money lost "
            f"({result.credits_lost} acknowledged in but missing, "
            f"{result.debits_lost} acknowledged out but still there)"
        )
    if result.server_chain_breaks:
        problems.append(f"the server's journal has {result.server_chain_breaks} chain breaks")
    if result.applied_twice:
        problems.append(
            f"{result.applied_twice} journal entries beyond every acknowledged or unknown "
            "operation: an operation was applied more than once"
        )
    inconsistent = [r.account_id for r in result.accounts if r.server_consistent is False]
    if inconsistent:
        problems.append(f"the server's audit finds accounts {inconsistent} inconsistent")
    if result.overdrafts:
        problems.append(
            f"{result.overdrafts} accounts overdrafted, {result.overdraft_money} beyond the funds"
        )
    if result.conservation_broken:
        created_or_destroyed = "created" if result.money_created > 0 else "destroyed"
        problems.append(
            f"conservation broken: {abs(result.money_created)} money {created_or_destroyed} "
            "(sum of balances != sum of acknowledged operations)"
        )
    mismatched = [report.account_id for report in result.accounts if report.journal_mismatch]
    if mismatched:
        problems.append(f"the server's journal disagrees with the acknowledgements on {mismatched}")
    if result.holds is not None:
        problems.extend(result.holds.problems())
    if result.server_errors:
        problems.append(f"{result.server_errors} server errors (5xx without Retry-After)")
    if result.no_answers:
        problems.append(f"{result.no_answers} requests got no answer")
    if result.unexpected_responses:
        problems.append(f"{result.unexpected_responses} unexpected responses")
    return problems
