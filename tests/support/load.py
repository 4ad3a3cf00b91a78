"""Fire many requests at a real server at once and judge the result.

The same judging functions serve the safe modes (nothing may be lost) and
the unsafe ones (the loss must be seen), which is how these tests prove they
can fail: the harness that passes `locked` is the one that catches `unlocked`.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import requests

CLIENT_THREADS = 16
REQUEST_TIMEOUT_SECONDS = 30


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    body: dict[str, Any] | None = None


@dataclass
class Outcome:
    statuses: Counter[int] = field(default_factory=Counter)
    acknowledged: list[dict[str, Any]] = field(default_factory=list)
    lock_modes: Counter[str] = field(default_factory=Counter)
    unexplained_5xx: list[str] = field(default_factory=list)
    connection_errors: int = 0

    @property
    def acknowledged_count(self) -> int:
        return len(self.acknowledged)

    def count(self, status: int) -> int:
        return self.statuses[status]


def fire(base_url: str, calls: Sequence[Call], threads: int = CLIENT_THREADS) -> Outcome:
    """Send every call from `threads` client threads, all released together.

    Every request opens its own connection (`Connection: close`): gunicorn
    workers accept connections, so kept-alive connections could all stick to
    one worker and hide what happens between worker processes.
    """
    outcome = Outcome()
    guard = threading.Lock()
    start = threading.Barrier(threads)
    shares = [calls[index::threads] for index in range(threads)]

    def client(share: Sequence[Call]) -> None:
        with requests.Session() as session:
            start.wait()
            for call in share:
                try:
                    response = session.request(
                        call.method,
                        base_url + call.path,
                        json=call.body,
                        timeout=REQUEST_TIMEOUT_SECONDS,
                    )
                except requests.ConnectionError:
                    with guard:
                        outcome.connection_errors += 1
                    continue
                with guard:
                    _record(outcome, response)

    with ThreadPoolExecutor(max_workers=threads) as pool:
        for future in [pool.submit(client, share) for share in shares]:
            future.result()
    return outcome


def _record(outcome: Outcome, response: requests.Response) -> None:
    outcome.statuses[response.status_code] += 1
    outcome.lock_modes[response.headers.get("X-Lock-Mode", "missing")] += 1
    if 200 <= response.status_code < 300:
        outcome.acknowledged.append(response.json())
    elif response.status_code >= 500:
        honest = response.status_code == 503 and "Retry-After" in response.headers
        if not honest:
            outcome.unexplained_5xx.append(f"{response.status_code} {response.text[:200]}")


def open_account(base_url: str, balance: int, owner: str = "race") -> int:
    response = requests.post(
        f"{base_url}/accounts", json={"owner": owner, "opening_balance": balance}, timeout=10
    )
    response.raise_for_status()
    return int(response.json()["id"])


def balance_of(base_url: str, account_id: int) -> int:
    response = requests.get(f"{base_url}/accounts/{account_id}", timeout=10)
    response.raise_for_status()
    return int(response.json()["balance"])


def audit_of(base_url: str, account_id: int | None = None) -> dict[str, Any]:
    path = "/audit" if account_id is None else f"/accounts/{account_id}/audit"
    response = requests.get(base_url + path, timeout=30)
    response.raise_for_status()
    result: dict[str, Any] = response.json()
    return result


def set_mode(base_url: str, token: str, lock_mode: str, race_window_ms: int) -> None:
    response = requests.put(
        f"{base_url}/mode",
        json={"lock_mode": lock_mode, "race_window_ms": race_window_ms},
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    response.raise_for_status()
