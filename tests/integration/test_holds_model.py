"""Model-based test of holds: random histories of holds, captures, voids and money
movements, each step in a random safe mode, agree with a plain model on every store.

A hypothesis RuleBasedStateMachine places holds, captures them (all or part,
or too much), voids them, captures or voids them again, and withdraws,
deposits and transfers out against the same account, each step served by a
safe mode drawn at random (so consecutive steps also switch modes). Every
answer -- accepted, insufficient_funds, hold_not_pending, validation_error --
is compared with the model, and after every step the account's balance,
held and available money, every hold's status and captured amount, and the
store's audit (consistent, no hold anomaly) are compared whole.

Expiry is left out here on purpose: it depends on the clock, which a
generated history cannot control without sleeping; tests/api/test_holds.py
and tests/integration/test_hold_races.py cover it.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from service import services
from service.domain import (
    DomainError,
    HoldNotPending,
    HoldStatus,
    InsufficientFunds,
    LockMode,
    ModeSetting,
    ValidationFailed,
)
from service.keyed_locks import KeyedLocks
from service.services import Bank, ModeSource
from service.stores.base import Store
from tests.support.bank_model import LOCK_TIMEOUT_MS, store_supply

SAFE_MODES = st.sampled_from([LockMode.LOCKED, LockMode.OPTIMISTIC, LockMode.ATOMIC])
EXAMPLES = {"memory": 40, "sqlite": 20, "postgres": 10}
MACHINE_SETTINGS = settings(
    max_examples=EXAMPLES["memory"],
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
NO_SHRINKING = [Phase.explicit, Phase.reuse, Phase.generate]
COVERAGE_RUNS = 6
AMOUNTS = st.integers(1, 400)
HOLD_PICKS = st.integers(0, 20)
# A capture of the whole hold (no amount), of half of it, or of one unit too much.
CAPTURE_SIZES = st.sampled_from([None, None, "part", "over"])
EXPIRES_IN_S = 3600  # never reached during a run


@dataclass
class ModelHold:
    amount: int
    status: HoldStatus = HoldStatus.PENDING
    captured_amount: int | None = None


@dataclass
class Tally:
    examples: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)


def attempt(operation: Callable[[], object]) -> object:
    try:
        return operation()
    except DomainError as refusal:
        return refusal


class HoldsMachine(RuleBasedStateMachine):
    def __init__(self, new_store: Callable[[], Store], tally: Tally) -> None:
        super().__init__()
        self.store = new_store()
        self.bank = Bank(
            store=self.store,
            modes=ModeSource(self.store, allow_unsafe_modes=False),
            process_locks=KeyedLocks(LOCK_TIMEOUT_MS),
            lock_timeout_ms=LOCK_TIMEOUT_MS,
        )
        self.tally = tally
        tally.examples += 1
        self.balance = 0
        self.holds: dict[int, ModelHold] = {}
        self.order: list[int] = []

    @property
    def held(self) -> int:
        return sum(hold.amount for hold in self.holds.values() if hold.status is HoldStatus.PENDING)

    def judge(self, name: str, outcome: object, refusal: type[DomainError] | None) -> bool:
        """True if the operation was accepted; fails unless the model agrees."""
        expected = "accepted" if refusal is None else refusal.__name__
        actual = type(outcome).__name__ if isinstance(outcome, DomainError) else "accepted"
        assert actual == expected, (name, outcome)
        self.tally.outcomes[f"{name} {actual}"] += 1
        return refusal is None

    @initialize(opening=st.integers(0, 1000))
    def open_accounts(self, opening: int) -> None:
        self.account = self.store.open_account("holder", "USD", opening, "locked")
        self.other = self.store.open_account("payee", "USD", 0, "locked")
        self.balance = opening

    @rule(amount=AMOUNTS, mode=SAFE_MODES)
    def place(self, amount: int, mode: LockMode) -> None:
        outcome = attempt(
            lambda: services.place_hold(
                self.account.id, amount, EXPIRES_IN_S, ModeSetting(mode, 0), self.bank
            )
        )
        covered = amount <= self.balance - self.held
        if self.judge("hold", outcome, None if covered else InsufficientFunds):
            hold = getattr(outcome, "hold")  # noqa: B009  # a Written
            self.holds[hold.id] = ModelHold(amount)
            self.order.append(hold.id)

    @rule(pick=HOLD_PICKS, size=CAPTURE_SIZES, mode=SAFE_MODES)
    def capture(self, pick: int, size: str | None, mode: LockMode) -> None:
        if not self.order:
            return
        hold_id = self.order[pick % len(self.order)]
        hold = self.holds[hold_id]
        amount = {None: None, "part": max(1, hold.amount // 2), "over": hold.amount + 1}[size]
        outcome = attempt(
            lambda: services.capture_hold(hold_id, amount, ModeSetting(mode, 0), self.bank)
        )
        captured = hold.amount if amount is None else amount
        refusal: type[DomainError] | None = None
        if captured > hold.amount:
            refusal = ValidationFailed
        elif hold.status is not HoldStatus.PENDING:
            refusal = HoldNotPending
        if self.judge("capture", outcome, refusal):
            hold.status, hold.captured_amount = HoldStatus.CAPTURED, captured
            self.balance -= captured

    @rule(pick=HOLD_PICKS, mode=SAFE_MODES)
    def void(self, pick: int, mode: LockMode) -> None:
        if not self.order:
            return
        hold_id = self.order[pick % len(self.order)]
        hold = self.holds[hold_id]
        outcome = attempt(lambda: services.void_hold(hold_id, ModeSetting(mode, 0), self.bank))
        pending = hold.status is HoldStatus.PENDING
        if self.judge("void", outcome, None if pending else HoldNotPending):
            hold.status = HoldStatus.VOIDED

    @rule(amount=AMOUNTS, mode=SAFE_MODES)
    def withdraw(self, amount: int, mode: LockMode) -> None:
        outcome = attempt(
            lambda: services.withdraw(self.account.id, amount, ModeSetting(mode, 0), self.bank)
        )
        covered = amount <= self.balance - self.held
        if self.judge("withdrawal", outcome, None if covered else InsufficientFunds):
            self.balance -= amount

    @rule(amount=AMOUNTS, mode=SAFE_MODES)
    def transfer_out(self, amount: int, mode: LockMode) -> None:
        setting = ModeSetting(mode, 0)
        outcome = attempt(
            lambda: services.transfer(self.account.id, self.other.id, amount, setting, self.bank)
        )
        covered = amount <= self.balance - self.held
        if self.judge("transfer", outcome, None if covered else InsufficientFunds):
            self.balance -= amount

    @rule(amount=AMOUNTS, mode=SAFE_MODES)
    def deposit(self, amount: int, mode: LockMode) -> None:
        services.deposit(self.account.id, amount, ModeSetting(mode, 0), self.bank)
        self.tally.outcomes["deposit accepted"] += 1
        self.balance += amount

    @invariant()
    def the_store_agrees_with_the_model(self) -> None:
        if not hasattr(self, "account"):
            return
        account = self.store.get_account(self.account.id)
        assert (account.balance, account.held, account.available) == (
            self.balance,
            self.held,
            self.balance - self.held,
        )
        for hold_id, expected in self.holds.items():
            stored = services.hold_now(hold_id, self.bank)
            assert (stored.status, stored.captured_amount) == (
                expected.status,
                expected.captured_amount,
            ), hold_id
        audit = self.store.audit_account(self.account.id)
        assert audit.consistent and audit.holds.anomalies == 0, audit
        assert audit.holds.held == self.held


def uncovered(tally: Tally) -> list[str]:
    """The outcomes every run must have met at least once, that these runs have not."""
    wanted = ["hold accepted", "capture accepted", "void accepted", "capture HoldNotPending",
              "hold InsufficientFunds"]  # fmt: skip
    return [outcome for outcome in wanted if tally.outcomes[outcome] == 0]


def test_random_hold_histories_agree_with_the_model(backend: str, tmp_path: Path) -> None:
    """Every answer and refusal, the balance, held, available and each hold match the model."""
    tally = Tally()
    started = time.monotonic()
    with store_supply(backend, tmp_path) as supply:
        machine_settings = settings(MACHINE_SETTINGS, max_examples=EXAMPLES[backend])
        if backend == "postgres":
            machine_settings = settings(machine_settings, phases=NO_SHRINKING)
        # One run of random histories missed an accepted capture or void about one time in
        # three (Hypothesis favours short, simple histories): more runs until each outcome
        # below was met, so that the checks below test the model, not the dice.
        for _ in range(COVERAGE_RUNS):
            run_state_machine_as_test(
                lambda: HoldsMachine(supply.fresh, tally), settings=machine_settings
            )
            if not uncovered(tally):
                break
    outcomes = ", ".join(f"{name} {count}" for name, count in sorted(tally.outcomes.items()))
    print(
        f"\nholds model {backend}: {tally.examples} examples in "
        f"{time.monotonic() - started:.1f}s: {outcomes}"
    )
    assert tally.examples >= EXAMPLES[backend]
    assert uncovered(tally) == []
