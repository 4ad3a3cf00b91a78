"""The lock modes under real concurrency: a real gunicorn, 16 client threads.

SQLite and PostgreSQL are served by 2 workers x 8 threads; the in-memory
store, which lives in one process, by 1 worker x 8 threads. Every mode runs
with the same 20 ms race window, so the safe modes are shown losing nothing
under the very pressure that makes the unsafe ones lose: no lost update, no
overdraft, each account's balance exactly what the acknowledged operations
make it, money conserved, no 5xx. Only the in-memory store's optimistic mode
may refuse a request, with an honest 503 write_conflict that changed nothing
(counted and printed). The unsafe modes must be caught by the very same checks.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import StartServer, redis_settings
from tests.support.load import Call, Outcome, audit_of, balance_of, fire, open_account
from tests.support.servers import ServerProcess

pytestmark = pytest.mark.e2e

SAFE_MODES = ["locked", "optimistic", "atomic", "fenced"]
RACE_WINDOW_MS = 20
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


def acknowledged_transfer_balances(first: int, second: int, outcome: Outcome) -> dict[int, int]:
    """What the two balances must be after exactly the acknowledged transfers."""
    balances = {first: TRANSFER_OPENING, second: TRANSFER_OPENING}
    for transfer in outcome.acknowledged:
        balances[transfer["from_account"]] -= transfer["amount"]
        balances[transfer["to_account"]] += transfer["amount"]
    return balances


def assert_answered(outcome: Outcome, mode: str, expected_calls: int, conflicts: bool) -> int:
    """Every call answered, by `mode`, with no 5xx; returns the honest 503s (refusals).

    With `conflicts`, a 503 write_conflict (optimistic retries ran out, with
    Retry-After) is an honest refusal that changed nothing; otherwise a 503 fails.
    """
    assert outcome.unexplained_5xx == []
    assert outcome.connection_errors == 0
    assert sum(outcome.statuses.values()) == expected_calls
    assert set(outcome.lock_modes) == {mode}
    refused = outcome.count(503)
    if conflicts:
        assert set(outcome.problem_codes) <= {"write_conflict", "insufficient_funds"}
    else:
        assert refused == 0, outcome.problem_codes
    return refused


def assert_safe_mode_invariants(base_url: str, mode: str, label: str, conflicts: bool) -> None:
    """Deposits, withdrawals and opposing transfers: each balance exactly as acknowledged."""
    account, outcome = deposits(base_url)
    refused = assert_answered(outcome, mode, DEPOSITS, conflicts)
    assert outcome.acknowledged_count == DEPOSITS - refused
    assert balance_of(base_url, account) == outcome.acknowledged_count
    figures = f"deposits {outcome.acknowledged_count}/{DEPOSITS} kept"
    refusals = [refused]

    account, outcome = withdrawals(base_url)
    refused = assert_answered(outcome, mode, WITHDRAWALS, conflicts)
    # Exactly what the balance allowed, unless so many were refused that the money outlasted them.
    assert outcome.acknowledged_count == min(WITHDRAWABLE, WITHDRAWALS - refused)
    assert outcome.count(409) == WITHDRAWALS - outcome.acknowledged_count - refused
    assert balance_of(base_url, account) == WITHDRAWABLE - outcome.acknowledged_count
    figures += f", withdrawals {outcome.acknowledged_count} of {WITHDRAWABLE} funds"
    refusals.append(refused)

    first, second, outcome = opposing_transfers(base_url)
    refused = assert_answered(outcome, mode, 2 * TRANSFERS_EACH_WAY, conflicts)
    assert outcome.acknowledged_count == 2 * TRANSFERS_EACH_WAY - refused
    expected = acknowledged_transfer_balances(first, second, outcome)
    actual = {first: balance_of(base_url, first), second: balance_of(base_url, second)}
    assert actual == expected
    assert sum(actual.values()) == 2 * TRANSFER_OPENING
    figures += f", transfers {outcome.acknowledged_count}/{2 * TRANSFERS_EACH_WAY}"
    refusals.append(refused)

    audit = audit_of(base_url)
    assert audit["consistent"] is True, audit
    assert audit["drift"] == 0 and audit["chain_breaks"] == 0 and audit["negative_accounts"] == 0
    print(
        f"{label}, {mode}, window {RACE_WINDOW_MS} ms: lost 0; {figures}; "
        f"503 write_conflict (deposits, withdrawals, transfers): {refusals}"
    )


def assert_unsafe_mode_is_caught(base_url: str, label: str) -> None:
    """The checks that pass the safe modes see lost deposits, overdrafts and lost transfers."""
    account, outcome = deposits(base_url)
    assert outcome.unexplained_5xx == [] and outcome.count(503) == 0
    lost = outcome.acknowledged_count - balance_of(base_url, account)
    account_audit = audit_of(base_url, account)
    assert lost > 0
    assert account_audit["drift"] == -lost and account_audit["consistent"] is False

    account, outcome = withdrawals(base_url)
    withdrawn = outcome.acknowledged_count
    assert withdrawn > WITHDRAWABLE
    assert audit_of(base_url, account)["lowest_journal_balance"] < 0

    first, second, outcome = opposing_transfers(base_url)
    expected = acknowledged_transfer_balances(first, second, outcome)
    actual = {first: balance_of(base_url, first), second: balance_of(base_url, second)}
    # Lost transfers of 1 both ways may cancel out in a balance: the chain cannot hide them.
    transfer_audit = audit_of(base_url, first)
    assert transfer_audit["chain_breaks"] > 0 and transfer_audit["consistent"] is False

    audit = audit_of(base_url)
    assert audit["consistent"] is False and audit["negative_accounts"] >= 1
    print(
        f"{label}, unlocked, window {RACE_WINDOW_MS} ms: lost {lost} of "
        f"{DEPOSITS} deposits, withdrew {withdrawn} of {WITHDRAWABLE} funds, "
        f"transfers left {actual} where the acknowledged ones make {expected}, "
        f"{transfer_audit['chain_breaks']} chain breaks"
    )


@pytest.mark.parametrize("mode", SAFE_MODES)
def test_safe_mode_keeps_every_invariant(
    start_server: StartServer, server_backend: str, mode: str
) -> None:
    """2x8 workers, 20 ms window: a safe mode loses nothing and never answers 503."""
    server = start_server(lock_mode=mode, race_window_ms=RACE_WINDOW_MS)
    assert_safe_mode_invariants(server.url, mode, f"{server_backend}, 2x8", conflicts=False)


def test_unlocked_loses_updates_and_the_audit_sees_it(
    start_server: StartServer, server_backend: str
) -> None:
    """Unlocked, 20 ms window: the same checks catch lost deposits, overdrafts, lost transfers."""
    server = start_server(lock_mode="unlocked", race_window_ms=RACE_WINDOW_MS)
    assert_unsafe_mode_is_caught(server.url, f"{server_backend}, 2x8")


@pytest.mark.parametrize(("workers", "loses"), [(1, False), (2, True)])
def test_process_lock_holds_only_within_one_process(
    start_server: StartServer, workers: int, loses: bool
) -> None:
    """A threading.Lock per account protects one worker's threads, not two workers."""
    server = start_server(lock_mode="process-lock", race_window_ms=RACE_WINDOW_MS, workers=workers)
    account, outcome = deposits(server.url)
    assert outcome.unexplained_5xx == [] and outcome.count(503) == 0
    lost = outcome.acknowledged_count - balance_of(server.url, account)
    print(f"process-lock, {workers}x8, window {RACE_WINDOW_MS} ms: lost {lost} of {DEPOSITS}")
    assert (lost > 0) is loses
    assert audit_of(server.url, account)["consistent"] is (not loses)


@pytest.fixture
def start_memory_server(tmp_path: Path) -> Iterator[StartServer]:
    """`bankrace serve` on the in-memory store: one worker process, 8 threads."""
    servers: list[ServerProcess] = []

    def start(lock_mode: str) -> ServerProcess:
        settings = {
            "BANK_DATABASE_URL": "memory://",
            "BANK_WORKERS": "1",
            "BANK_THREADS": "8",
            "BANK_LOCK_MODE": lock_mode,
            "BANK_RACE_WINDOW_MS": str(RACE_WINDOW_MS),
            "BANK_ALLOW_UNSAFE_MODES": "1",
            **redis_settings(lock_mode),
        }
        server = ServerProcess(workdir=tmp_path, settings=settings)
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.stop()


@pytest.mark.parametrize("mode", SAFE_MODES)
def test_memory_store_safe_mode_keeps_every_invariant(
    start_memory_server: StartServer, mode: str
) -> None:
    """In-memory store, 1x8, 20 ms window: exact balances; only optimistic may refuse (503)."""
    server = start_memory_server(lock_mode=mode)
    conflicts = mode == "optimistic"
    assert_safe_mode_invariants(server.url, mode, "memory, 1x8", conflicts=conflicts)


def test_memory_store_unlocked_is_caught(start_memory_server: StartServer) -> None:
    """In-memory store, unlocked: the same checks catch the loss in all three workloads."""
    server = start_memory_server(lock_mode="unlocked")
    assert_unsafe_mode_is_caught(server.url, "memory, 1x8")
