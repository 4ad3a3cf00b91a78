"""What a simulated customer does next: the operations of each load scenario.

Pure: no HTTP, no Locust. The locustfile asks `choose_operation` for the next
operation and sends `operation.path` / `operation.body`; the tally asks
`operation.deltas` what an acknowledged operation did to each balance.

The `holds` scenario (DESIGN §3 "Holds (two-phase)") is a sequence per hold
rather than one request: `choose_hold_plan` picks what a customer does with
one hold (capture it, capture part, void it, let it expire and capture too
late, race two captures, race a capture with a void, leave it pending, or
place two holds at once), and `HoldPlan.actions` gives the requests sent
together once the hold exists.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

SCENARIOS = ("deposits", "withdrawals", "transfers", "mixed", "deadlock", "holds")
DEFAULT_SCENARIO = "mixed"
DEFAULT_ACCOUNT_COUNT = 5
DEFAULT_OPENING_BALANCE = 10_000
DEFAULT_AMOUNT = 10
# The deadlock lesson needs exactly one pair of accounts and opposing transfers.
DEADLOCK_ACCOUNT_COUNT = 2
# Mixed load: as many deposits as withdrawals, so balances wander around the
# opening balance, and as many transfers as both, to stress the two-account lock.
MIXED_WEIGHTS = {"deposit": 1, "withdraw": 1, "transfer": 2}

OPERATION_KINDS = ("deposit", "withdraw", "transfer", "hold", "capture", "void")
HOLD_ACTION_KINDS = ("capture", "void")  # requests on an existing hold (/holds/{id}/...)

# Holds: each hold is an eighth of the opening balance (at least --bank-amount), so
# eight pending holds fill an account and racing placements can over-hold it.
HOLDS_PER_BALANCE = 8
HOLD_PLANS = (
    "capture",  # capture the whole hold
    "partial_capture",  # capture half, the rest is released
    "void",
    "expire",  # let it expire, then try to capture it (must be refused)
    "double_capture",  # two captures of the same hold at once (one must be refused)
    "capture_void",  # a capture and a void of the same hold at once (one must be refused)
    "leave_pending",  # place it and leave it: it counts in `held` until it expires
    "racing_holds",  # two holds on the same account at once (available must stay >= 0)
)
# Seconds a hold lives: the shortest the API takes for the hold meant to expire
# and for the ones left pending (so that they free the account again at once in
# a short run), and long enough for the others to be captured or voided.
EXPIRING_HOLD_SECONDS = 1
PENDING_HOLD_SECONDS = 1
ACTED_ON_HOLD_SECONDS = 30


@dataclass(frozen=True)
class Operation:
    """One money operation the load test sends: a deposit, a withdrawal or a transfer."""

    kind: str
    account_id: int
    amount: int  # a hold's amount, the amount captured, or the voided hold's amount
    target_account_id: int | None = None
    hold_id: int | None = None  # capture and void
    expires_in_s: int | None = None  # hold

    def __post_init__(self) -> None:
        if self.kind not in OPERATION_KINDS:
            raise ValueError(f"unknown operation kind {self.kind!r}")
        if self.amount <= 0:
            raise ValueError("an operation moves a positive amount")
        if (self.kind == "transfer") != (self.target_account_id is not None):
            raise ValueError("a transfer, and only a transfer, has a target account")
        if self.account_id == self.target_account_id:
            raise ValueError("a transfer needs two different accounts")
        if (self.kind in HOLD_ACTION_KINDS) != (self.hold_id is not None):
            raise ValueError("a capture or a void, and only they, name a hold")
        if (self.kind == "hold") != (self.expires_in_s is not None):
            raise ValueError("a hold, and only a hold, has an expiry")

    @property
    def path(self) -> str:
        if self.kind == "transfer":
            return "/transfers"
        if self.kind == "hold":
            return f"/accounts/{self.account_id}/holds"
        if self.kind in HOLD_ACTION_KINDS:
            return f"/holds/{self.hold_id}/{self.kind}"
        return f"/accounts/{self.account_id}/{self.kind}"

    @property
    def body(self) -> dict[str, int] | None:
        """The JSON body; None for a void, which takes none (DESIGN §3)."""
        if self.kind == "void":
            return None
        if self.kind == "hold":
            assert self.expires_in_s is not None
            return {"amount": self.amount, "expires_in_s": self.expires_in_s}
        if self.kind == "transfer":
            assert self.target_account_id is not None
            return {
                "from_account": self.account_id,
                "to_account": self.target_account_id,
                "amount": self.amount,
            }
        return {"amount": self.amount}

    def deltas(self) -> list[tuple[int, int]]:
        """(account id, signed change of its balance) if the operation took effect.

        A hold and a void change no balance (a hold lowers `available` only); a
        capture takes the captured amount out of the balance.
        """
        if self.kind in ("hold", "void"):
            return []
        if self.kind == "capture":
            return [(self.account_id, -self.amount)]
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
    if scenario == "holds":
        raise ValueError("the holds scenario sends plans: use choose_hold_plan")
    if scenario == "mixed":
        kinds = list(MIXED_WEIGHTS)
        kind = rng.choices(kinds, weights=[MIXED_WEIGHTS[name] for name in kinds])[0]
        if kind == "transfer":
            source_account_id, target_account_id = rng.sample(account_ids, 2)
            return Operation("transfer", source_account_id, amount, target_account_id)
        return Operation(kind, rng.choice(account_ids), amount)
    raise ValueError(f"unknown scenario {scenario!r}")


def scenario_amount(scenario: str, amount: int, opening_balance: int) -> int:
    """The amount a run moves: in `holds`, each hold is at least an eighth of the opening."""
    if scenario == "holds":
        return max(amount, opening_balance // HOLDS_PER_BALANCE, 2)
    return amount


@dataclass(frozen=True)
class HoldPlan:
    """What one customer does with one hold (or, for racing_holds, two)."""

    name: str
    account_id: int
    amount: int

    def __post_init__(self) -> None:
        if self.name not in HOLD_PLANS:
            raise ValueError(f"unknown hold plan {self.name!r}")
        if self.amount < 2:
            raise ValueError("a hold plan needs an amount of 2 or more (half is captured)")

    @property
    def expires_in_s(self) -> int:
        if self.name == "expire":
            return EXPIRING_HOLD_SECONDS
        if self.name in ("leave_pending", "racing_holds"):
            return PENDING_HOLD_SECONDS
        return ACTED_ON_HOLD_SECONDS

    @property
    def placements(self) -> tuple[Operation, ...]:
        """The hold requests, sent together."""
        hold = Operation("hold", self.account_id, self.amount, expires_in_s=self.expires_in_s)
        return (hold, hold) if self.name == "racing_holds" else (hold,)

    @property
    def waits_for_expiry(self) -> bool:
        return self.name == "expire"

    def actions(self, hold_id: int) -> tuple[Operation, ...]:
        """The requests on the placed hold, sent together (none: it is left pending)."""
        capture = Operation("capture", self.account_id, self.amount, hold_id=hold_id)
        void = Operation("void", self.account_id, self.amount, hold_id=hold_id)
        if self.name in ("capture", "expire"):
            return (capture,)
        if self.name == "partial_capture":
            return (Operation("capture", self.account_id, self.amount // 2, hold_id=hold_id),)
        if self.name == "void":
            return (void,)
        if self.name == "double_capture":
            return (capture, capture)
        if self.name == "capture_void":
            return (capture, void)
        return ()


def choose_hold_plan(account_ids: list[int], amount: int, rng: random.Random) -> HoldPlan:
    """The next hold plan of a customer in the holds scenario, every plan equally often."""
    return HoldPlan(rng.choice(HOLD_PLANS), rng.choice(account_ids), amount)
