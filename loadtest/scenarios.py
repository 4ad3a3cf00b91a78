"""What a simulated customer does next: the operations of each load scenario.

Pure: no HTTP, no Locust. The locustfile asks `choose_operation` for the next
operation and sends `operation.path` / `operation.body`; the tally asks
`operation.deltas` what an acknowledged operation did to each balance.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

SCENARIOS = ("deposits", "withdrawals", "transfers", "mixed", "deadlock")
DEFAULT_SCENARIO = "mixed"
DEFAULT_ACCOUNT_COUNT = 5
DEFAULT_OPENING_BALANCE = 10_000
DEFAULT_AMOUNT = 10
# The deadlock lesson needs exactly one pair of accounts and opposing transfers.
DEADLOCK_ACCOUNT_COUNT = 2
# Mixed load: as many deposits as withdrawals, so balances wander around the
# opening balance, and as many transfers as both, to stress the two-account lock.
MIXED_WEIGHTS = {"deposit": 1, "withdraw": 1, "transfer": 2}

OPERATION_KINDS = ("deposit", "withdraw", "transfer")


@dataclass(frozen=True)
class Operation:
    """One money operation the load test sends: a deposit, a withdrawal or a transfer."""

    kind: str
    account_id: int
    amount: int
    target_account_id: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in OPERATION_KINDS:
            raise ValueError(f"unknown operation kind {self.kind!r}")
        if self.amount <= 0:
            raise ValueError("an operation moves a positive amount")
        if (self.kind == "transfer") != (self.target_account_id is not None):
            raise ValueError("a transfer, and only a transfer, has a target account")
        if self.account_id == self.target_account_id:
            raise ValueError("a transfer needs two different accounts")

    @property
    def path(self) -> str:
        if self.kind == "transfer":
            return "/transfers"
        return f"/accounts/{self.account_id}/{self.kind}"

    @property
    def body(self) -> dict[str, int]:
        if self.kind == "transfer":
            assert self.target_account_id is not None
            return {
                "from_account": self.account_id,
                "to_account": self.target_account_id,
                "amount": self.amount,
            }
        return {"amount": self.amount}

    def deltas(self) -> list[tuple[int, int]]:
        """(account id, signed change of its balance) if the operation took effect."""
        if self.kind == "deposit":
            return [(self.account_id, self.amount)]
        if self.kind == "withdraw":
            return [(self.account_id, -self.amount)]
        assert self.target_account_id is not None
        return [(self.account_id, -self.amount), (self.target_account_id, self.amount)]


def account_count_for(scenario: str, requested_account_count: int) -> int:
    """How many accounts a scenario opens: the deadlock lesson always uses one pair."""
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}; choose one of {', '.join(SCENARIOS)}")
    if scenario == "deadlock":
        return DEADLOCK_ACCOUNT_COUNT
    minimum_account_count = 2 if scenario in ("transfers", "mixed") else 1
    if requested_account_count < minimum_account_count:
        raise ValueError(f"scenario {scenario} needs at least {minimum_account_count} accounts")
    return requested_account_count


def choose_operation(
    scenario: str, account_ids: list[int], amount: int, rng: random.Random
) -> Operation:
    """The next operation of a customer in `scenario` over the hot `account_ids`."""
    if scenario == "deposits":
        return Operation("deposit", rng.choice(account_ids), amount)
    if scenario == "withdrawals":
        return Operation("withdraw", rng.choice(account_ids), amount)
    if scenario in ("transfers", "deadlock"):
        # In the deadlock scenario there are two accounts, so half of the
        # transfers go A→B and half B→A: opposing lock orders.
        source_account_id, target_account_id = rng.sample(account_ids, 2)
        return Operation("transfer", source_account_id, amount, target_account_id)
    if scenario == "mixed":
        kinds = list(MIXED_WEIGHTS)
        kind = rng.choices(kinds, weights=[MIXED_WEIGHTS[name] for name in kinds])[0]
        if kind == "transfer":
            source_account_id, target_account_id = rng.sample(account_ids, 2)
            return Operation("transfer", source_account_id, amount, target_account_id)
        return Operation(kind, rng.choice(account_ids), amount)
    raise ValueError(f"unknown scenario {scenario!r}")
