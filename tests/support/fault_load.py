"""A steady write load around a fault, and the judgement of every answer it got.

A few client threads send deposits and transfers, each with an amount no
other request has, so each journal entry names the one request it came from.
The test marks when the fault began and when it was removed; afterwards
`FaultReport` sorts every request:

- acknowledged (201): its journal entry must be there;
- refused (503): it must have changed nothing (`applied_refusals` counts the
  ones whose entry is there anyway) -- unless it is 503 `outcome_unknown` (a
  COMMIT lost on the way): indeterminate, it may be there or not;
- unanswered (the client gave up): a wait without bound, which the faults
  must never cause.

Black-box over HTTP only.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import requests

from tests.support.load import journal_of

CLIENTS = 4
# Far above any wait the service allows itself (lock timeout, connect timeout):
# a request still unanswered by then waited without bound.
CLIENT_TIMEOUT_SECONDS = 20
# Between two requests of one client: keeps the load steady and the logs small.
PACING_SECONDS = 0.01
FIRST_AMOUNT = 1000
OPENING_BALANCE = 10**12


@dataclass
class Sent:
    """One request and what became of it."""

    kind: str  # "deposit" or "transfer"
    amount: int  # unique in the run
    account: int  # the deposit's account, the transfer's source
    other: int | None  # the transfer's target
    started: float
    finished: float | None = None
    status: int | None = None  # None: no answer
    code: str | None = None
    detail: str = ""
    retry_after: bool = False

    @property
    def outcome_unknown(self) -> bool:
        """A 503 telling that the operation may have been applied (its COMMIT was lost)."""
        return self.status == 503 and self.code == "outcome_unknown"

    @property
    def latency(self) -> float:
        return (self.finished or time.monotonic()) - self.started


class FaultLoad:
    """Client threads writing until stopped; `mark_*` timestamps the fault."""

    def __init__(self, base_url: str, accounts: Sequence[int], clients: int = CLIENTS) -> None:
        self.base_url = base_url
        self.accounts = list(accounts)
        self.sent: list[Sent] = []
        self.fault_started: float | None = None
        self.fault_removed: float | None = None
        self._amounts = itertools.count(FIRST_AMOUNT)
        self._guard = threading.Lock()
        self._stopping = threading.Event()
        self._threads = [
            threading.Thread(target=self._client, args=(number,), daemon=True)
            for number in range(clients)
        ]

    def __enter__(self) -> FaultLoad:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stopping.set()
        for thread in self._threads:
            thread.join(CLIENT_TIMEOUT_SECONDS + 5)

    def mark_fault(self) -> None:
        self.fault_started = time.monotonic()

    def mark_repair(self) -> None:
        self.fault_removed = time.monotonic()

    def answered_since(self, moment: float, status: int) -> int:
        """Requests started at or after `moment` and answered `status` so far."""
        with self._guard:
            return sum(1 for item in self.sent if item.started >= moment and item.status == status)

    def wait_for(self, moment: float, status: int, count: int, deadline_seconds: float) -> bool:
        """Poll until `count` requests started after `moment` were answered `status`."""
        deadline = time.monotonic() + deadline_seconds
        while time.monotonic() < deadline:
            if self.answered_since(moment, status) >= count:
                return True
            time.sleep(0.02)  # polling interval, not synchronisation
        return False

    def _client(self, number: int) -> None:
        session = requests.Session()
        for position in itertools.count(number):
            if self._stopping.is_set():
                return
            amount = next(self._amounts)
            account = self.accounts[position % len(self.accounts)]
            if position % 2:
                other = self.accounts[(position + 1) % len(self.accounts)]
                item = Sent("transfer", amount, account, other, time.monotonic())
                path, body = "/transfers", {"from_account": account, "to_account": other}
            else:
                item = Sent("deposit", amount, account, None, time.monotonic())
                path, body = f"/accounts/{account}/deposit", {}
            with self._guard:
                self.sent.append(item)
            self._send(session, item, path, {**body, "amount": amount})
            time.sleep(PACING_SECONDS)  # pacing, not synchronisation

    def _send(self, session: requests.Session, item: Sent, path: str, body: dict[str, Any]) -> None:
        try:
            response = session.post(
                self.base_url + path,
                json=body,
                timeout=CLIENT_TIMEOUT_SECONDS,
                headers={"Connection": "close"},  # any worker may take the next one
            )
        except requests.RequestException:
            item.finished = time.monotonic()
            return
        item.finished = time.monotonic()
        item.retry_after = "Retry-After" in response.headers
        if response.status_code >= 400:
            try:
                problem = response.json()
                item.code, item.detail = str(problem.get("code")), str(problem.get("detail"))
            except ValueError:
                item.code = f"not a problem: {response.text[:80]!r}"
        item.status = response.status_code


@dataclass
class FaultReport:
    """Every request of a run, sorted against the journal the service kept."""

    name: str
    sent: list[Sent]
    fault_started: float
    fault_removed: float
    recovered_after_seconds: float | None
    missing_acknowledged: list[Sent] = field(default_factory=list)
    applied_refusals: list[Sent] = field(default_factory=list)

    @property
    def during_fault(self) -> list[Sent]:
        return [
            item for item in self.sent if self.fault_started <= item.started < self.fault_removed
        ]

    @property
    def statuses(self) -> Counter[str]:
        return Counter(str(item.status) for item in self.sent)

    @property
    def fault_codes(self) -> Counter[str]:
        return Counter(f"{item.status} {item.code}" for item in self.during_fault)

    @property
    def unanswered(self) -> list[Sent]:
        return [item for item in self.sent if item.status is None]

    @property
    def server_errors(self) -> list[Sent]:
        """5xx other than an honest 503 with Retry-After."""
        return [
            item
            for item in self.sent
            if item.status is not None
            and item.status >= 500
            and not (item.status == 503 and item.retry_after)
        ]

    def refused_after_recovery(self, grace_seconds: float) -> list[Sent]:
        """Requests refused although started well after the first one served again."""
        if self.recovered_after_seconds is None:
            return []
        served_again = self.fault_removed + self.recovered_after_seconds + grace_seconds
        return [item for item in self.sent if item.started >= served_again and item.status != 201]

    @property
    def max_fault_latency_seconds(self) -> float:
        return max((item.latency for item in self.during_fault), default=0.0)

    def check_journal(self, base_url: str) -> None:
        """Find each request's entry: acknowledged ones must be there, refused ones not."""
        entries: set[tuple[int, str, int]] = set()
        for account in {item.account for item in self.sent} | {
            item.other for item in self.sent if item.other is not None
        }:
            for entry in journal_of(base_url, account):
                entries.add((account, entry["kind"], entry["amount"]))
        for item in self.sent:
            kind = "deposit" if item.kind == "deposit" else "transfer_out"
            found = (item.account, kind, item.amount) in entries
            if item.status == 201 and not found:
                self.missing_acknowledged.append(item)
            if item.status not in (None, 201) and not item.outcome_unknown and found:
                self.applied_refusals.append(item)

    def summary(self) -> str:
        during = self.during_fault
        recovered = (
            "never"
            if self.recovered_after_seconds is None
            else f"{self.recovered_after_seconds:.2f} s"
        )
        return (
            f"{self.name}: {len(self.sent)} requests, {len(during)} during the fault "
            f"({self.fault_removed - self.fault_started:.1f} s): "
            f"{sum(1 for item in during if item.status == 503)} x 503, "
            f"{sum(1 for item in during if item.status == 201)} x 201, "
            f"500s {sum(1 for item in self.sent if item.status == 500)}, "
            f"max latency during the fault {self.max_fault_latency_seconds:.2f} s, "
            f"codes {dict(self.fault_codes)}; recovered {recovered} after the repair; "
            f"unanswered {len(self.unanswered)}, acknowledged missing "
            f"{len(self.missing_acknowledged)}, refused but applied {len(self.applied_refusals)}, "
            f"outcome unknown {sum(1 for item in self.sent if item.outcome_unknown)}"
        )
