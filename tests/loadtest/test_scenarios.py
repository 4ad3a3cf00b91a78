"""Unit tests of the load scenarios: what each simulated customer sends."""

from __future__ import annotations

import random

import pytest

from loadtest.scenarios import SCENARIOS, Operation, account_count_for, choose_operation

ACCOUNT_IDS = [11, 12, 13, 14, 15]


def test_deposit_and_withdrawal_follow_the_api_contract() -> None:
    """A deposit and a withdrawal post {"amount"} to the account's own path."""
    assert Operation("deposit", 7, 50).path == "/accounts/7/deposit"
    assert Operation("withdraw", 7, 30).path == "/accounts/7/withdraw"
    assert Operation("withdraw", 7, 30).body == {"amount": 30}


def test_transfer_follows_the_api_contract() -> None:
    """A transfer posts from_account, to_account and amount to /transfers."""
    transfer = Operation("transfer", 1, 25, target_account_id=2)
    assert transfer.path == "/transfers"
    assert transfer.body == {"from_account": 1, "to_account": 2, "amount": 25}


@pytest.mark.parametrize(
    ("operation", "deltas"),
    [
        (Operation("deposit", 1, 10), [(1, 10)]),
        (Operation("withdraw", 1, 10), [(1, -10)]),
        (Operation("transfer", 1, 10, 2), [(1, -10), (2, 10)]),
    ],
)
def test_deltas_say_what_an_acknowledged_operation_did(
    operation: Operation, deltas: list[tuple[int, int]]
) -> None:
    """Deltas are the signed balance changes an acknowledgement promises."""
    assert operation.deltas() == deltas


@pytest.mark.parametrize(
    ("kind", "account_id", "amount", "target_account_id"),
    [
        ("refund", 1, 10, None),
        ("deposit", 1, 0, None),
        ("deposit", 1, -5, None),
        ("deposit", 1, 10, 2),
        ("transfer", 1, 10, None),
        ("transfer", 1, 10, 1),
    ],
)
def test_impossible_operations_are_rejected(
    kind: str, account_id: int, amount: int, target_account_id: int | None
) -> None:
    """Unknown kinds, non-positive amounts and malformed transfers cannot be built."""
    with pytest.raises(ValueError):
        Operation(kind, account_id, amount, target_account_id)


@pytest.mark.parametrize(
    ("scenario", "kind"), [("deposits", "deposit"), ("withdrawals", "withdraw")]
)
def test_single_kind_scenarios_send_only_that_kind(scenario: str, kind: str) -> None:
    """deposits and withdrawals scenarios send nothing else, to the hot accounts only."""
    rng = random.Random(1)
    operations = [choose_operation(scenario, ACCOUNT_IDS, 10, rng) for _ in range(200)]
    assert {operation.kind for operation in operations} == {kind}
    assert {operation.account_id for operation in operations} == set(ACCOUNT_IDS)


def test_mixed_scenario_sends_all_three_kinds() -> None:
    """mixed drives deposits, withdrawals and transfers."""
    rng = random.Random(2)
    kinds = {choose_operation("mixed", ACCOUNT_IDS, 10, rng).kind for _ in range(200)}
    assert kinds == {"deposit", "withdraw", "transfer"}


def test_deadlock_scenario_sends_opposing_transfers_between_one_pair() -> None:
    """deadlock sends transfers A→B and B→A, nothing else."""
    rng = random.Random(3)
    directions = {
        (operation.account_id, operation.target_account_id)
        for operation in (choose_operation("deadlock", [1, 2], 10, rng) for _ in range(100))
    }
    assert directions == {(1, 2), (2, 1)}


def test_unknown_scenario_is_rejected() -> None:
    """A scenario that does not exist fails loudly instead of sending nothing."""
    with pytest.raises(ValueError):
        choose_operation("payday", ACCOUNT_IDS, 10, random.Random())
    with pytest.raises(ValueError):
        account_count_for("payday", 5)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_account_count(scenario: str) -> None:
    """The deadlock lesson uses exactly one pair; the others open what was asked."""
    assert account_count_for(scenario, 7) == (2 if scenario == "deadlock" else 7)


def test_transfers_need_two_accounts() -> None:
    """A transfer scenario over a single account is refused up front."""
    with pytest.raises(ValueError):
        account_count_for("transfers", 1)
    assert account_count_for("deposits", 1) == 1
