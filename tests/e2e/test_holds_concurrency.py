"""Holds under real concurrency: a real gunicorn (2 workers x 8 threads), 16 client threads.

Every mode runs with a 20 ms race window. Captures and voids race on each of
a few holds; more holds and withdrawals are asked of one balance than it
covers; captures race the expiry of 1-second holds. A safe mode ends each
hold exactly once, never reserves or spends held money, never captures an
expired hold, across both worker processes, and its audit stays consistent;
`unlocked` ends holds twice or over-reserves, and its own audit says so.
"""

from __future__ import annotations

import datetime as dt
import time
from collections import Counter

import pytest
import requests

from tests.e2e.conftest import StartServer
from tests.support.load import Call, audit_of, fire, open_account

pytestmark = pytest.mark.e2e

SAFE_MODES = ["locked", "optimistic", "atomic", "fenced"]
RACE_WINDOW_MS = 20
HOLDS = 8
HOLD_AMOUNT = 100
CAPTURES_PER_HOLD = 3
VOIDS_PER_HOLD = 2
RESERVE_BALANCE = 1000
RESERVE_REQUESTS = 24  # holds and withdrawals of HOLD_AMOUNT each: the balance covers 10
EXPIRY_LEAD_S = 0.01


def race_endings(base_url: str) -> tuple[int, Counter[int]]:
    """Captures and voids of each hold, all at once: how many of each hold's endings landed."""
    account = open_account(base_url, 100_000)
    hold_ids = []
    for _ in range(HOLDS):
        response = requests.post(
            f"{base_url}/accounts/{account}/holds", json={"amount": HOLD_AMOUNT}, timeout=10
        )
        response.raise_for_status()
        hold_ids.append(int(response.json()["id"]))
    calls: list[Call] = []
    owners: list[int] = []
    for hold_id in hold_ids:
        for ending, count in (("capture", CAPTURES_PER_HOLD), ("void", VOIDS_PER_HOLD)):
            calls += [Call("POST", f"/holds/{hold_id}/{ending}", {})] * count
            owners += [hold_id] * count
    outcome = fire(base_url, calls)
    assert outcome.unexplained_5xx == [] and outcome.connection_errors == 0
    landed: Counter[int] = Counter()
    for answer in outcome.answers:
        if answer.status is not None and 200 <= answer.status < 300:
            landed[owners[answer.index]] += 1
    return account, landed


def race_reservations(base_url: str) -> tuple[int, int]:
    """More holds and withdrawals asked at once than the balance covers: how many landed."""
    account = open_account(base_url, RESERVE_BALANCE)
    hold = Call("POST", f"/accounts/{account}/holds", {"amount": HOLD_AMOUNT})
    withdrawal = Call("POST", f"/accounts/{account}/withdraw", {"amount": HOLD_AMOUNT})
    outcome = fire(base_url, [hold, withdrawal] * (RESERVE_REQUESTS // 2))
    assert outcome.unexplained_5xx == [] and outcome.connection_errors == 0
    return account, outcome.count(201)


def race_expiries(base_url: str) -> tuple[int, Counter[str]]:
    """Captures sent just before their 1-second holds expire: what each answered."""
    account = open_account(base_url, 100_000)
    holds = []
    for _ in range(HOLDS):
        response = requests.post(
            f"{base_url}/accounts/{account}/holds",
            json={"amount": HOLD_AMOUNT, "expires_in_s": 1},
            timeout=10,
        )
        response.raise_for_status()
        holds.append(response.json())
    first_expiry = dt.datetime.fromisoformat(holds[0]["expires_at"].replace("Z", "+00:00"))
    # The clock is the event: fire when the first hold is EXPIRY_LEAD_S from expiring.
    while dt.datetime.now(dt.UTC) < first_expiry - dt.timedelta(seconds=EXPIRY_LEAD_S):
        time.sleep(0.001)
    calls = [Call("POST", f"/holds/{hold['id']}/capture", {}) for hold in holds] * 2
    outcome = fire(base_url, calls)
    assert outcome.unexplained_5xx == [] and outcome.connection_errors == 0
    answers: Counter[str] = Counter({"captured": outcome.count(201)})
    answers.update(outcome.problem_codes)
    return account, answers


@pytest.mark.parametrize("mode", SAFE_MODES)
def test_a_safe_mode_ends_each_hold_once_and_never_over_reserves(
    start_server: StartServer, server_backend: str, mode: str
) -> None:
    server = start_server(lock_mode=mode, race_window_ms=RACE_WINDOW_MS)
    endings_account, landed = race_endings(server.url)
    reserve_account, granted = race_reservations(server.url)
    expiry_account, answers = race_expiries(server.url)
    print(
        f"\n{mode} ({server_backend}, 2x8, {RACE_WINDOW_MS} ms): endings per hold "
        f"{sorted(landed.values())}, holds and withdrawals granted {granted} of "
        f"{RESERVE_REQUESTS} (the balance covers {RESERVE_BALANCE // HOLD_AMOUNT}), "
        f"captures at the expiry: {dict(answers)}"
    )
    assert answers["captured"] <= HOLDS
    # Each hold ends exactly once; exactly the holds the balance covers are granted.
    assert [landed[hold] for hold in landed] == [1] * HOLDS
    assert granted == RESERVE_BALANCE // HOLD_AMOUNT
    for account in (endings_account, reserve_account, expiry_account):
        audit = audit_of(server.url, account)
        assert audit["consistent"] is True, audit
        assert audit["available"] >= 0 and audit["holds_captured_after_expiry"] == 0
    bank = audit_of(server.url)
    assert bank["consistent"] is True and bank["holds_with_two_outcomes"] == 0, bank


def test_unlocked_ends_holds_twice_and_over_reserves_and_the_audit_sees_it(
    start_server: StartServer, server_backend: str
) -> None:
    server = start_server(lock_mode="unlocked", race_window_ms=RACE_WINDOW_MS)
    _, landed = race_endings(server.url)
    reserve_account, granted = race_reservations(server.url)
    bank = audit_of(server.url)
    twice = sum(1 for count in landed.values() if count > 1)
    print(
        f"\nunlocked ({server_backend}, 2x8, {RACE_WINDOW_MS} ms): {twice} of {HOLDS} holds "
        f"ended more than once (endings per hold {sorted(landed.values())}), holds and "
        "withdrawals granted "
        f"{granted} of {RESERVE_REQUESTS} (the balance covers {RESERVE_BALANCE // HOLD_AMOUNT}); "
        f"audit: {bank['holds_with_two_outcomes']} holds with two outcomes, "
        f"{bank['overcommitted_accounts']} overcommitted accounts, drift {bank['drift']}"
    )
    assert twice > 0 and granted > RESERVE_BALANCE // HOLD_AMOUNT
    assert bank["consistent"] is False
    assert bank["holds_with_two_outcomes"] > 0
    reserve_audit = audit_of(server.url, reserve_account)
    assert reserve_audit["available"] < 0 or reserve_audit["drift"] != 0
