"""Unit tests of the reconciliation with hand-made tallies: each invariant and a clean run."""

from __future__ import annotations

from typing import Any

import pytest

from loadtest.race_report import render_text
from loadtest.reconcile import (
    AccountObservation,
    JournalScan,
    Reconciliation,
    RunSetup,
    reconcile,
    scan_journal,
)
from loadtest.scenarios import Operation
from loadtest.tally import Answer, Tally

AMOUNT = 10
CLEAN_AUDIT = {"drift": 0, "chain_breaks": 0, "consistent": True}


def make_setup(opening_balances: dict[int, int], scenario: str = "mixed") -> RunSetup:
    return RunSetup(
        run_id="run-1",
        scenario=scenario,
        amount=AMOUNT,
        opening_balances=opening_balances,
        host="http://127.0.0.1:1",
        mode={"lock_mode": "locked", "race_window_ms": 20},
    )


def acknowledge(tally: Tally, *operations: Operation) -> Tally:
    for operation in operations:
        tally.record(operation, Answer(201, 5.0, lock_mode="locked"))
    return tally


def observe(
    balances: dict[int, int],
    audit: dict[str, Any] | None = None,
    journal: JournalScan | None = None,
) -> dict[int, AccountObservation]:
    return {
        account_id: AccountObservation(
            account_id,
            balance,
            {**CLEAN_AUDIT, "journal_balance": balance, **(audit or {})},
            journal or JournalScan(entries=1, balance=balance, lowest_balance=0, chain_breaks=0),
        )
        for account_id, balance in balances.items()
    }


def deposit(account_id: int) -> Operation:
    return Operation("deposit", account_id, AMOUNT)


def withdraw(account_id: int) -> Operation:
    return Operation("withdraw", account_id, AMOUNT)


def transfer(source_account_id: int, target_account_id: int) -> Operation:
    return Operation("transfer", source_account_id, AMOUNT, target_account_id)


def test_clean_run_passes() -> None:
    """Every acknowledged operation is in the balances: PASS, no problem, nothing lost."""
    tally = acknowledge(Tally(run_id="run-1"), deposit(1), withdraw(2), transfer(1, 2))
    tally.record(withdraw(2), Answer(409, 2.0, code="insufficient_funds"))
    result = reconcile(make_setup({1: 100, 2: 100}), tally, observe({1: 100, 2: 100}))
    assert result.passed, result.problems
    assert result.verdict == "PASS"
    assert (result.lost_updates, result.money_lost, result.overdrafts) == (0, 0, 0)
    assert result.acknowledged_operations == 3
    assert result.refusals == 1
    assert result.money_created == 0
    assert not result.conservation_broken
    assert [report.expected_balance for report in result.accounts] == [100, 100]


def test_lost_deposit_is_a_lost_update() -> None:
    """Three deposits acknowledged, two in the balance: one lost update, 10 money lost."""
    tally = acknowledge(Tally(run_id="run-1"), deposit(1), deposit(1), deposit(1))
    result = reconcile(make_setup({1: 100}), tally, observe({1: 120}))
    assert not result.passed
    assert result.lost_updates == 1
    assert result.money_lost == 10
    assert (result.credits_lost, result.debits_lost) == (10, 0)
    assert result.accounts[0].difference == -10
    assert any("1 lost updates" in problem for problem in result.problems)


def test_lost_withdrawal_is_a_lost_update_the_bank_pays_for() -> None:
    """Two withdrawals acknowledged, one applied: the money left but is still in the balance."""
    tally = acknowledge(Tally(run_id="run-1"), withdraw(1), withdraw(1))
    result = reconcile(make_setup({1: 100}), tally, observe({1: 90}))
    assert result.lost_updates == 1
    assert (result.credits_lost, result.debits_lost) == (0, 10)
    assert result.money_created == 10
    assert result.conservation_broken


def test_overdraft_when_acknowledged_withdrawals_exceed_the_funds() -> None:
    """Two withdrawals of 10 acknowledged from 10: overdraft of 10, and the lost update."""
    tally = acknowledge(Tally(run_id="run-1"), withdraw(1), withdraw(1))
    journal = JournalScan(entries=3, balance=-10, lowest_balance=-10, chain_breaks=1)
    result = reconcile(make_setup({1: 10}), tally, observe({1: 0}, journal=journal))
    assert result.overdrafts == 1
    assert result.overdraft_money == 10
    reasons = result.accounts[0].overdraft_reasons
    assert any("exceed its funds by 10" in reason for reason in reasons)
    assert any("fell to -10" in reason for reason in reasons)
    assert any("overdrafted" in problem for problem in result.problems)


def test_overdraft_seen_in_a_negative_balance_after() -> None:
    """An acknowledgement with balance_after < 0 is an overdraft even if the end is positive."""
    tally = Tally(run_id="run-1")
    tally.record(withdraw(1), Answer(201, 1.0, negative_account_ids=(1,)))
    tally = acknowledge(tally, deposit(1), deposit(1))
    result = reconcile(make_setup({1: 0}), tally, observe({1: 10}))
    assert result.overdrafts == 1
    assert not result.passed


def test_overdraft_from_the_server_audit_when_the_journal_was_not_replayed() -> None:
    """consistent=false with no drift and no chain break means the journal went below zero."""
    audit = {"drift": 0, "chain_breaks": 0, "consistent": False}
    observations = {1: AccountObservation(1, 50, audit)}
    result = reconcile(make_setup({1: 50}), Tally(run_id="run-1"), observations)
    assert result.overdrafts == 1
    assert "went below zero" in result.accounts[0].overdraft_reasons[0]


def test_transfer_that_lost_its_credit_breaks_conservation() -> None:
    """A transfer debited A but B never got the money: money destroyed, conservation broken."""
    tally = acknowledge(Tally(run_id="run-1"), transfer(1, 2))
    result = reconcile(make_setup({1: 100, 2: 100}), tally, observe({1: 90, 2: 100}))
    assert result.conservation_broken
    assert result.money_created == -10
    assert (result.total_expected, result.total_actual) == (200, 190)
    assert any("conservation broken: 10 money destroyed" in p for p in result.problems)


def test_transfer_that_created_money_breaks_conservation() -> None:
    """B got the money, A kept it: 10 created out of nothing."""
    tally = acknowledge(Tally(run_id="run-1"), transfer(1, 2))
    result = reconcile(make_setup({1: 100, 2: 100}), tally, observe({1: 100, 2: 110}))
    assert result.money_created == 10
    assert any("money created" in problem for problem in result.problems)


def test_lost_updates_that_cancel_out_are_caught_by_the_chain_check() -> None:
    """A lost deposit and a lost withdrawal leave the balance right; the journal chain does not."""
    tally = acknowledge(Tally(run_id="run-1"), deposit(1), withdraw(1))
    observations = observe({1: 100}, audit={"chain_breaks": 2, "consistent": False})
    result = reconcile(make_setup({1: 100}), tally, observations)
    assert result.lost_updates == 0
    assert result.server_chain_breaks == 2
    assert not result.passed
    assert any("chain breaks" in problem for problem in result.problems)


def test_honest_503_is_counted_but_not_an_anomaly() -> None:
    """503 lock_timeout with Retry-After changes nothing and does not fail the run."""
    tally = Tally(run_id="run-1")
    tally.record(transfer(1, 2), Answer(503, 5_000.0, code="lock_timeout", retry_after="1"))
    result = reconcile(make_setup({1: 100, 2: 100}, "deadlock"), tally, observe({1: 100, 2: 100}))
    assert result.passed, result.problems
    assert result.bounded_refusals == 1
    assert result.lock_timeouts == 1
    assert result.lock_timeout_max_ms == 5_000.0


@pytest.mark.parametrize(
    ("answer", "problem"),
    [
        (Answer(500, 1.0), "server errors"),
        (Answer(503, 1.0, code="store_unavailable"), "server errors"),
        (Answer(0, 1.0), "no answer"),
        (Answer(422, 1.0, code="validation_error"), "unexpected responses"),
    ],
)
def test_anomalous_answers_fail_the_run(answer: Answer, problem: str) -> None:
    """A 5xx without Retry-After, silence or an unexpected status is an anomaly."""
    tally = Tally(run_id="run-1")
    tally.record(deposit(1), answer)
    result = reconcile(make_setup({1: 100}), tally, observe({1: 100}))
    assert not result.passed
    assert any(problem in text for text in result.problems)


def test_unknown_outcome_explains_a_difference_but_is_reported() -> None:
    """A 500 deposit that did land is not a lost update, yet the run still fails on the 500."""
    tally = Tally(run_id="run-1")
    tally.record(deposit(1), Answer(500, 1.0))
    result = reconcile(make_setup({1: 100}), tally, observe({1: 110}))
    assert result.lost_updates == 0
    assert not result.conservation_broken
    assert result.server_errors == 1
    assert not result.passed


def test_missing_worker_tally_fails_the_run() -> None:
    """A report built without every worker's tally cannot be trusted."""
    tally = Tally(run_id="run-1", reporters=1)
    result = reconcile(make_setup({1: 100}), tally, observe({1: 100}), expected_reporters=2)
    assert any("never reported" in problem for problem in result.problems)


def test_unreadable_account_fails_the_run() -> None:
    """An account whose balance cannot be read is not silently skipped."""
    observations = {1: AccountObservation(1, None, error="GET /accounts/1 answered 500")}
    result = reconcile(make_setup({1: 100}), Tally(run_id="run-1"), observations)
    assert any("could not read accounts [1]" in problem for problem in result.problems)


def test_setup_failure_fails_the_run() -> None:
    """No accounts could be opened: the report says why and fails."""
    result = reconcile(make_setup({}), Tally(run_id="run-1"), {}, setup_error="connection refused")
    assert result.problems == ["setup failed: connection refused"]


def test_journal_that_disagrees_with_acknowledgements_fails() -> None:
    """An acknowledged deposit missing from the server's journal is found."""
    tally = acknowledge(Tally(run_id="run-1"), deposit(1))
    observations = observe({1: 110}, audit={"journal_balance": 100, "drift": 10})
    result = reconcile(make_setup({1: 100}), tally, observations)
    assert result.accounts[0].journal_mismatch == -10
    assert any("journal disagrees" in problem for problem in result.problems)


def test_scan_journal_replays_in_id_order() -> None:
    """The client replays the journal by id: running balance, its lowest point, chain breaks."""
    entries = [
        {"id": 3, "kind": "withdrawal", "amount": 10, "balance_after": 0},  # lost: reads 10
        {"id": 1, "kind": "open", "amount": 10, "balance_after": 10},
        {"id": 2, "kind": "withdrawal", "amount": 10, "balance_after": 0},
        {"id": 4, "kind": "transfer_in", "amount": 25, "balance_after": 25},
    ]
    scan = scan_journal(entries)
    assert scan == JournalScan(entries=4, balance=15, lowest_balance=-10, chain_breaks=1)


def test_scan_journal_rejects_unknown_kinds() -> None:
    """An entry of an unknown kind is an error, not silently skipped money."""
    with pytest.raises(ValueError):
        scan_journal([{"id": 1, "kind": "interest", "amount": 1, "balance_after": 1}])


def test_run_setup_survives_the_wire() -> None:
    """The set-up sent to workers comes back equal (string keys on the wire)."""
    setup = make_setup({3: 100, 4: 200})
    assert RunSetup.from_dict(setup.to_dict()) == setup
    assert setup.account_ids == [3, 4]


def render(result: Reconciliation) -> str:
    return render_text(result)


def test_report_text_names_the_losses_and_the_verdict() -> None:
    """The printed report shows the per-account row, the lost updates and the verdict."""
    tally = acknowledge(Tally(run_id="run-1"), deposit(1), deposit(1), deposit(1))
    text = render(reconcile(make_setup({1: 100}), tally, observe({1: 120})))
    assert "lost updates: 1 (money lost 10" in text
    assert "VERDICT: FAIL" in text
    assert "How to read this report" in text


def test_stale_lock_refusals_are_correct_refusals_and_reported() -> None:
    """fenced's 409 stale_lock changed nothing: no loss, no anomaly, a line of its own."""
    tally = acknowledge(Tally(run_id="run-1"), deposit(1))
    tally.note_retry(deposit(1), Answer(409, 30.0, code="stale_lock", lock_mode="fenced"))
    tally.record(deposit(1), Answer(409, 30.0, code="stale_lock", lock_mode="fenced"))
    result = reconcile(make_setup({1: 100}), tally, observe({1: 110}))
    assert result.passed, result.problems
    assert (result.refusals, result.lost_updates, result.unexpected_responses) == (1, 0, 0)
    assert (result.stale_lock_refusals, result.stale_lock_retries) == (1, 1)
    assert result.to_dict()["stale_lock_refusals"] == 1
    text = render(result)
    assert (
        "stale-lock refusals (409 stale_lock, fenced): 1 final (counted as correct refusals, "
        "nothing written), 1 more sent again with the same Idempotency-Key"
    ) in text
    calm = render(reconcile(make_setup({1: 100}), Tally(run_id="run-1"), observe({1: 100})))
    assert "stale-lock refusals" not in calm


def test_report_text_of_a_deadlock_run() -> None:
    """Deadlocks are counted with the clients' wait; none is explained in the deadlock scenario."""
    tally = Tally(run_id="run-1")
    for latency_ms in (5_000.0, 5_100.0, 5_300.0):
        tally.record(transfer(1, 2), Answer(503, latency_ms, code="lock_timeout", retry_after="1"))
    setup, balances = make_setup({1: 100, 2: 100}, "deadlock"), observe({1: 100, 2: 100})
    text = render(reconcile(setup, tally, balances))
    assert "deadlocks (503 lock_timeout): 3; clients waited median 5100 ms, max 5300 ms" in text
    assert "VERDICT: PASS" in text
    calm = render(reconcile(setup, Tally(run_id="run-1"), balances))
    assert "never deadlocked" in calm


def deposit_journal(deposits: int) -> JournalScan:
    """An account opened with 100 whose journal holds `deposits` chained deposits of 10."""
    rows: list[dict[str, Any]] = [{"id": 1, "kind": "open", "amount": 100, "balance_after": 100}]
    rows += [
        {"id": 1 + n, "kind": "deposit", "amount": AMOUNT, "balance_after": 100 + AMOUNT * n}
        for n in range(1, deposits + 1)
    ]
    return scan_journal(rows)


def test_journal_entries_beyond_every_acknowledgement_are_reported_as_applied_twice() -> None:
    """One more journal entry than opening + acknowledged + unknown: an operation ran twice."""
    setup = make_setup({1: 100})
    tally = acknowledge(Tally(run_id="run-1"), Operation("deposit", 1, AMOUNT))
    twice = reconcile(setup, tally, {1: AccountObservation(1, 120, None, deposit_journal(2))})
    assert twice.applied_twice == 1
    assert any("applied more than once" in problem for problem in twice.problems)
    once = reconcile(setup, tally, {1: AccountObservation(1, 110, None, deposit_journal(1))})
    assert once.applied_twice == 0
