"""The lock modes under real concurrency: gunicorn, 2 workers x 8 threads, 16 clients.

Safe modes must keep every invariant (no lost update, no overdraft, money
conserved, no 5xx); the unsafe ones must be caught losing money by the very
same checks, with a race window making the race reliable.
"""

from __future__ import annotations

import pytest

from tests.e2e.conftest import StartServer
from tests.support.load import Call, Outcome, audit_of, balance_of, fire, open_account

pytestmark = pytest.mark.e2e

SAFE_MODES = ["locked", "optimistic", "atomic"]
SAFE_WINDOW_MS = 5
UNSAFE_WINDOW_MS = 20
DEPOSITS = 160
WITHDRAWALS = 120
WITHDRAWABLE = 50
TRANSFERS_EACH_WAY = 60
TRANSFER_OPENING = 1000


def deposits(base_url: str) -> tuple[int, Outcome]:
    account = open_account(base_url, 0)
    outcome = fire(
        base_url, [Call("POST", f"/accounts/{account}/deposit", {"amount": 1})] * DEPOSITS
    )
    return account, outcome


def withdrawals(base_url: str) -> tuple[int, Outcome]:
    account = open_account(base_url, WITHDRAWABLE)
    call = Call("POST", f"/accounts/{account}/withdraw", {"amount": 1})
    return account, fire(base_url, [call] * WITHDRAWALS)


def opposing_transfers(base_url: str) -> tuple[int, int, Outcome]:
    first, second = (
        open_account(base_url, TRANSFER_OPENING),
        open_account(base_url, TRANSFER_OPENING),
    )
    forth = Call("POST", "/transfers", {"from_account": first, "to_account": second, "amount": 1})
    back = Call("POST", "/transfers", {"from_account": second, "to_account": first, "amount": 1})
    return first, second, fire(base_url, [forth, back] * TRANSFERS_EACH_WAY)


def assert_clean(outcome: Outcome, mode: str, expected_calls: int) -> None:
    assert outcome.unexplained_5xx == []
    assert outcome.connection_errors == 0
    assert outcome.count(503) == 0, outcome.statuses
    assert sum(outcome.statuses.values()) == expected_calls
    assert set(outcome.lock_modes) == {mode}


@pytest.mark.parametrize("mode", SAFE_MODES)
def test_safe_mode_keeps_every_invariant(start_server: StartServer, mode: str) -> None:
    """Concurrent deposits, withdrawals and opposing transfers lose nothing in a safe mode."""
    server = start_server(lock_mode=mode, race_window_ms=SAFE_WINDOW_MS)

    account, outcome = deposits(server.url)
    assert_clean(outcome, mode, DEPOSITS)
    assert outcome.acknowledged_count == DEPOSITS
    assert balance_of(server.url, account) == DEPOSITS

    account, outcome = withdrawals(server.url)
    assert_clean(outcome, mode, WITHDRAWALS)
    assert outcome.acknowledged_count == WITHDRAWABLE  # exactly what the balance allowed
    assert outcome.count(409) == WITHDRAWALS - WITHDRAWABLE
    assert balance_of(server.url, account) == 0

    first, second, outcome = opposing_transfers(server.url)
    assert_clean(outcome, mode, 2 * TRANSFERS_EACH_WAY)
    assert outcome.acknowledged_count == 2 * TRANSFERS_EACH_WAY
    assert balance_of(server.url, first) + balance_of(server.url, second) == 2 * TRANSFER_OPENING

    audit = audit_of(server.url)
    assert audit["consistent"] is True, audit
    assert audit["drift"] == 0 and audit["chain_breaks"] == 0 and audit["negative_accounts"] == 0


def test_unlocked_loses_updates_and_the_audit_sees_it(start_server: StartServer) -> None:
    """Unlocked with a race window: the same checks catch lost deposits and overdrafts."""
    server = start_server(lock_mode="unlocked", race_window_ms=UNSAFE_WINDOW_MS)

    account, outcome = deposits(server.url)
    assert outcome.unexplained_5xx == []
    lost = outcome.acknowledged_count - balance_of(server.url, account)
    print(
        f"unlocked, 2x8, window {UNSAFE_WINDOW_MS} ms: lost {lost} of {outcome.acknowledged_count}"
    )
    assert lost > 0
    account_audit = audit_of(server.url, account)
    assert account_audit["drift"] == -lost and account_audit["consistent"] is False

    account, outcome = withdrawals(server.url)
    overdrawn = outcome.acknowledged_count - WITHDRAWABLE
    print(
        f"unlocked withdrawals: {outcome.acknowledged_count} acknowledged of {WITHDRAWABLE} funds"
    )
    assert overdrawn > 0
    assert audit_of(server.url, account)["lowest_journal_balance"] < 0

    audit = audit_of(server.url)
    assert audit["consistent"] is False and audit["negative_accounts"] >= 1


@pytest.mark.parametrize(("workers", "loses"), [(1, False), (2, True)])
def test_process_lock_holds_only_within_one_process(
    start_server: StartServer, workers: int, loses: bool
) -> None:
    """A threading.Lock per account protects one worker's threads, not two workers."""
    server = start_server(
        lock_mode="process-lock", race_window_ms=UNSAFE_WINDOW_MS, workers=workers
    )
    account, outcome = deposits(server.url)
    assert outcome.unexplained_5xx == [] and outcome.count(503) == 0
    lost = outcome.acknowledged_count - balance_of(server.url, account)
    print(f"process-lock, {workers}x8, window {UNSAFE_WINDOW_MS} ms: lost {lost} of {DEPOSITS}")
    assert (lost > 0) is loses
    assert audit_of(server.url, account)["consistent"] is (not loses)
