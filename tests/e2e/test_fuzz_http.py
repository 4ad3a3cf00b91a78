"""Hostile input against a real `bankrace serve`: no 5xx, only contract problems, sound books.

A hand-written fuzzer (tests/support/hostile_http.py; the OpenAPI-driven one
waits for the document) sends 5,000 seeded random requests (all of them: one
left unsent at the send deadline fails the run) over raw sockets to a real
gunicorn on SQLite: random JSON types in every field, huge numbers, unicode
and lone surrogates, control characters and NUL, 1,000-deep nesting,
duplicate and unknown keys, wrong media types and charsets, bodies over
64 KiB, Content-Length mismatches, odd paths, methods, query strings,
headers and framing. Every answer is judged:

- never a 5xx (a 503 with Retry-After and a code of lock_timeout,
  write_conflict or store_unavailable would be honest, and is counted);
- every 4xx the service gives is application/problem+json whose `code`
  belongs to DESIGN §3 with that status, with no stack trace, SQL or path;
  gunicorn answers some malformed HTTP itself before the service sees it:
  those answers are recorded and printed, and must be problems too (with a
  code of service/http_problems.py, no X-Request-ID: no request exists yet);
- every answer of the service carries X-Request-ID (the client's when it was
  acceptable) and every POST answer X-Lock-Mode; PUT /mode is never accepted
  without the admin token.

At the end the books must equal what the acknowledged (201) requests imply:
every balance, the bank total, a consistent /audit, and the mode unchanged.
Set FUZZ_SEED to replay a run's requests.
"""

from __future__ import annotations

import html
import json
import os
import random
import socket
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pytest
import requests

from service.http_problems import GUNICORN_PROBLEM_CODES
from tests.e2e.conftest import StartServer
from tests.support.hostile_http import (
    MALFORMED_CHUNKED_BODIES,
    HostileRequests,
    RawRequest,
    RawResponse,
    chunked_request,
    exchange,
    http_request,
    parse_response,
)

pytestmark = pytest.mark.e2e

REQUESTS = 5000
CLIENT_THREADS = 4
# Bounds a hung run only (all 5000 take about 6 s): a request still unsent then fails the test.
SEND_DEADLINE_SECONDS = 45
BALANCE_LIMIT = 2**53 - 1
PROBLEM_MEDIA_TYPE = "application/problem+json"
# DESIGN §3: every problem code and the statuses it may come with.
CONTRACT_CODES: dict[str, set[int]] = {
    "malformed_json": {400},
    "unsupported_media_type": {415},
    "validation_error": {422},
    "not_found": {404},
    "method_not_allowed": {405},
    "payload_too_large": {413},
    "request_timeout": {408},
    "unauthorized": {401},
    "forbidden": {403},
    "insufficient_funds": {409},
    "balance_limit_exceeded": {409},
    "same_account": {422},
    "currency_mismatch": {422},
    "invalid_idempotency_key": {400},
    "idempotency_in_progress": {409},
    "idempotency_key_reused": {422},
}
HONEST_503_CODES = {"lock_timeout", "write_conflict", "store_unavailable"}
# The worker's refusals before a request exists: gunicorn's (service/http_problems.py), a late head.
GUNICORN_CODES = {*GUNICORN_PROBLEM_CODES.values(), "request_timeout"}
# What must never reach a client in a problem's detail.
LEAKS = ("Traceback", 'File "', "site-packages", "/work/", "SELECT ", "INSERT ", "sqlite3.")
# Categories whose requests are well-formed HTTP: the service must answer each one.
WELL_FORMED = {"fields", "raw_json", "media_type", "query", "headers"}
SETUP_ACCOUNTS = [
    ("USD", 1_000_000),
    ("USD", 1_000_000),
    ("USD", 50),
    ("USD", 0),
    ("USD", BALANCE_LIMIT - 1000),
    ("EUR", 1_000_000),
]


@dataclass
class Ledger:
    """What the acknowledged requests imply, and every verdict on the answers."""

    balances: dict[int, int] = field(default_factory=dict)
    sent: Counter[str] = field(default_factory=Counter)
    statuses: Counter[int] = field(default_factory=Counter)
    statuses_by_category: dict[str, Counter[int]] = field(default_factory=dict)
    codes: Counter[str] = field(default_factory=Counter)
    acknowledged: Counter[str] = field(default_factory=Counter)
    gunicorn_own: Counter[str] = field(default_factory=Counter)
    gunicorn_reasons: Counter[str] = field(default_factory=Counter)
    no_answer: Counter[str] = field(default_factory=Counter)
    no_answer_examples: set[str] = field(default_factory=set)
    honest_503: int = 0
    unsent: int = 0
    incomplete_body_acknowledged: int = 0
    violations: list[str] = field(default_factory=list)
    guard: threading.Lock = field(default_factory=threading.Lock)

    @property
    def five_xx(self) -> int:
        return sum(count for status, count in self.statuses.items() if status >= 500)

    def book(self, created: object) -> str:
        """Apply one 201 answer's effect; the kind of thing it created."""
        if not isinstance(created, dict):
            raise ValueError(f"201 body is not an object: {created!r}")
        if "legs" in created:
            self.balances[created["from_account"]] -= created["amount"]
            self.balances[created["to_account"]] += created["amount"]
            return "transfer"
        if "kind" in created:
            sign = -1 if created["kind"] == "withdrawal" else 1
            self.balances[created["account_id"]] += sign * created["amount"]
            return created["kind"]
        if "owner" in created:
            self.balances[created["id"]] = created["balance"]
            return "account"
        raise ValueError(f"unrecognised 201 body: {created!r}")


def gunicorn_reason(page: bytes) -> str:
    """The reason on gunicorn's own answer, without the part quoting the request."""
    text = page.decode("latin-1")
    if text.startswith("{"):  # a problem (service/http_problems.py)
        reason = str(json.loads(text).get("detail", ""))
    else:
        reason = html.unescape(text.split("</h1>", 1)[-1].split("</body>", 1)[0].strip())
    return reason.split(":", 1)[0].split("(", 1)[0].split("'", 1)[0].strip()[:60]


def from_gunicorn(response: RawResponse) -> bool:
    """gunicorn's own refusal of malformed HTTP, written before any request (id) exists."""
    if response.headers.get("content-type", "").startswith("text/html"):
        return True  # its own page: a violation, since its refusals are problems now
    if not response.body:  # HEAD: the raw client reads the head only
        return response.status in {*GUNICORN_PROBLEM_CODES, 408}
    try:
        code = response.json().get("code")
    except (ValueError, AttributeError):
        return False
    return code in GUNICORN_CODES


def request_line(request: RawRequest) -> str:
    return request.data.split(b"\r\n", 1)[0][:120].decode("latin-1")


def judge(request: RawRequest, response: RawResponse, ledger: Ledger) -> None:
    """Record the answer and every way it breaks the contract (under the ledger's guard)."""
    where = f"[{request.category}] {request_line(request)!r}"
    ledger.sent[request.category] += 1
    if response.status is None:
        ledger.no_answer[request.category] += 1
        ledger.no_answer_examples.add(f"{request.data[:40]!r}: {response.failure[:60]}")
        if request.category in WELL_FORMED:
            ledger.violations.append(f"{where}: no answer ({response.failure})")
        return
    status = response.status
    ledger.statuses[status] += 1
    ledger.statuses_by_category.setdefault(request.category, Counter())[status] += 1
    content_type = response.headers.get("content-type", "")
    if "x-request-id" not in response.headers and from_gunicorn(response):
        ledger.gunicorn_own[f"{status} {request.category}"] += 1
        reason = "(HEAD: no page)" if request.method == "HEAD" else gunicorn_reason(response.body)
        ledger.gunicorn_reasons[f"{status} {reason}"] += 1
        if status >= 500:
            ledger.violations.append(f"{where}: gunicorn answered {status}")
        if not content_type.startswith(PROBLEM_MEDIA_TYPE):
            ledger.violations.append(f"{where}: gunicorn answered {status} as {content_type!r}")
        return
    judge_service_answer(request, response, ledger, where)


def judge_service_answer(
    request: RawRequest, response: RawResponse, ledger: Ledger, where: str
) -> None:
    status = response.status
    assert status is not None
    headers = response.headers
    if "x-request-id" not in headers:
        ledger.violations.append(f"{where}: {status} without X-Request-ID")
    elif request.echo_request_id is not None and headers["x-request-id"] != request.echo_request_id:
        ledger.violations.append(f"{where}: X-Request-ID not echoed: {headers['x-request-id']!r}")
    if request.method == "POST" and "x-lock-mode" not in headers:
        ledger.violations.append(f"{where}: POST answered {status} without X-Lock-Mode")
    if request_line(request).startswith("PUT /mode ") and status < 300:
        ledger.violations.append(f"{where}: the mode was changed without the admin token")
    if status == 201:
        judge_created(request, response, ledger, where)
    elif status >= 400:
        judge_problem(request, response, ledger, where)


def judge_created(request: RawRequest, response: RawResponse, ledger: Ledger, where: str) -> None:
    if response.headers.get("idempotent-replayed", "").lower() == "true":
        return  # a replay executed nothing
    try:
        kind = ledger.book(response.json())
    except (ValueError, KeyError, TypeError) as error:
        ledger.violations.append(f"{where}: 201 not understood: {error}")
        return
    ledger.acknowledged[kind] += 1
    if request.truncated_body:
        ledger.incomplete_body_acknowledged += 1


def judge_problem(request: RawRequest, response: RawResponse, ledger: Ledger, where: str) -> None:
    status = response.status
    assert status is not None
    if not response.headers.get("content-type", "").startswith(PROBLEM_MEDIA_TYPE):
        ledger.violations.append(
            f"{where}: {status} as {response.headers.get('content-type')!r}: "
            f"{response.body[:200]!r}"
        )
        return
    if request.method == "HEAD":  # the problem's headers without its body
        ledger.codes[f"{status} (HEAD)"] += 1
        if status >= 500:
            ledger.violations.append(f"{where}: {status}")
        return
    try:
        problem = response.json()
    except ValueError:
        ledger.violations.append(f"{where}: {status} problem is not JSON: {response.body[:200]!r}")
        return
    if not isinstance(problem, dict):
        ledger.violations.append(f"{where}: {status} problem is not an object")
        return
    code = problem.get("code")
    ledger.codes[f"{status} {code}"] += 1
    if problem.get("status") != status:
        ledger.violations.append(f"{where}: problem status {problem.get('status')} != {status}")
    detail = str(problem.get("detail", ""))
    if any(leak in detail for leak in LEAKS):
        ledger.violations.append(f"{where}: the detail leaks internals: {detail[:300]!r}")
    if status == 503 and code in HONEST_503_CODES and "retry-after" in response.headers:
        ledger.honest_503 += 1
    elif status >= 500:
        ledger.violations.append(f"{where}: {status} {code}: {detail[:300]!r}")
    elif code not in CONTRACT_CODES or status not in CONTRACT_CODES[str(code)]:
        ledger.violations.append(f"{where}: {status} with code {code!r}, not in DESIGN §3")


def open_setup_accounts(base_url: str, ledger: Ledger) -> list[int]:
    ids = []
    for currency, opening in SETUP_ACCOUNTS:
        answer = requests.post(
            f"{base_url}/accounts",
            json={"owner": "fuzz target", "currency": currency, "opening_balance": opening},
            timeout=10,
        )
        assert answer.status_code == 201, answer.text
        ids.append(answer.json()["id"])
        ledger.book(answer.json())
    return ids


def send_all(port: int, hostile: list[RawRequest], ledger: Ledger) -> int:
    """Send every request (CLIENT_THREADS at a time); how many were sent.

    Those the deadline leaves unsent are counted in `ledger.unsent`, never dropped quietly.
    """
    deadline = time.monotonic() + SEND_DEADLINE_SECONDS
    sent = [0]

    def send(request: RawRequest) -> None:
        if time.monotonic() > deadline:
            with ledger.guard:
                ledger.unsent += 1
            return
        response = exchange(port, request)
        with ledger.guard:
            sent[0] += 1
            judge(request, response, ledger)

    with ThreadPoolExecutor(max_workers=CLIENT_THREADS) as pool:
        list(pool.map(send, hostile))
    return sent[0]


def books_problems(base_url: str, ledger: Ledger) -> list[str]:
    """How the server's books differ from what the acknowledged requests imply."""
    problems = []
    for account_id, expected in sorted(ledger.balances.items()):
        account = requests.get(f"{base_url}/accounts/{account_id}", timeout=10).json()
        if account["balance"] != expected:
            problems.append(f"account {account_id}: balance {account['balance']} != {expected}")
        audit = requests.get(f"{base_url}/accounts/{account_id}/audit", timeout=10).json()
        if not audit["consistent"]:
            problems.append(f"account {account_id}: audit {audit}")
    audit = requests.get(f"{base_url}/audit", timeout=10).json()
    expected_total = sum(ledger.balances.values())
    if not audit["consistent"] or audit["drift"] != 0:
        problems.append(f"bank audit inconsistent: {audit}")
    if (audit["accounts"], audit["total_balance"]) != (len(ledger.balances), expected_total):
        problems.append(
            f"bank audit (accounts, total) {(audit['accounts'], audit['total_balance'])} "
            f"!= acknowledged {(len(ledger.balances), expected_total)}"
        )
    mode = requests.get(f"{base_url}/mode", timeout=10).json()
    if (mode["lock_mode"], mode["race_window_ms"]) != ("locked", 0):
        problems.append(f"the mode changed: {mode}")
    return problems


def summary(ledger: Ledger, seed: int, sent: int, seconds: float) -> str:
    lines = [
        f"fuzz seed {seed} (FUZZ_SEED={seed} replays it): {sent} requests in {seconds:.1f}s, "
        f"{ledger.unsent} left unsent at the {SEND_DEADLINE_SECONDS} s deadline",
        "  sent by category: " + ", ".join(f"{k} {v}" for k, v in sorted(ledger.sent.items())),
        "  statuses: " + ", ".join(f"{k}: {v}" for k, v in sorted(ledger.statuses.items())),
    ]
    for category, statuses in sorted(ledger.statuses_by_category.items()):
        lines.append(
            f"    {category}: " + ", ".join(f"{k}: {v}" for k, v in sorted(statuses.items()))
        )
    lines += [
        "  problem codes: " + ", ".join(f"{k}: {v}" for k, v in sorted(ledger.codes.items())),
        "  acknowledged (201): "
        + ", ".join(f"{k} {v}" for k, v in sorted(ledger.acknowledged.items())),
        "  gunicorn's own answers: "
        + (", ".join(f"{k}: {v}" for k, v in sorted(ledger.gunicorn_own.items())) or "none"),
        "  gunicorn's reasons: "
        + (", ".join(f"{k}: {v}" for k, v in sorted(ledger.gunicorn_reasons.items())) or "none"),
        f"  no answer: {dict(ledger.no_answer) or 'none'} {sorted(ledger.no_answer_examples)}",
        f"  5xx: {ledger.five_xx} (honest 503s {ledger.honest_503})",
        f"  bodies shorter than their Content-Length acknowledged: "
        f"{ledger.incomplete_body_acknowledged}",
        f"  contract violations: {len(ledger.violations)}",
    ]
    return "\n".join(lines)


@pytest.mark.parametrize("server_backend", ["sqlite"])
def test_hostile_requests_get_contract_answers_and_leave_the_books_sound(
    start_server: StartServer,
) -> None:
    """5,000 hostile requests, every one sent: no 5xx, problem+json 4xx, books equal the 201s."""
    server = start_server()
    seed = int(os.environ.get("FUZZ_SEED", random.randrange(2**32)))
    print(f"\nfuzz seed {seed}")
    ledger = Ledger()
    account_ids = open_setup_accounts(server.url, ledger)
    hostile = HostileRequests(random.Random(seed), account_ids).draw(REQUESTS)
    started = time.monotonic()
    sent = send_all(server.port, hostile, ledger)
    seconds = time.monotonic() - started
    books = books_problems(server.url, ledger)
    print(summary(ledger, seed, sent, seconds))
    for violation in ledger.violations[:40]:
        print("  VIOLATION", violation)
    assert ledger.unsent == 0, f"{ledger.unsent} of {len(hostile)} requests unsent at the deadline"
    assert sent == sum(ledger.sent.values()) == len(hostile) == REQUESTS
    assert ledger.five_xx == ledger.honest_503, "5xx answered (see VIOLATION lines)"
    assert ledger.violations == []
    assert books == []
    tracebacks = server.read_log().count("Traceback")
    assert tracebacks == 0, f"{tracebacks} tracebacks in the server log"


@pytest.mark.parametrize("server_backend", ["sqlite"])
def test_a_body_that_ends_before_its_content_length_changes_nothing(
    start_server: StartServer,
) -> None:
    """A deposit whose body stops short of its Content-Length is refused and deposits nothing."""
    server = start_server()
    ledger = Ledger()
    account_id = open_setup_accounts(server.url, ledger)[0]
    body = b'{"amount": 7}'
    data = http_request(
        "POST", f"/accounts/{account_id}/deposit", body, content_length=len(body) + 20
    )
    response = exchange(server.port, RawRequest("length_mismatch", "POST", data, True))
    balance = requests.get(f"{server.url}/accounts/{account_id}", timeout=10).json()["balance"]
    assert balance == ledger.balances[account_id], "the truncated deposit was executed"
    assert response.status == 408
    assert json.loads(response.body)["code"] == "request_timeout"


@pytest.mark.parametrize("server_backend", ["sqlite"])
def test_a_malformed_chunked_body_is_a_4xx_problem_that_changes_nothing(
    start_server: StartServer,
) -> None:
    """Each broken chunked framing is answered with a contract 4xx and deposits nothing."""
    server = start_server()
    ledger = Ledger()
    account_id = open_setup_accounts(server.url, ledger)[0]
    answers = {}
    for name, chunked_body in MALFORMED_CHUNKED_BODIES.items():
        request = RawRequest(
            "framing", "POST", chunked_request(f"/accounts/{account_id}/deposit", chunked_body)
        )
        response = exchange(server.port, request)
        judge(request, response, ledger)
        answers[name] = response.status
    print(f"\nmalformed chunked bodies: {answers}")
    balance = requests.get(f"{server.url}/accounts/{account_id}", timeout=10).json()["balance"]
    assert balance == ledger.balances[account_id]
    assert ledger.violations == []
    assert all(status is not None and 400 <= status < 500 for status in answers.values()), answers


def test_the_raw_client_reports_a_server_that_closes_without_answering() -> None:
    """exchange() returns status None (no answer) when the peer closes without a response."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def accept_and_close() -> None:
        connection, _ = listener.accept()
        connection.recv(1024)
        connection.close()

    closer = threading.Thread(target=accept_and_close)
    closer.start()
    response = exchange(port, RawRequest("fields", "GET", http_request("GET", "/healthz")))
    closer.join(10)
    listener.close()
    assert response.status is None and response.failure


@pytest.mark.parametrize(
    ("raw_answer", "flagged"),
    [
        (
            b"HTTP/1.1 500 X\r\nX-Request-ID: a\r\nContent-Type: application/problem+json\r\n\r\n"
            b'{"status": 500, "code": "internal_error", "detail": "x"}',
            "500",
        ),
        (b"HTTP/1.1 422 X\r\nX-Request-ID: a\r\nContent-Type: text/plain\r\n\r\nbad", "text/plain"),
        (
            b"HTTP/1.1 422 X\r\nX-Request-ID: a\r\nContent-Type: application/problem+json\r\n\r\n"
            b'{"status": 422, "code": "made_up", "detail": "x"}',
            "made_up",
        ),
        (
            b"HTTP/1.1 404 X\r\nX-Request-ID: a\r\nContent-Type: application/problem+json\r\n\r\n"
            b'{"status": 404, "code": "not_found", "detail": "Traceback (most recent call last)"}',
            "leaks",
        ),
        (
            b"HTTP/1.1 404 X\r\nContent-Type: application/problem+json\r\n\r\n"
            b'{"status": 404, "code": "not_found", "detail": "x"}',
            "without X-Request-ID",
        ),
    ],
)
def test_the_judge_flags_answers_that_break_the_contract(raw_answer: bytes, flagged: str) -> None:
    """judge() flags a 500, a non-problem 4xx, an unknown code, a leak and a missing id."""
    ledger = Ledger()
    request = RawRequest("fields", "GET", http_request("GET", "/accounts/1"))
    judge(request, parse_response(raw_answer, head_only=False), ledger)
    assert len(ledger.violations) == 1 and flagged in ledger.violations[0]
