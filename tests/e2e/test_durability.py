"""Invariant 4: every operation acknowledged with a 2xx survives `kill -9` and a restart.

One mixed workload per safe mode -- deposits, withdrawals and transfers both
ways between two accounts -- is cut by SIGKILL to the whole server while
requests are in flight. Every request carries an amount no other request
has, so each journal entry found after the restart names the one request it
came from. Each request is then one of:

- acknowledged (201): its entry must be there, exactly as answered;
- refused (any other answer): it changed nothing, no entry may name it;
- in flight at the kill (no answer): indeterminate, it may or may not be there,
  and is never counted as lost;
- never sent (its client had stopped): no entry may name it.

The balances must then equal the openings plus the effects of exactly the
requests found in the journal, every audit must be consistent, and a transfer
must have both legs or none.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest
import requests

from tests.e2e.conftest import StartServer
from tests.support.load import (
    Answer,
    Call,
    Outcome,
    audit_of,
    balance_of,
    fire,
    journal_of,
    open_account,
)

pytestmark = pytest.mark.e2e

SAFE_MODES = ["locked", "optimistic", "atomic", "fenced"]
CLIENTS = 8
OPERATIONS = 480  # a bound: the kill comes long before the last one is sent
KILL_AFTER_ACKNOWLEDGED = 120
LOAD_DEADLINE_SECONDS = 60
# A short race window keeps requests in the middle of their operation when the
# kill lands (in `locked`, between the read and the write, with the lock held).
RACE_WINDOW_MS = 2
# Far above the sum of every amount, so no withdrawal or transfer is refused
# for want of money: each refusal would be a 503, counted apart.
OPENING = 1_000_000


@dataclass(frozen=True)
class Planned:
    """One request of the workload and what it does to each account if it commits."""

    kind: str  # "deposit", "withdrawal" or "transfer"
    amount: int  # unique in the workload: it names the request in the journal
    call: Call
    effects: dict[int, int]


def mixed_workload(first: int, second: int) -> list[Planned]:
    """Deposits, withdrawals and transfers both ways, interleaved; amount = position + 1."""
    planned = []
    for index in range(OPERATIONS):
        amount = index + 1
        account, other = (first, second) if index % 2 == 0 else (second, first)
        kind = ("deposit", "withdrawal", "transfer")[index // 2 % 3]
        if kind == "deposit":
            call = Call("POST", f"/accounts/{account}/deposit", {"amount": amount})
            effects = {account: amount}
        elif kind == "withdrawal":
            call = Call("POST", f"/accounts/{account}/withdraw", {"amount": amount})
            effects = {account: -amount}
        else:
            body = {"from_account": account, "to_account": other, "amount": amount}
            call = Call("POST", "/transfers", body)
            effects = {account: -amount, other: amount}
        planned.append(Planned(kind, amount, call, effects))
    return planned


def fire_until_killed(server_url: str, calls: list[Call], kill: Callable[[], None]) -> Outcome:
    """Run the workload; SIGKILL the server once enough operations are acknowledged."""
    enough = threading.Event()

    def count(outcome: Outcome) -> None:
        # All answered before enough were acknowledged: no use waiting longer.
        if outcome.count(201) >= KILL_AFTER_ACKNOWLEDGED or len(outcome.answers) == len(calls):
            enough.set()

    with ThreadPoolExecutor(max_workers=1) as pool:
        load = pool.submit(fire, server_url, calls, CLIENTS, on_answer=count)
        enough.wait(timeout=LOAD_DEADLINE_SECONDS)
        kill()  # SIGKILL to master and workers while requests are in flight
        outcome = load.result(timeout=LOAD_DEADLINE_SECONDS)
    assert outcome.count(201) >= KILL_AFTER_ACKNOWLEDGED, f"killed too early: {outcome.statuses}"
    return outcome


def journal_requests(
    journals: dict[int, list[dict[str, Any]]], mode: str
) -> Iterator[tuple[str, int, list[dict[str, Any]]]]:
    """(kind, amount, entries) per request found in the journals, the open entries apart."""
    legs_by_transfer: dict[int, list[dict[str, Any]]] = {}
    for account, entries in journals.items():
        assert entries[0]["kind"] == "open" and entries[0]["amount"] == OPENING, entries[0]
        for entry in entries[1:]:
            assert entry["lock_mode"] == mode, entry
            assert entry["account_id"] == account, entry
            if entry["kind"] in ("deposit", "withdrawal"):
                assert entry["transfer_id"] is None, entry
                yield entry["kind"], entry["amount"], [entry]
            else:
                legs_by_transfer.setdefault(entry["transfer_id"], []).append(entry)
    for transfer_id, legs in legs_by_transfer.items():
        kinds = sorted(leg["kind"] for leg in legs)
        assert kinds == ["transfer_in", "transfer_out"], f"transfer {transfer_id}: {legs}"
        assert legs[0]["amount"] == legs[1]["amount"], legs
        yield "transfer", legs[0]["amount"], legs


def assert_entries_match_request(planned: Planned, entries: list[dict[str, Any]]) -> None:
    """The entries a request left are the ones its kind, accounts and amount imply."""
    signed = {entry["account_id"]: entry["amount"] for entry in entries}
    for entry in entries:
        if entry["kind"] in ("withdrawal", "transfer_out"):
            signed[entry["account_id"]] = -entry["amount"]
    assert signed == planned.effects, (planned, entries)


def acknowledged_ids(planned: Planned, body: dict[str, Any]) -> tuple[str, int]:
    """The resource an acknowledged request must still be readable at."""
    if planned.kind == "transfer":
        return "transfers", int(body["id"])
    return "transactions", int(body["id"])


@pytest.mark.parametrize("mode", SAFE_MODES)
def test_acknowledged_operations_survive_sigkill(start_server: StartServer, mode: str) -> None:
    """SIGKILL under mixed load; after restart every acknowledged operation is there, no more."""
    server = start_server(lock_mode=mode, race_window_ms=RACE_WINDOW_MS)
    first, second = open_account(server.url, OPENING), open_account(server.url, OPENING)
    planned = mixed_workload(first, second)
    outcome = fire_until_killed(server.url, [item.call for item in planned], server.kill)

    by_fate: dict[str, list[Answer]] = {"acknowledged": [], "refused": [], "in flight": []}
    for answer in outcome.answers:
        fate = {201: "acknowledged", None: "in flight"}.get(answer.status, "refused")
        by_fate[fate].append(answer)
    # A refusal must be an honest, bounded one (503 + Retry-After), never a 5xx bug.
    assert outcome.unexplained_5xx == []
    assert all(answer.status == 503 for answer in by_fate["refused"]), outcome.statuses

    server.start()
    for answer in by_fate["acknowledged"]:
        collection, resource_id = acknowledged_ids(planned[answer.index], answer.body)
        stored = requests.get(f"{server.url}/{collection}/{resource_id}", timeout=10)
        assert stored.status_code == 200, answer
        assert stored.json() == answer.body

    by_amount = {item.amount: index for index, item in enumerate(planned)}
    journals = {account: journal_of(server.url, account) for account in (first, second)}
    found: dict[int, list[dict[str, Any]]] = {}
    for kind, amount, entries in journal_requests(journals, mode):
        index = by_amount.get(amount)
        assert index is not None and planned[index].kind == kind, (kind, amount, entries)
        assert index not in found, f"request {index} is in the journal twice: {entries}"
        assert_entries_match_request(planned[index], entries)
        found[index] = entries

    sent_without_answer = {answer.index for answer in by_fate["in flight"]}
    acknowledged = {answer.index for answer in by_fate["acknowledged"]}
    assert acknowledged <= set(found), "an acknowledged operation was lost"
    assert set(found) <= acknowledged | sent_without_answer, "an entry no request explains"
    for answer in by_fate["acknowledged"]:
        entry_ids = {entry["id"] for entry in found[answer.index]}
        legs = answer.body.get("legs", [answer.body])
        assert entry_ids == {leg["id"] for leg in legs}, answer

    expected = {first: OPENING, second: OPENING}
    for index in found:
        for account, delta in planned[index].effects.items():
            expected[account] += delta
    assert {account: balance_of(server.url, account) for account in expected} == expected
    for account in expected:
        assert audit_of(server.url, account)["consistent"] is True
    audit = audit_of(server.url)
    assert audit["consistent"] is True, audit
    assert audit["total_balance"] == sum(expected.values())

    committed_in_flight = len(set(found) - acknowledged)
    print(
        f"durability {mode}: sent {len(outcome.answers)}, acknowledged {len(acknowledged)}, "
        f"refused {len(by_fate['refused'])} {dict(outcome.problem_codes)}, "
        f"in flight at the kill {len(sent_without_answer)} "
        f"(of which committed {committed_in_flight})"
    )
