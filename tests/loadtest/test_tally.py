"""Unit tests of the tally: how every kind of answer is counted and merged."""

from __future__ import annotations

import json

import pytest

from loadtest.scenarios import Operation
from loadtest.tally import (
    LATENCY_SAMPLES_LIMIT,
    Answer,
    Outcome,
    Tally,
    classify,
    negative_account_ids,
)

DEPOSIT = Operation("deposit", 1, 10)
TRANSFER = Operation("transfer", 1, 10, 2)


@pytest.mark.parametrize(
    ("status", "code", "retry_after", "outcome"),
    [
        (201, None, None, Outcome.ACKNOWLEDGED),
        (200, None, None, Outcome.ACKNOWLEDGED),
        (409, "insufficient_funds", None, Outcome.REFUSED),
        (409, "balance_limit_exceeded", None, Outcome.REFUSED),
        (409, "stale_lock", None, Outcome.REFUSED),
        (409, "idempotency_in_progress", None, Outcome.UNEXPECTED),
        (422, "validation_error", None, Outcome.UNEXPECTED),
        (404, "not_found", None, Outcome.UNEXPECTED),
        (503, "lock_timeout", "1", Outcome.BOUNDED_REFUSAL),
        (503, "write_conflict", "1", Outcome.BOUNDED_REFUSAL),
        (503, "lock_timeout", None, Outcome.SERVER_ERROR),
        (500, None, None, Outcome.SERVER_ERROR),
        (502, None, "5", Outcome.SERVER_ERROR),
        (0, None, None, Outcome.NO_ANSWER),
    ],
)
def test_classify(status: int, code: str | None, retry_after: str | None, outcome: Outcome) -> None:
    """409 refusals are correct, 503+Retry-After honest, other 5xx and silence anomalies."""
    assert classify(status, code, retry_after) is outcome


def test_acknowledged_transfer_moves_money_between_the_two_accounts() -> None:
    """Both legs of an acknowledged transfer are tallied on their own account."""
    tally = Tally(run_id="r")
    tally.record(TRANSFER, Answer(201, 5.0, lock_mode="locked"))
    assert (tally.accounts[1].debited, tally.accounts[1].credited) == (10, 0)
    assert (tally.accounts[2].debited, tally.accounts[2].credited) == (0, 10)
    assert tally.accounts[1].acknowledged == {"transfer_out": 1}
    assert tally.accounts[2].acknowledged == {"transfer_in": 1}
    assert tally.served_by_mode == {"locked": 1}
    assert tally.responses == {"transfer 201": 1}


def test_refusal_moves_no_money() -> None:
    """A 409 insufficient_funds is counted as a refusal on the source account only."""
    tally = Tally(run_id="r")
    outcome = tally.record(TRANSFER, Answer(409, 3.0, code="insufficient_funds"))
    assert outcome is Outcome.REFUSED
    assert tally.accounts[1].refusals == 1
    assert tally.accounts[1].debited == tally.accounts[1].credited == 0
    assert 2 not in tally.accounts


def test_server_error_leaves_the_effect_unknown() -> None:
    """A 500 or no answer may or may not have moved money: both directions are kept apart."""
    tally = Tally(run_id="r")
    tally.record(TRANSFER, Answer(500, 3.0))
    tally.record(DEPOSIT, Answer(0, 30_000.0))
    assert tally.accounts[1].unknown_debit == 10
    assert tally.accounts[1].unknown_credit == 10
    assert tally.accounts[2].unknown_credit == 10
    assert tally.accounts[1].unknown_outcomes == 2
    assert tally.count(Outcome.SERVER_ERROR) == tally.count(Outcome.NO_ANSWER) == 1


def test_lock_timeouts_count_and_time_the_wait() -> None:
    """Every 503 lock_timeout is counted with its latency (median and exact max)."""
    tally = Tally(run_id="r")
    for latency_ms in (100.0, 300.0, 200.0):
        tally.record(TRANSFER, Answer(503, latency_ms, code="lock_timeout", retry_after="1"))
    assert tally.lock_timeouts.count == 3
    assert tally.lock_timeouts.median_ms == 200.0
    assert tally.lock_timeouts.max_ms == 300.0
    assert tally.count(Outcome.BOUNDED_REFUSAL) == 3


def test_latency_samples_are_bounded() -> None:
    """The sample list stops growing; the count and the maximum stay exact."""
    tally = Tally(run_id="r")
    for latency_ms in range(LATENCY_SAMPLES_LIMIT + 5):
        tally.record(TRANSFER, Answer(503, float(latency_ms), code="lock_timeout", retry_after="1"))
    assert len(tally.lock_timeouts.samples_ms) == LATENCY_SAMPLES_LIMIT
    assert tally.lock_timeouts.count == LATENCY_SAMPLES_LIMIT + 5
    assert tally.lock_timeouts.max_ms == LATENCY_SAMPLES_LIMIT + 4


def test_negative_balance_after_is_noticed() -> None:
    """An acknowledgement that leaves a balance below zero is an overdraft seen live."""
    assert negative_account_ids({"account_id": 3, "balance_after": -10}) == (3,)
    assert negative_account_ids({"account_id": 3, "balance_after": 0}) == ()
    legs = {"legs": [{"account_id": 1, "balance_after": -5}, {"account_id": 2, "balance_after": 5}]}
    assert negative_account_ids(legs) == (1,)
    assert negative_account_ids(None) == ()
    tally = Tally(run_id="r")
    tally.record(DEPOSIT, Answer(201, 1.0, negative_account_ids=(1,)))
    assert tally.accounts[1].negative_acknowledgements == 1


def test_merge_adds_everything_up() -> None:
    """Two workers' tallies merge into the sums of both."""
    first, second = Tally(run_id="r"), Tally(run_id="r")
    first.record(DEPOSIT, Answer(201, 1.0, lock_mode="unlocked"))
    second.record(DEPOSIT, Answer(201, 1.0, lock_mode="unlocked"))
    second.record(TRANSFER, Answer(503, 50.0, code="lock_timeout", retry_after="1"))
    first.merge(second)
    assert first.accounts[1].credited == 20
    assert first.accounts[1].acknowledged == {"deposit": 2}
    assert first.served_by_mode == {"unlocked": 2}
    assert first.lock_timeouts.count == 1
    assert first.reporters == 2


def test_merge_refuses_tallies_of_another_run() -> None:
    """A stale tally from an earlier run cannot pollute this run's report."""
    with pytest.raises(ValueError):
        Tally(run_id="a").merge(Tally(run_id="b"))


def test_tally_survives_the_wire() -> None:
    """to_dict is JSON-safe (string keys) and from_dict restores an equal tally."""
    tally = Tally(run_id="r")
    tally.record(TRANSFER, Answer(201, 1.0, lock_mode="locked"))
    tally.record(TRANSFER, Answer(409, 1.0, code="insufficient_funds"))
    tally.record(TRANSFER, Answer(503, 9.0, code="lock_timeout", retry_after="1"))
    wire = json.loads(json.dumps(tally.to_dict()))
    assert Tally.from_dict(wire) == tally


def test_retries_and_replays_are_counted_and_merged_apart_from_outcomes() -> None:
    """A retried answer counts as a retry (a lock timeout still counts as one), not an outcome."""
    operation = Operation("withdraw", 1, 5)
    tally = Tally(run_id="r")
    tally.note_retry(operation, Answer(503, 1000.0, code="lock_timeout", retry_after="1"))
    tally.replays += 1
    assert tally.retries == 1 and tally.outcomes == {}
    assert tally.lock_timeouts.count == 1
    other = Tally.from_dict(tally.to_dict())
    other.merge(tally)
    assert (other.retries, other.replays) == (2, 2)


def test_a_stale_lock_refusal_moves_no_money_and_is_counted_apart() -> None:
    """409 stale_lock (fenced): a correct refusal, no money; final and retried answers apart."""
    tally = Tally(run_id="r")
    tally.note_retry(TRANSFER, Answer(409, 3.0, code="stale_lock", lock_mode="fenced"))
    outcome = tally.record(TRANSFER, Answer(409, 3.0, code="stale_lock", lock_mode="fenced"))
    assert outcome is Outcome.REFUSED
    assert tally.accounts[1].refusals == 1
    assert tally.accounts[1].debited == tally.accounts[1].credited == 0
    assert tally.accounts[1].unknown_outcomes == 0
    assert (tally.stale_lock_refusals, tally.stale_lock_retries, tally.retries) == (1, 1, 1)
    assert tally.responses == {"transfer 409 stale_lock (retried)": 1, "transfer 409 stale_lock": 1}
    assert tally.count(Outcome.UNEXPECTED) == 0
    tally.record(TRANSFER, Answer(409, 3.0, code="insufficient_funds"))
    assert tally.stale_lock_refusals == 1
    other = Tally.from_dict(json.loads(json.dumps(tally.to_dict())))
    assert other == tally
    other.merge(tally)
    assert (other.stale_lock_refusals, other.stale_lock_retries) == (2, 2)
