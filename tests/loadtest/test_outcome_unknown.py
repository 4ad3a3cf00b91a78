"""503 `outcome_unknown` in the load tools: indeterminate (it may have been applied), retried
with the same Idempotency-Key, never counted as a refusal that changed nothing."""

from __future__ import annotations

import pytest

from loadtest.jepsen_bank import Attempt
from loadtest.race_report import render_text
from loadtest.reconcile import AccountObservation, RunSetup, reconcile
from loadtest.retry_policy import should_retry
from loadtest.scenarios import Operation
from loadtest.tally import (
    ANOMALOUS_OUTCOMES,
    OUTCOME_UNKNOWN_CODE,
    Answer,
    Outcome,
    Tally,
    classify,
)
from tests.support.fault_load import Sent

AMOUNT = 10
LOST_COMMIT = Answer(503, 5.0, code=OUTCOME_UNKNOWN_CODE, retry_after="5")
PLAIN_503 = Answer(503, 5.0, code="store_unavailable", retry_after="5")


@pytest.mark.parametrize("retry_after", ["5", None])
def test_outcome_unknown_is_indeterminate_not_a_refusal(retry_after: str | None) -> None:
    """The tally sorts it apart from bounded refusals; it is honest, so not an anomaly."""
    outcome = classify(503, OUTCOME_UNKNOWN_CODE, retry_after)
    assert outcome is Outcome.INDETERMINATE
    assert outcome not in ANOMALOUS_OUTCOMES
    assert classify(503, "store_unavailable", "5") is Outcome.BOUNDED_REFUSAL


def test_outcome_unknown_money_is_counted_as_unknown() -> None:
    """A transfer answered outcome_unknown may have moved its money: both legs stay open."""
    tally = Tally(run_id="r")
    tally.record(Operation("transfer", 1, AMOUNT, 2), LOST_COMMIT)
    assert tally.accounts[1].unknown_debit == tally.accounts[2].unknown_credit == AMOUNT
    assert tally.accounts[1].refusals == 0 and tally.count(Outcome.BOUNDED_REFUSAL) == 0
    assert tally.count(Outcome.INDETERMINATE) == 1


def test_a_plain_503_is_a_refusal_whose_money_did_not_move() -> None:
    """store_unavailable with Retry-After changed nothing: no unknown money on either leg."""
    tally = Tally(run_id="r")
    tally.record(Operation("transfer", 1, AMOUNT, 2), PLAIN_503)
    unknown = {n: (a.unknown_debit, a.unknown_credit) for n, a in tally.accounts.items()}
    assert all(money == (0, 0) for money in unknown.values()), unknown
    assert tally.count(Outcome.BOUNDED_REFUSAL) == 1 and tally.count(Outcome.INDETERMINATE) == 0


@pytest.mark.parametrize("applied", [True, False])
def test_the_race_report_accepts_either_fate_of_an_unknown_outcome(applied: bool) -> None:
    """The deposit may be in the balance or not: no lost update, no problem, and it is shown."""
    tally = Tally(run_id="run-1")
    tally.record(Operation("deposit", 1, AMOUNT), LOST_COMMIT)
    balance = 100 + (AMOUNT if applied else 0)
    setup = RunSetup("run-1", "mixed", AMOUNT, {1: 100}, "http://127.0.0.1:1", {})
    audit = {"drift": 0, "chain_breaks": 0, "consistent": True, "journal_balance": balance}
    result = reconcile(setup, tally, {1: AccountObservation(1, balance, audit)})
    assert result.passed, result.problems
    assert result.outcome_unknown == 1 and result.bounded_refusals == 0
    assert "outcome unknown (503 outcome_unknown) 1" in render_text(result)


def test_outcome_unknown_is_sent_again_with_its_key() -> None:
    """The Locust user's retry policy repeats it (the key makes a repeat safe)."""
    assert should_retry(LOST_COMMIT)
    assert should_retry(Answer(503, 5.0, code=OUTCOME_UNKNOWN_CODE))  # even without Retry-After


def test_jepsen_attempt_outcome_unknown_is_info_and_store_unavailable_is_fail() -> None:
    """Jepsen: outcome_unknown is uncertain ("info"); store_unavailable now certainly changed
    nothing ("fail"); both are worth another attempt with the same key."""
    lost = Attempt(503, OUTCOME_UNKNOWN_CODE, "5")
    refused = Attempt(503, "store_unavailable", "5")
    assert lost.uncertain and lost.worth_retrying
    assert not refused.uncertain and refused.worth_retrying


def test_fault_load_reads_the_code_not_the_detail() -> None:
    """The fault load's indeterminate answers are the ones with code outcome_unknown."""
    lost = Sent("deposit", 1, 1, None, 0.0, status=503, code=OUTCOME_UNKNOWN_CODE)
    plain = Sent("deposit", 2, 1, None, 0.0, status=503, code="store_unavailable")
    # Detail text is no contract: each says the opposite of its code here.
    lost.detail = "the database cannot be reached"
    plain.detail = "the operation may have been applied"
    assert lost.outcome_unknown and not plain.outcome_unknown
