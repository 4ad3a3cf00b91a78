"""Unit tests of the holds scenario's counting and report, with hand-made answers.

Each hold invariant (DESIGN §3 "Holds (two-phase)") is broken on purpose in a
tally built from answers, and the reconciliation must name it and fail; a
clean run of the same shape must pass. No server: what the client was told
is written out here.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from loadtest.hold_tally import (
    EXPIRY_CLOCK_MARGIN_S,
    FinalHoldRead,
    HoldTally,
    judge_holds,
    server_time,
)
from loadtest.race_report import render_text
from loadtest.reconcile import AccountObservation, JournalScan, RunSetup, reconcile, scan_journal
from loadtest.scenarios import (
    HOLD_PLANS,
    HoldPlan,
    Operation,
    choose_hold_plan,
    choose_operation,
    scenario_amount,
)
from loadtest.tally import Answer, Tally

ACCOUNT = 7
AMOUNT = 2_500
OPENING = 10_000
NOW = 1_800_000_000.0  # a fixed moment: the tests never read the clock
EXPIRES_AT = "2027-01-15T08:00:30+00:00"
EXPIRES_AT_S = 1_800_000_030.0  # the same moment in seconds


def hold(amount: int = AMOUNT, expires_in_s: int = 30) -> Operation:
    return Operation("hold", ACCOUNT, amount, expires_in_s=expires_in_s)


def capture(hold_id: int, amount: int = AMOUNT) -> Operation:
    return Operation("capture", ACCOUNT, amount, hold_id=hold_id)


def void(hold_id: int) -> Operation:
    return Operation("void", ACCOUNT, AMOUNT, hold_id=hold_id)


class Run:
    """A tally fed the way the locustfile feeds it: the money tally and the hold tally."""

    def __init__(self) -> None:
        self.tally = Tally(run_id="run-h")

    def send(
        self, operation: Operation, status: int, body: Any = None, sent_at: float = NOW
    ) -> None:
        code = body.get("code") if isinstance(body, dict) and status >= 300 else None
        outcome = self.tally.record(operation, Answer(status, 4.0, code=code, lock_mode="x"))
        if operation.kind in ("hold", "capture", "void"):
            self.tally.holds.note(operation, outcome, body, sent_at)

    def place(self, hold_id: int, amount: int = AMOUNT, expires_at: str = EXPIRES_AT) -> None:
        body = {"id": hold_id, "account_id": ACCOUNT, "amount": amount, "status": "pending"}
        self.send(hold(amount), 201, {**body, "expires_at": expires_at})


def final(
    balance: int, held: int, read_at: float = NOW + 1, sent_at: float | None = None
) -> AccountObservation:
    journal = JournalScan(entries=1, balance=balance, lowest_balance=0, chain_breaks=0)
    audit = {"drift": 0, "chain_breaks": 0, "consistent": True, "journal_balance": balance}
    holds = FinalHoldRead(balance, held, balance - held, read_at, sent_at)
    return AccountObservation(ACCOUNT, balance, audit, journal, holds=holds)


def judge(
    run: Run, balance: int, held: int, read_at: float = NOW + 1, sent_at: float | None = None
) -> Any:
    setup = RunSetup(
        run_id="run-h",
        scenario="holds",
        amount=AMOUNT,
        opening_balances={ACCOUNT: OPENING},
        host="http://127.0.0.1:1",
        mode={"lock_mode": "locked", "race_window_ms": 20},
    )
    return reconcile(setup, run.tally, {ACCOUNT: final(balance, held, read_at, sent_at)})


# --- the operations and plans --------------------------------------------------------------


def test_hold_requests_follow_the_api_contract() -> None:
    """POST /accounts/{id}/holds {amount, expires_in_s}; capture {amount}; void: no body."""
    assert hold(500, 600).path == f"/accounts/{ACCOUNT}/holds"
    assert hold(500, 600).body == {"amount": 500, "expires_in_s": 600}
    assert capture(3, 300).path == "/holds/3/capture"
    assert capture(3, 300).body == {"amount": 300}
    assert void(3).path == "/holds/3/void"
    assert void(3).body is None
    assert hold().deltas() == [] and void(3).deltas() == []
    assert capture(3, 300).deltas() == [(ACCOUNT, -300)]


@pytest.mark.parametrize(
    "arguments",
    [
        {"kind": "capture", "account_id": 1, "amount": 5},  # no hold
        {"kind": "void", "account_id": 1, "amount": 5},
        {"kind": "hold", "account_id": 1, "amount": 5},  # no expiry
        {"kind": "deposit", "account_id": 1, "amount": 5, "hold_id": 2},
        {"kind": "deposit", "account_id": 1, "amount": 5, "expires_in_s": 2},
    ],
)
def test_malformed_hold_operations_cannot_be_built(arguments: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Operation(**arguments)


def test_every_hold_plan_sends_what_its_name_says() -> None:
    """Races send their two requests together; expire waits; leave_pending sends nothing more."""
    actions = {name: HoldPlan(name, ACCOUNT, 100).actions(9) for name in HOLD_PLANS}
    kinds = {name: [(a.kind, a.amount) for a in sent] for name, sent in actions.items()}
    assert kinds == {
        "capture": [("capture", 100)],
        "partial_capture": [("capture", 50)],
        "void": [("void", 100)],
        "expire": [("capture", 100)],
        "double_capture": [("capture", 100), ("capture", 100)],
        "capture_void": [("capture", 100), ("void", 100)],
        "leave_pending": [],
        "racing_holds": [],
    }
    assert len(HoldPlan("racing_holds", ACCOUNT, 100).placements) == 2
    assert HoldPlan("expire", ACCOUNT, 100).waits_for_expiry
    assert HoldPlan("expire", ACCOUNT, 100).placements[0].expires_in_s == 1


def test_the_holds_scenario_draws_every_plan_and_its_amount_fills_an_eighth() -> None:
    rng = random.Random(4)
    drawn = {choose_hold_plan([1, 2], 100, rng).name for _ in range(400)}
    assert drawn == set(HOLD_PLANS)
    assert scenario_amount("holds", 10, 10_000) == 1_250
    assert scenario_amount("holds", 4_000, 10_000) == 4_000
    assert scenario_amount("mixed", 10, 10_000) == 10  # other scenarios: unchanged
    with pytest.raises(ValueError):
        choose_operation("holds", [1, 2], 10, rng)


def test_server_times_are_read_with_their_zone_only() -> None:
    assert server_time(EXPIRES_AT) == EXPIRES_AT_S
    assert server_time("2027-01-15T08:00:30Z") == EXPIRES_AT_S
    assert server_time("2027-01-15T08:00:30") is None  # no zone: not comparable
    assert server_time("soon") is None and server_time(None) is None


# --- the invariants --------------------------------------------------------------------------


def test_a_clean_holds_run_passes_and_its_captures_are_debits() -> None:
    """Capture, partial capture, void, a refused second capture, one left pending: PASS."""
    run = Run()
    for hold_id in (1, 2, 3, 4):
        run.place(hold_id)
    run.send(capture(1), 201, {"kind": "capture", "amount": AMOUNT})
    run.send(capture(1), 409, {"code": "hold_not_pending"})
    run.send(capture(2, 1_000), 201, {"kind": "capture", "amount": 1_000})
    run.send(void(3), 200, {"status": "voided"})
    run.send(capture(3), 409, {"code": "hold_not_pending"})
    result = judge(run, balance=OPENING - AMOUNT - 1_000, held=AMOUNT)  # hold 4 still pending
    assert result.passed, result.problems
    holds = result.holds
    assert holds is not None
    assert (holds.holds_placed, holds.captures, holds.voids, holds.not_pending_refusals) == (
        4,
        2,
        1,
        2,
    )
    assert holds.anomalies == 0 and result.to_dict()["hold_anomalies"] == 0
    assert result.accounts[0].expected_balance == OPENING - AMOUNT - 1_000
    assert result.refusals == 2  # 409 hold_not_pending: correct refusals, not unexpected


def test_two_acknowledged_captures_of_one_hold_are_a_double_capture() -> None:
    run = Run()
    run.place(1)
    run.send(capture(1), 201)
    run.send(capture(1), 201)
    result = judge(run, balance=OPENING - 2 * AMOUNT, held=0)
    assert result.holds is not None
    assert (result.holds.double_captures, result.holds.double_captured_money) == (1, AMOUNT)
    assert not result.passed
    assert any("1 double captures" in problem for problem in result.problems)


def test_a_capture_and_a_void_both_acknowledged_are_two_outcomes() -> None:
    run = Run()
    run.place(1)
    run.send(void(1), 200)
    run.send(capture(1), 201)
    result = judge(run, balance=OPENING - AMOUNT, held=0)
    assert result.holds is not None and result.holds.captures_after_void == 1
    assert any("both captured and voided" in problem for problem in result.problems)


def test_a_capture_sent_after_expires_at_and_acknowledged_breaks_the_expiry() -> None:
    """Only a request that left after the stated expires_at (plus the margin) counts."""
    run = Run()
    run.place(1)
    run.place(2)
    run.send(capture(1), 201, sent_at=EXPIRES_AT_S + EXPIRY_CLOCK_MARGIN_S + 0.1)
    run.send(capture(2), 201, sent_at=EXPIRES_AT_S - 0.1)  # raced the expiry: no proof
    result = judge(run, balance=OPENING - 2 * AMOUNT, held=0)
    assert result.holds is not None and result.holds.captures_after_expiry == 1
    assert any("captures acknowledged after the hold expired" in p for p in result.problems)


def test_a_read_with_available_below_zero_is_an_over_hold() -> None:
    run = Run()
    run.place(1)
    run.place(2)
    run.tally.holds.note_read(ACCOUNT, {"balance": 4_000, "held": 5_000, "available": -1_000})
    run.tally.holds.note_read(ACCOUNT, {"balance": 4_000, "held": 2_500, "available": 1_500})
    run.tally.holds.note_read(ACCOUNT, {"balance": 4_000})  # a service without holds: skipped
    result = judge(run, balance=OPENING, held=2 * AMOUNT)
    assert result.holds is not None
    assert (result.holds.over_hold_reads, result.holds.lowest_available) == (1, -1_000)
    assert any("1 over-holds" in problem for problem in result.problems)


def test_the_final_read_counts_as_an_over_hold_too() -> None:
    run = Run()
    for hold_id in (1, 2, 3, 4, 5):
        run.place(hold_id)
    result = judge(run, balance=OPENING, held=5 * AMOUNT)
    assert result.holds is not None and result.holds.over_hold_reads == 1
    assert result.holds.held_drift_accounts == 0  # held is what was acknowledged


def test_held_unlike_the_acknowledged_pending_holds_is_drift() -> None:
    """A captured hold still counted in held, or a pending one missing from it."""
    run = Run()
    run.place(1)
    run.place(2)
    run.send(capture(1), 201)
    too_much = judge(run, balance=OPENING - AMOUNT, held=2 * AMOUNT)
    assert too_much.holds is not None
    assert (too_much.holds.held_drift_accounts, too_much.holds.held_drift_money) == (1, AMOUNT)
    too_little = judge(run, balance=OPENING - AMOUNT, held=0)
    assert too_little.holds is not None and too_little.holds.held_drift_money == AMOUNT
    right = judge(run, balance=OPENING - AMOUNT, held=AMOUNT)
    assert right.passed, right.problems


def test_holds_whose_fate_is_unknown_or_that_expire_during_the_read_widen_what_is_explained() -> (
    None
):
    run = Run()
    run.place(1)
    run.send(capture(1), 0)  # no answer: captured or not, nobody knows
    run.send(hold(), 0)  # no answer: placed or not
    run.place(2, expires_at="2027-01-15T08:00:01+00:00")  # expires at NOW + 1
    # The read left at NOW + 0.9 and came back at NOW + 1.1: hold 2 expired meanwhile.
    for held in (0, AMOUNT, 2 * AMOUNT, 3 * AMOUNT):
        result = judge(run, balance=OPENING, held=held, read_at=NOW + 1.1, sent_at=NOW + 0.9)
        assert result.holds is not None
        assert result.holds.held_drift_accounts == 0, held
    beyond = judge(run, balance=OPENING, held=4 * AMOUNT, read_at=NOW + 1.1, sent_at=NOW + 0.9)
    assert beyond.holds is not None and beyond.holds.held_drift_money == AMOUNT
    assert beyond.holds.unknown_outcomes == 2
    # Long expired holds are known not to count any more.
    later = judge(run, balance=OPENING, held=0, read_at=NOW + 60)
    assert later.holds is not None and later.holds.held_drift_accounts == 0
    # A read sent after hold 2 expired (beyond the clocks' margin) knows it is gone.
    after = judge(run, balance=OPENING, held=3 * AMOUNT, read_at=NOW + 1.2, sent_at=NOW + 1.1)
    assert after.holds is not None and after.holds.held_drift_money == AMOUNT


def test_an_unreadable_hold_answer_counts_its_money_as_unknown() -> None:
    run = Run()
    run.send(hold(), 201, {"id": 1})  # no expires_at: the client cannot follow it
    result = judge(run, balance=OPENING, held=AMOUNT)
    assert result.holds is not None and result.holds.held_drift_accounts == 0
    assert result.holds.unknown_outcomes == 1


def test_the_hold_tally_merges_across_processes_and_survives_the_wire() -> None:
    """Two processes' tallies of the same hold add up; to_dict/from_dict keeps everything."""
    first, second = Run(), Run()
    first.place(1)
    first.send(capture(1), 201)
    second.tally.holds.holds[1] = HoldTally.from_dict(first.tally.holds.to_dict()).holds[1]
    second.tally.holds.holds[1].captured = [AMOUNT]  # the other process's capture
    second.tally.holds.note_read(ACCOUNT, {"balance": 1, "held": 2, "available": -1})
    merged = Tally.from_dict(first.tally.to_dict())
    merged.merge(Tally.from_dict(second.tally.to_dict()))
    findings = judge_holds(merged.holds, [ACCOUNT], {})
    assert findings.double_captures == 1
    assert findings.over_hold_reads == 1
    assert Tally.from_dict(merged.to_dict()).holds == merged.holds
    assert Tally.from_dict({**merged.to_dict(), "holds": None}).holds == HoldTally()


def test_an_answer_on_a_hold_never_seen_placed_is_counted_apart() -> None:
    run = Run()
    run.send(capture(99), 201)
    assert run.tally.holds.orphan_answers == 1


def test_the_journal_replays_captures_as_debits() -> None:
    entries = [
        {"id": 1, "kind": "open", "amount": 100, "balance_after": 100},
        {"id": 2, "kind": "capture", "amount": 30, "balance_after": 70},
    ]
    assert scan_journal(entries).balance == 70
    assert scan_journal(entries).chain_breaks == 0


# --- the report ------------------------------------------------------------------------------


def test_the_report_says_how_the_holds_broke() -> None:
    run = Run()
    run.place(1)
    run.send(capture(1), 201)
    run.send(capture(1), 201)
    run.place(2)
    run.send(void(2), 200)
    run.send(capture(2), 201)
    run.tally.holds.note_read(ACCOUNT, {"balance": 100, "held": 2_600, "available": -2_500})
    text = render_text(judge(run, balance=OPENING - 3 * AMOUNT, held=0))
    for line in (
        "holds placed 2   refused (409 insufficient_funds) 0   captures 3 (7500 money)   voids 1",
        "double captures: 1 (2500 money taken beyond the first capture)",
        "holds captured and voided: 1",
        "captures after expiry: 0",
        "over-holds (reads with available below 0 or held above balance): 1, "
        "lowest available seen -2500",
        "held drift: 0 accounts, 0 money",
        f"  account {ACCOUNT}: placed 2, refused 0; held at the end 0 vs acknowledged pending 0",
        "Holds (the holds scenario",
        "VERDICT: FAIL",
    ):
        assert line in text, line


def test_other_scenarios_print_no_hold_lines() -> None:
    tally = Tally(run_id="run-h")
    setup = RunSetup("run-h", "mixed", 10, {ACCOUNT: 100})
    observation = AccountObservation(ACCOUNT, 100)
    result = reconcile(setup, tally, {ACCOUNT: observation})
    assert result.holds is None
    assert "double captures" not in render_text(result)
