"""Model-based test with mode switches between safe modes while operations are in flight.

After `PUT /mode` every worker serves the old mode for a moment, so requests
in two safe modes meet on the same accounts. The machine of test_model.py
gains two actions: `switch_mode` (the next operations run in another safe
mode: locked, optimistic, atomic or fenced) and `switch_while_in_flight`:
an operation in mode A is held between its read and its write (the gate of
tests/support/interleaving.py), an operation in mode B != A runs meanwhile
-- to its end, or until it provably waits for A's lock -- and then A goes on.

The pair must leave the books of one serial order of the two (either one):
each answer, accepted or refused, is judged against the reference bank played
in that order, and the whole books are compared after every step (balances,
versions, audits, chained journals, the bank's total). The only extra
refusal allowed is A's 409 stale_lock when A is fenced and B wrote one of
its accounts in A's gap (DESIGN §2: nothing written).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import rule, run_state_machine_as_test

from service import services
from service.domain import DomainError, LockMode, ModeSetting, StaleLock, TransactionKind
from service.keyed_locks import KeyedLocks
from service.redis_locks import RedisLocks
from service.services import Bank, ModeSource
from service.stores.base import Store, Written
from tests.integration.test_model import (
    AMOUNTS,
    MACHINE_SETTINGS,
    NO_SHRINKING,
    PICKS,
    SHIFTS,
    BankMachine,
    Tally,
    as_entry,
)
from tests.support.bank_model import LOCK_TIMEOUT_MS, ReferenceBank, store_supply
from tests.support.interleaving import (
    HOLD_MARKER_MS,
    GapGate,
    Outcome,
    WaitProbe,
    install_gate,
    interleave,
)
from tests.support.redis_service import delete_prefix, redis_url, unique_prefix

SWITCH_MODES = [LockMode.LOCKED, LockMode.OPTIMISTIC, LockMode.ATOMIC, LockMode.FENCED]
# The in-memory store is cheap: fresh random histories each run, enough of
# them to meet every pair. SQLite and PostgreSQL compare the books in SQL
# after every step (seconds per example), so they replay one fixed sample
# (derandomize): the pairs it covers, asserted below, are then a property of
# the test rather than of a lucky seed.
EXAMPLES = {"memory": 120, "sqlite": 15, "postgres": 9}
MIN_HELD_PAIRS = 10  # of the 12 ordered pairs of safe modes
REDIS_LEASE_MS = 10_000  # outlives any hold: a stale_lock here is never an expired lease
# Deposits rarely fail before the gap, so most pairs really meet mid-operation.
KINDS = st.sampled_from(["deposit", "deposit", "withdraw", "transfer"])
# B's account is A's (0) more often than not: the interesting pairs overlap.
NUDGES = st.sampled_from([0, 0, 0, 1, 2])


@dataclass(frozen=True)
class Planned:
    """One operation of a pair: its mode and what it does."""

    mode: LockMode
    kind: str
    source: int
    target: int  # the transfer's other account (== source otherwise)
    amount: int

    def accounts(self) -> set[int]:
        return {self.source, self.target}

    def run(self, bank: Bank, race_window_ms: int) -> Callable[[], object]:
        setting = ModeSetting(self.mode, race_window_ms)
        if self.kind == "deposit":
            return lambda: services.deposit(self.source, self.amount, setting, bank)
        if self.kind == "withdraw":
            return lambda: services.withdraw(self.source, self.amount, setting, bank)
        return lambda: services.transfer(self.source, self.target, self.amount, setting, bank)


def plays(model: ReferenceBank, planned: Planned, outcome: Outcome, may_be_stale: bool) -> bool:
    """Whether the outcome is what the model says, played now; the model books it if so."""
    if outcome.raised is not None and not isinstance(outcome.raised, DomainError):
        raise outcome.raised  # a crash, never an acceptable answer
    if planned.kind == "transfer":
        refusals = model.transfer_refusals(planned.source, planned.target, planned.amount)
    else:
        delta = planned.amount if planned.kind == "deposit" else -planned.amount
        refusals = model.single_refusals(planned.source, delta)
    if outcome.raised is not None:
        stale = may_be_stale and isinstance(outcome.raised, StaleLock)
        return stale or type(outcome.raised) in refusals
    if refusals or not isinstance(outcome.result, Written):
        return False
    written, mode = outcome.result, planned.mode.value
    if planned.kind != "transfer":
        kind = TransactionKind.DEPOSIT if planned.kind == "deposit" else TransactionKind.WITHDRAWAL
        expected = model.apply(planned.source, kind, planned.amount, mode, None)
        return [as_entry(entry) for entry in written.transactions] == [expected]
    if written.transfer is None:
        return False
    transfer_id = written.transfer.id
    expected_legs = {
        model.apply(
            planned.source, TransactionKind.TRANSFER_OUT, planned.amount, mode, transfer_id
        ),
        model.apply(planned.target, TransactionKind.TRANSFER_IN, planned.amount, mode, transfer_id),
    }
    return {as_entry(leg) for leg in written.transfer.legs} == expected_legs


class SwitchingBankMachine(BankMachine):
    """test_model.py's machine, plus mode switches with an operation held in its gap."""

    def __init__(
        self,
        new_store: Callable[[], Store],
        tally: Tally,
        gate: GapGate,
        redis_locks: RedisLocks,
        postgres_url: str | None,
    ) -> None:
        super().__init__(new_store, LockMode.LOCKED, tally)
        self.bank = Bank(
            store=self.store,
            modes=ModeSource(self.store, allow_unsafe_modes=False),
            process_locks=KeyedLocks(LOCK_TIMEOUT_MS),
            lock_timeout_ms=LOCK_TIMEOUT_MS,
            redis_locks=redis_locks,
        )
        self.gate = gate
        self.probe = WaitProbe(self.store, postgres_url)

    def teardown(self) -> None:
        self.probe.close()

    @rule(mode=st.sampled_from(SWITCH_MODES))
    def switch_mode(self, mode: LockMode) -> None:
        self.mode, self.setting = mode.value, ModeSetting(mode, 0)

    @rule(
        held_mode=st.sampled_from(SWITCH_MODES),
        other_offset=st.sampled_from(range(1, len(SWITCH_MODES))),
        held_kind=KINDS,
        other_kind=KINDS,
        pick=PICKS,
        nudge=NUDGES,
        shifts=st.tuples(SHIFTS, SHIFTS),
        amounts=st.tuples(AMOUNTS, AMOUNTS),
    )
    def switch_while_in_flight(
        self,
        held_mode: LockMode,
        other_offset: int,
        held_kind: str,
        other_kind: str,
        pick: int,
        nudge: int,
        shifts: tuple[int, int],
        amounts: tuple[int, int],
    ) -> None:
        """A in its gap, B (another safe mode) meanwhile, then A: one serial order's books."""
        self.tally.steps += 1
        other_mode = SWITCH_MODES[(SWITCH_MODES.index(held_mode) + other_offset) % 4]
        held = self.plan(held_mode, held_kind, pick, shifts[0], amounts[0])
        other = self.plan(other_mode, other_kind, pick + nudge, shifts[1], amounts[1])
        held_outcome, other_outcome, paused = interleave(
            held.run(self.bank, HOLD_MARKER_MS),
            other.run(self.bank, 0),
            self.gate,
            self.probe if held_mode is LockMode.LOCKED else None,
        )
        other_wrote = other_outcome.raised is None and bool(held.accounts() & other.accounts())
        may_be_stale = held_mode is LockMode.FENCED and other_wrote
        for first, second in (
            ((held, held_outcome, may_be_stale), (other, other_outcome, False)),
            ((other, other_outcome, False), (held, held_outcome, may_be_stale)),
        ):
            model = copy.deepcopy(self.model)
            if plays(model, *first) and plays(model, *second):
                self.model = model
                break
        else:
            raise AssertionError(
                f"no serial order of the pair explains its answers:\n"
                f"  held  {held}: {held_outcome}\n  other {other}: {other_outcome}\n"
                f"  model before: {self.model.accounts}"
            )
        stale = isinstance(held_outcome.raised, StaleLock)
        self.tally.outcomes[
            f"in flight {held_mode.value}/{other_mode.value}"
            f"{' held' if paused else ''}{' stale_lock' if stale else ''}"
        ] += 1

    def plan(self, mode: LockMode, kind: str, pick: int, shift: int, amount: int) -> Planned:
        source, target = self.account_id(pick), self.other_account_id(pick, shift)
        if kind != "transfer":
            target = source
        return Planned(mode, kind, source, target, amount)


def test_mode_switches_with_operations_in_flight_agree_with_the_reference_model(
    backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every pair of safe modes meeting mid-operation leaves the books of a serial order."""
    gate = install_gate(monkeypatch)
    url, prefix = redis_url(), unique_prefix("model-switch")
    tally = Tally()
    started = time.monotonic()
    try:
        with store_supply(backend, tmp_path) as supply:
            redis_locks = RedisLocks(
                url, lease_ms=REDIS_LEASE_MS, lock_timeout_ms=LOCK_TIMEOUT_MS, key_prefix=prefix
            )
            postgres_url = supply.url if backend == "postgres" else None
            machine_settings = settings(MACHINE_SETTINGS, max_examples=EXAMPLES[backend])
            if backend != "memory":  # and no shrinking (minutes here; memory shrinks in seconds)
                machine_settings = settings(
                    machine_settings, derandomize=True, database=None, phases=NO_SHRINKING
                )
            run_state_machine_as_test(
                lambda: SwitchingBankMachine(supply.fresh, tally, gate, redis_locks, postgres_url),
                settings=machine_settings,
            )
    finally:
        delete_prefix(url, prefix)
    print(f"\nmode-switch model {backend}: {tally.summary()} in {time.monotonic() - started:.1f}s")
    in_flight = {name for name in tally.outcomes if name.startswith("in flight")}
    held_pairs = {name.split()[2] for name in in_flight if " held" in name}
    assert len(held_pairs) >= MIN_HELD_PAIRS, (
        f"too few mode pairs were held mid-operation: {held_pairs}"
    )
    assert any("stale_lock" in name for name in in_flight), "no fenced write met another mode"
