"""Fire many requests at a real server at once and judge the result.

The same judging functions serve the safe modes (nothing may be lost) and
the unsafe ones (the loss must be seen), which is how these tests prove they
can fail: the harness that passes `locked` is the one that catches `unlocked`.
Black-box over HTTP only: nothing here knows the service's internals.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import requests

CLIENT_THREADS = 16
REQUEST_TIMEOUT_SECONDS = 30
# Every request asks the server to close its connection afterwards, so the
# next one is a new connection that any worker may accept (see `fire`).
NEW_CONNECTION_PER_REQUEST = {"Connection": "close"}


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    body: dict[str, Any] | None = None


@dataclass(frozen=True)
class Answer:
    """What became of one call: `status` None means no answer, so its fate is unknown."""

    index: int  # the call's position in the sequence given to `fire`
    status: int | None
    body: Any = None


@dataclass
class Outcome:
    statuses: Counter[int] = field(default_factory=Counter)
    acknowledged: list[dict[str, Any]] = field(default_factory=list)
    lock_modes: Counter[str] = field(default_factory=Counter)
    #: the problem+json `code` of every non-2xx answer, e.g. "write_conflict"
    problem_codes: Counter[str] = field(default_factory=Counter)
    unexplained_5xx: list[str] = field(default_factory=list)
    connection_errors: int = 0
    #: one per call sent, in the order the answers arrived
    answers: list[Answer] = field(default_factory=list)

    @property
    def acknowledged_count(self) -> int:
        return len(self.acknowledged)

    def count(self, status: int) -> int:
        return self.statuses[status]


def fire(
    base_url: str,
    calls: Sequence[Call],
    threads: int = CLIENT_THREADS,
    *,
    on_answer: Callable[[Outcome], None] | None = None,
) -> Outcome:
    """Send every call from `threads` client threads, all released together.

    Every request opens its own connection (`Connection: close`): gunicorn
    workers accept connections, so kept-alive connections could all stick to
    one worker and hide what happens between worker processes.

    A client thread whose request gets no answer (connection refused, reset,
    timed out) records it with status None and sends nothing more: the server
    is presumably gone, and its remaining calls are never sent. `on_answer`
    runs after each recorded answer, under the outcome's lock (keep it short).
    """
    outcome = Outcome()
    guard = threading.Lock()
    start = threading.Barrier(threads)
    shares = [list(range(len(calls)))[index::threads] for index in range(threads)]

    def client(share: Sequence[int]) -> None:
        with requests.Session() as session:
            start.wait()
            for index in share:
                call = calls[index]
                try:
                    response = session.request(
                        call.method,
                        base_url + call.path,
                        json=call.body,
                        headers=NEW_CONNECTION_PER_REQUEST,
                        timeout=REQUEST_TIMEOUT_SECONDS,
                    )
                except requests.RequestException:
                    with guard:
                        outcome.connection_errors += 1
                        outcome.answers.append(Answer(index, None))
                        if on_answer is not None:
                            on_answer(outcome)
                    return
                with guard:
                    _record(outcome, index, response)
                    if on_answer is not None:
                        on_answer(outcome)

    with ThreadPoolExecutor(max_workers=threads) as pool:
        for future in [pool.submit(client, share) for share in shares]:
            future.result()
    return outcome


def _record(outcome: Outcome, index: int, response: requests.Response) -> None:
    body = _json_or_none(response)
    outcome.answers.append(Answer(index, response.status_code, body))
    outcome.statuses[response.status_code] += 1
    outcome.lock_modes[response.headers.get("X-Lock-Mode", "missing")] += 1
    if 200 <= response.status_code < 300:
        outcome.acknowledged.append(body)
        return
    if isinstance(body, dict):
        outcome.problem_codes[str(body.get("code", "missing"))] += 1
    if response.status_code >= 500:
        honest = response.status_code == 503 and "Retry-After" in response.headers
        if not honest:
            outcome.unexplained_5xx.append(f"{response.status_code} {response.text[:200]}")


def _json_or_none(response: requests.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def keep_alive_burst(
    url: str, connections: int, requests_each: int, timeout: float = REQUEST_TIMEOUT_SECONDS
) -> Counter[int]:
    """`connections` clients at once, each GETting `url` `requests_each` times on one kept-alive
    connection of its own (wrk's way, and an HTTP client pool's); the statuses."""

    def client(_: int) -> list[int]:
        with requests.Session() as session:
            return [session.get(url, timeout=timeout).status_code for _ in range(requests_each)]

    with ThreadPoolExecutor(connections) as pool:
        answers = pool.map(client, range(connections))
        return Counter(status for statuses in answers for status in statuses)


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


def journal_of(base_url: str, account_id: int, max_pages: int = 100) -> list[dict[str, Any]]:
    """The account's whole journal, oldest first, read page by page (bounded)."""
    entries: list[dict[str, Any]] = []
    url: str | None = f"{base_url}/accounts/{account_id}/transactions?limit=500"
    for _ in range(max_pages):
        if url is None:
            return sorted(entries, key=lambda entry: int(entry["id"]))
        response = requests.get(url, timeout=30)
        response.raise_for_status()
        page = response.json()
        entries.extend(page["items"])
        url = None if page["next"] is None else base_url + page["next"]
    raise AssertionError(f"journal of account {account_id} longer than {max_pages} pages")


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
