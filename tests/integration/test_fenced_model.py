"""fenced and redis-lock under the threaded model test's judge, with the machine's Redis.

The judge of tests/integration/test_model_threaded.py (the books equal exactly
the acknowledged operations) runs here with a Bank that has a Redis lock
service (a key prefix of its own per test): `fenced` must pass on every
store, with no race window and with a race window longer than the lease,
where its only refusals are the harmless 409 stale_lock; under that same
overrun the judge must catch `redis-lock`. And with every safe mode at once
(each operation in a random one, as workers serve the old and the new mode
for a moment after a switch) the books must still be exact on every store.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from service.domain import LockMode, ModeSetting, StaleLock
from service.redis_locks import RedisLocks
from service.services import Bank
from service.stores.base import Store
from tests.integration import test_model_threaded as threaded
from tests.support.bank_model import LOCK_TIMEOUT_MS, store_supply
from tests.support.redis_service import delete_prefix, redis_url, unique_prefix

LEASE_MS = 2000
SHORT_LEASE_MS = 20
OVERRUN_RACE_WINDOW_MS = 50  # each holder sleeps past its 20 ms lease
OVERRUN_OPERATIONS_PER_THREAD = 8


@pytest.fixture
def with_redis(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """The threaded test's Bank, given a Redis lock service; the lease is settable."""
    url, prefix = redis_url(), unique_prefix("model")
    lease_ms = [LEASE_MS]

    make_bank_without_redis = threaded.make_bank

    def make_bank(store: Store) -> Bank:
        return make_bank_without_redis(
            store,
            RedisLocks(
                url, lease_ms=lease_ms[0], lock_timeout_ms=LOCK_TIMEOUT_MS, key_prefix=prefix
            ),
        )

    monkeypatch.setattr(threaded, "make_bank", make_bank)
    monkeypatch.setattr(threaded, "HARMLESS_REFUSALS", (*threaded.HARMLESS_REFUSALS, StaleLock))
    yield lease_ms
    delete_prefix(url, prefix)


def run_overrun(
    lock_mode: LockMode,
    backend: str,
    tmp_path: Path,
    with_redis: list[int],
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[threaded.History, list[str]]:
    """The threaded run with every holder outliving its lease (race window 50 ms, lease 20 ms)."""
    with_redis[0] = SHORT_LEASE_MS
    monkeypatch.setitem(threaded.OPERATIONS_PER_THREAD, backend, OVERRUN_OPERATIONS_PER_THREAD)
    with store_supply(backend, tmp_path) as supply:
        return threaded.run_and_judge(
            supply.fresh(), ModeSetting(lock_mode, OVERRUN_RACE_WINDOW_MS), backend
        )


def test_fenced_leaves_exactly_the_acknowledged_books(
    backend: str, tmp_path: Path, with_redis: list[int]
) -> None:
    """fenced, no race window, every store: the books equal the acknowledged operations."""
    with store_supply(backend, tmp_path) as supply:
        history, violations = threaded.run_and_judge(
            supply.fresh(), ModeSetting(LockMode.FENCED, 0), backend
        )
    assert history.errors == []
    assert violations == []
    assert history.entries and history.transfers, "the run acknowledged too little to judge"


@pytest.mark.parametrize("backend", ["memory", "sqlite"], indirect=True)
def test_fenced_loses_nothing_when_every_holder_outlives_its_lease(
    backend: str, tmp_path: Path, with_redis: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Race window 50 ms, lease 20 ms: refusals are stale_lock, the books stay exact."""
    history, violations = run_overrun(LockMode.FENCED, backend, tmp_path, with_redis, monkeypatch)
    assert history.errors == []
    assert violations == []
    assert history.refusals["stale_lock"] > 0, history.refusals


@pytest.mark.parametrize("backend", ["memory"], indirect=True)
def test_the_same_judge_catches_redis_lock_when_holders_outlive_their_lease(
    backend: str, tmp_path: Path, with_redis: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """redis-lock under the very same overrun: the judge finds balances that lost updates."""
    history, violations = run_overrun(
        LockMode.REDIS_LOCK, backend, tmp_path, with_redis, monkeypatch
    )
    assert history.errors == []
    assert any("inconsistent audit" in violation for violation in violations), violations


# Every safe mode at once, as workers serve them for a moment after a switch;
# fenced and optimistic with a short race window, so that the others' writes
# land inside their read-to-write gaps.
MIXED_GAP_MS = 2
MIXED_SAFE_MODES = (
    ModeSetting(LockMode.LOCKED, 0),
    ModeSetting(LockMode.OPTIMISTIC, MIXED_GAP_MS),
    ModeSetting(LockMode.ATOMIC, 0),
    ModeSetting(LockMode.FENCED, MIXED_GAP_MS),
)


def test_all_safe_modes_at_once_leave_exactly_the_acknowledged_books(
    backend: str, tmp_path: Path, with_redis: list[int]
) -> None:
    """Each operation in a random safe mode, concurrently, every store: the books equal the
    acknowledged operations; fenced's refusals (stale_lock) are its only extra answer."""
    with store_supply(backend, tmp_path) as supply:
        history, violations = threaded.run_and_judge(
            supply.fresh(), MIXED_SAFE_MODES[0], backend, *MIXED_SAFE_MODES[1:]
        )
    assert history.errors == []
    assert violations == []
    assert history.entries and history.transfers, "the run acknowledged too little to judge"
