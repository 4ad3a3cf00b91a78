"""The Jepsen-style bank workload with holders, against a stand-in bank with holds.

Holders place holds of up to an account's opening balance while writers
transfer money out of the same accounts: a bank that checks `available`
keeps every read's held within its balance (a valid history); one that
checks nothing lets held pass the balance, and the checker must say so. Both
ways of reading held are exercised: beside the snapshot, when GET /balances
reports it, and from each account's own GET otherwise.
"""

from __future__ import annotations

import pytest

from loadtest.jepsen_bank import WorkloadOptions, run_workload
from loadtest.jepsen_checker import check
from tests.loadtest.holds_fake_bank import FakeHoldsBank, serving

OPTIONS = WorkloadOptions(
    accounts=2,
    opening_balance=20,
    writers=2,
    readers=1,
    holders=2,
    duration_seconds=1.0,
    max_amount=5,
    request_timeout_seconds=5.0,
    final_read_deadline_seconds=5.0,
    seed=7,
)


@pytest.mark.parametrize("balances_show_held", [False, True])
def test_a_bank_that_checks_available_keeps_every_hold_within_the_balance(
    balances_show_held: bool,
) -> None:
    with serving(FakeHoldsBank(careful=True, balances_show_held=balances_show_held)) as url:
        history = run_workload(url, OPTIONS)
    report = check(history.to_dict())
    assert report.valid, report.problems
    assert report.reads_with_holds > 0 and report.overheld_reads == 0
    assert report.outcomes["hold"]["ok"] > 0 and report.outcomes["void"]["ok"] > 0
    assert report.outcomes["hold"].get("fail", 0) > 0  # refused: more than available
    reads = [op for op in history.snapshot() if op["f"] == "read" and op["type"] == "ok"]
    assert all(("held" in op) == balances_show_held for op in reads)
    assert all(("held_reads" in op) != balances_show_held for op in reads)


@pytest.mark.parametrize("balances_show_held", [False, True])
def test_a_bank_that_checks_nothing_shows_held_above_the_balance(
    balances_show_held: bool,
) -> None:
    with serving(FakeHoldsBank(careful=False, balances_show_held=balances_show_held)) as url:
        history = run_workload(url, OPTIONS)
    report = check(history.to_dict())
    assert not report.valid
    assert report.overheld_reads > 0
    assert any("available below zero" in problem for problem in report.problems)
