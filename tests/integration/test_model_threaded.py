"""Concurrent random operations on one store: the books equal exactly what was acknowledged.

THREADS threads each run a bounded number of random deposits, withdrawals
and transfers (bounded) among a few hot accounts of one store, through
`service.services`, and record every acknowledged result (the journal entry
or transfer the store returned) and every refusal. Afterwards `judge`
compares the books with the acknowledged history alone: each balance equals
its opening plus the acknowledged effects, each journal holds exactly the
acknowledged entries and chains, each audit is consistent, no balance is
negative, and the total changed only by acknowledged deposits and
withdrawals. A refusal must be one that changes nothing (insufficient funds,
and the honest 503s write_conflict and lock_timeout).

Every safe mode on every store must pass with a race window of 0; the same
`judge` must catch `unlocked` with a race window of a few milliseconds on
the in-memory store, which proves the checker can fail.
"""

from __future__ import annotations

import os
import random
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from service import services
from service.domain import (
    InsufficientFunds,
    LockMode,
    LockTimeout,
    ModeSetting,
    Transaction,
    TransactionKind,
    Transfer,
    WriteConflict,
)
from service.keyed_locks import KeyedLocks
from service.redis_locks import RedisLocks
from service.services import Bank, ModeSource
from service.stores.base import Store, Written
from tests.support.bank_model import JOURNAL_PAGE, LOCK_TIMEOUT_MS, store_supply

SAFE_MODES = [LockMode.LOCKED, LockMode.OPTIMISTIC, LockMode.ATOMIC]
THREADS = 6
# The in-memory store is cheap, so it runs longer histories.
OPERATIONS_PER_THREAD = {"memory": 200, "sqlite": 60, "postgres": 60}
# Python switches threads every 5 ms by default: a thread would run dozens of
# in-memory operations uninterrupted. Switching every 10 us interleaves them.
SWITCH_INTERVAL_SECONDS = 1e-5
ACCOUNTS = 4
OPENING = 1_000
MAX_OPERATION_AMOUNT = 300  # some withdrawals and transfers will be overdrafts
RUN_DEADLINE_SECONDS = 60
UNSAFE_RACE_WINDOW_MS = 3
# Refusals that change nothing; anything else raised is a failure.
HARMLESS_REFUSALS = (InsufficientFunds, WriteConflict, LockTimeout)


def chosen_seed() -> int:
    """MODEL_TEST_SEED replays a run's operations (not its interleaving); else a new seed."""
    return int(os.environ.get("MODEL_TEST_SEED", random.randrange(2**32)))


@dataclass
class History:
    """What every thread was told: acknowledged results, refusals, unexpected errors."""

    entries: list[Transaction] = field(default_factory=list)
    transfers: list[Transfer] = field(default_factory=list)
    refusals: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    guard: threading.Lock = field(default_factory=threading.Lock)

    def acknowledged_entries(self) -> list[Transaction]:
        return self.entries + [leg for transfer in self.transfers for leg in transfer.legs]


def make_bank(store: Store, redis_locks: RedisLocks | None = None) -> Bank:
    return Bank(
        store=store,
        modes=ModeSource(store, allow_unsafe_modes=True),
        process_locks=KeyedLocks(LOCK_TIMEOUT_MS),
        lock_timeout_ms=LOCK_TIMEOUT_MS,
        redis_locks=redis_locks,
    )


def random_operation(
    rng: random.Random, account_ids: list[int], settings: Sequence[ModeSetting], bank: Bank
) -> Callable[[], Written]:
    """One random operation, in one of the settings (workers serving different modes)."""
    setting = settings[0] if len(settings) == 1 else rng.choice(settings)
    amount = rng.randint(1, MAX_OPERATION_AMOUNT)
    account_id = rng.choice(account_ids)
    kind = rng.choice(["deposit", "withdraw", "transfer"])
    if kind == "deposit":
        return lambda: services.deposit(account_id, amount, setting, bank)
    if kind == "withdraw":
        return lambda: services.withdraw(account_id, amount, setting, bank)
    target = rng.choice([other for other in account_ids if other != account_id])
    return lambda: services.transfer(account_id, target, amount, setting, bank)


def run_clients(
    store: Store,
    account_ids: list[int],
    settings: Sequence[ModeSetting],
    seed: int,
    operations: int,
) -> History:
    """THREADS threads, started together, each running its own random operations."""
    bank = make_bank(store)
    history = History()
    start = threading.Barrier(THREADS)

    def client(index: int) -> None:
        rng = random.Random(seed * 1000 + index)
        planned = [random_operation(rng, account_ids, settings, bank) for _ in range(operations)]
        start.wait()
        for operation in planned:
            try:
                result = operation()
            except HARMLESS_REFUSALS as refusal:
                with history.guard:
                    history.refusals[refusal.code] += 1
                continue
            except Exception as error:  # any other refusal or crash is a failure
                with history.guard:
                    history.errors.append(repr(error))
                continue
            with history.guard:
                if result.transfer is not None:
                    history.transfers.append(result.transfer)
                else:
                    history.entries += result.transactions

    threads = [threading.Thread(target=client, args=(index,)) for index in range(THREADS)]
    switch_interval = sys.getswitchinterval()
    sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)
    try:
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + RUN_DEADLINE_SECONDS
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
    finally:
        sys.setswitchinterval(switch_interval)
    assert not any(thread.is_alive() for thread in threads), "a client thread hung"
    return history


def judge(store: Store, openings: dict[int, int], history: History) -> list[str]:
    """Every way the books differ from the acknowledged history (empty when they agree)."""
    violations: list[str] = []
    acknowledged = history.acknowledged_entries()
    for account_id, opening in openings.items():
        mine = [entry for entry in acknowledged if entry.account_id == account_id]
        expected = opening + sum(entry.signed_amount for entry in mine)
        balance = store.get_account(account_id).balance
        if balance != expected:
            violations.append(f"account {account_id}: balance {balance}, acknowledged {expected}")
        if balance < 0:
            violations.append(f"account {account_id}: negative balance {balance}")
        audit = store.audit_account(account_id)
        if not audit.consistent:
            violations.append(f"account {account_id}: inconsistent audit {audit}")
        journal = store.list_transactions(account_id, None, JOURNAL_PAGE)
        journaled = {entry.id for entry in journal if entry.kind is not TransactionKind.OPEN}
        if journaled != {entry.id for entry in mine}:
            violations.append(
                f"account {account_id}: journal ids {sorted(journaled)} "
                f"!= acknowledged {sorted(entry.id for entry in mine)}"
            )
    moved_in = sum(entry.signed_amount for entry in history.entries)
    bank_audit = store.audit_bank()
    expected_total = sum(openings.values()) + moved_in
    if not bank_audit.consistent or bank_audit.negative_accounts:
        violations.append(f"bank audit inconsistent: {bank_audit}")
    if bank_audit.total_balance != expected_total:
        violations.append(
            f"total {bank_audit.total_balance} != openings + deposits - withdrawals "
            f"{expected_total} (not conserved)"
        )
    return violations


def run_and_judge(
    store: Store, setting: ModeSetting, backend: str, *mixed_in: ModeSetting
) -> tuple[History, list[str]]:
    """Run the clients in `setting` -- or, with `mixed_in`, each operation in one of them all,
    as workers do for a moment after a mode switch -- and judge the books."""
    seed = chosen_seed()
    openings = {
        store.open_account(f"hot {n}", "USD", OPENING, setting.lock_mode.value).id: OPENING
        for n in range(ACCOUNTS)
    }
    started = time.monotonic()
    operations = OPERATIONS_PER_THREAD[backend]
    settings = (setting, *mixed_in)
    history = run_clients(store, list(openings), settings, seed, operations)
    violations = judge(store, openings, history)
    print(
        f"\nthreaded {backend}/{'+'.join(s.lock_mode.value for s in settings)} (seed {seed}): "
        f"{THREADS} threads x {operations} ops, "
        f"{len(history.entries)} deposits/withdrawals and {len(history.transfers)} transfers "
        f"acknowledged, refusals {dict(history.refusals)}, errors {len(history.errors)}, "
        f"{len(violations)} violations, {time.monotonic() - started:.1f}s"
    )
    return history, violations


@pytest.mark.parametrize("mode", SAFE_MODES, ids=[mode.value for mode in SAFE_MODES])
def test_concurrent_random_operations_leave_exactly_the_acknowledged_books(
    backend: str, mode: LockMode, tmp_path: Path
) -> None:
    """In a safe mode the books equal the openings plus exactly the acknowledged operations."""
    with store_supply(backend, tmp_path) as supply:
        history, violations = run_and_judge(supply.fresh(), ModeSetting(mode, 0), backend)
    assert history.errors == []
    assert violations == []
    assert history.entries and history.transfers, "the run acknowledged too little to judge"


def test_the_same_judge_catches_lost_updates_in_unlocked_mode(tmp_path: Path) -> None:
    """unlocked with a race window on the in-memory store: the judge finds the loss."""
    with store_supply("memory", tmp_path) as supply:
        history, violations = run_and_judge(
            supply.fresh(), ModeSetting(LockMode.UNLOCKED, UNSAFE_RACE_WINDOW_MS), "memory"
        )
    assert history.errors == []
    assert any("balance" in violation for violation in violations), violations
    assert any("inconsistent audit" in violation for violation in violations), violations
