"""The load tools' client token: sent on every request, never written anywhere else.

A small recording HTTP server on 127.0.0.1 stands in for the bank: it answers
the few routes the tools read and notes each request's Authorization header,
so these tests see exactly what went over the wire.
"""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from loadtest.bank_http import BankClient, TokenRefused
from loadtest.client_token import NEEDS_TOKEN, WRONG_TOKEN, bearer, client_token
from loadtest.jepsen_bank import WorkloadOptions, run_workload
from loadtest.race_report import render_text
from loadtest.reconcile import RunSetup, reconcile
from loadtest.tally import Tally

CLIENT_TOKEN = "unit-client-token-5f1d9c"
ADMIN_TOKEN = "unit-admin-token-8e27ab"
ADMIN_READS = ("/mode", "/audit")


@dataclass
class FakeBank:
    """What the recording server takes and what it saw."""

    tokens: tuple[str, ...] = ()  # empty: no client authentication
    admin_only_reads: bool = False
    seen: list[tuple[str, str, str | None]] = field(default_factory=list)  # method, path, auth
    lock: threading.Lock = field(default_factory=threading.Lock)
    ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def answer(self, method: str, path: str, authorization: str | None) -> tuple[int, Any]:
        with self.lock:
            self.seen.append((method, path, authorization))
        token = authorization.removeprefix("Bearer ") if authorization else None
        if self.admin_only_reads and path in ADMIN_READS and method == "GET":
            if token is None:
                return 401, {"code": "unauthorized"}
            if token != ADMIN_TOKEN:
                return 403, {"code": "forbidden"}
        elif self.tokens and token not in (*self.tokens, ADMIN_TOKEN):
            return 401, {"code": "unauthorized", "detail": "send Authorization: Bearer <token>"}
        if method == "POST":
            with self.lock:
                return 201, {"id": next(self.ids)}  # an account or a transfer
        return read(path)


def read(path: str) -> tuple[int, Any]:
    if path == "/mode":
        return 200, {"lock_mode": "locked", "race_window_ms": 0}
    if path == "/audit":
        return 200, {"accounts": 2, "consistent": True}
    if path.startswith("/balances"):
        return 200, {
            "items": [{"account_id": 1, "balance": 100}, {"account_id": 2, "balance": 100}]
        }
    if path.endswith("/transactions"):
        return 200, {"items": [], "next": None}
    if path.endswith("/audit"):
        return 200, {"consistent": True, "drift": 0, "chain_breaks": 0}
    return 200, {"id": 1, "balance": 100}


@pytest.fixture
def bank() -> Iterator[tuple[FakeBank, str]]:
    fake = FakeBank()

    class Handler(BaseHTTPRequestHandler):
        def handle_one(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            path = urlsplit(self.path).path
            status, body = fake.answer(self.command, path, self.headers.get("Authorization"))
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = handle_one

        def log_message(self, *_args: Any) -> None:  # quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield fake, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def test_the_token_comes_from_bank_client_token_only() -> None:
    """BANK_CLIENT_TOKEN is read (blank is none); the server's BANK_API_TOKENS is not."""
    assert client_token({"BANK_CLIENT_TOKEN": " abc-token-1 "}) == "abc-token-1"
    assert client_token({"BANK_CLIENT_TOKEN": "  "}) is None
    assert client_token({"BANK_API_TOKENS": "server-side-token"}) is None
    assert bearer(None) == {}
    assert bearer("abc-token-1") == {"Authorization": "Bearer abc-token-1"}


def test_every_request_of_a_run_carries_the_client_token(bank: tuple[FakeBank, str]) -> None:
    """Set-up and reconciliation: mode, account, balance, audits, journal, /audit, all with it."""
    fake, url = bank
    fake.tokens = (CLIENT_TOKEN,)
    client = BankClient(url, token=CLIENT_TOKEN)
    try:
        assert client.mode()["lock_mode"] == "locked"
        account_id = client.open_account("token test", 100)
        observation = client.observe(account_id)
        audit = client.server_audit()
    finally:
        client.close()
    assert observation.balance == 100 and observation.audit is not None
    assert audit is not None
    paths = {path for _method, path, _auth in fake.seen}
    assert paths == {"/mode", "/accounts", "/accounts/1", "/accounts/1/audit",
                     "/accounts/1/transactions", "/audit"}  # fmt: skip
    assert {auth for _method, _path, auth in fake.seen} == {f"Bearer {CLIENT_TOKEN}"}


@pytest.mark.parametrize(
    ("token", "message"),
    [(None, NEEDS_TOKEN), ("unit-wrong-token-000", WRONG_TOKEN)],
    ids=["no token", "wrong token"],
)
def test_a_401_stops_at_the_first_request_with_one_line(
    bank: tuple[FakeBank, str], token: str | None, message: str
) -> None:
    """No token or a wrong one: the first request raises the line to act on, token-free."""
    fake, url = bank
    fake.tokens = (CLIENT_TOKEN,)
    client = BankClient(url, token=token)
    try:
        with pytest.raises(TokenRefused) as refused:
            client.mode()
    finally:
        client.close()
    assert str(refused.value) == message
    assert "\n" not in message and "BANK_CLIENT_TOKEN" in message
    assert len(fake.seen) == 1


def test_admin_only_reads_use_the_admin_token_when_given(bank: tuple[FakeBank, str]) -> None:
    """BANK_ADMIN_ONLY_READS: /mode and /audit go again with the admin token; the rest never."""
    fake, url = bank
    fake.tokens, fake.admin_only_reads = (CLIENT_TOKEN,), True
    client = BankClient(url, token=CLIENT_TOKEN, admin_token=ADMIN_TOKEN)
    try:
        assert client.mode()["lock_mode"] == "locked"
        assert client.server_audit() is not None
        client.observe(1)
    finally:
        client.close()
    admin = {path for _method, path, auth in fake.seen if auth == f"Bearer {ADMIN_TOKEN}"}
    assert admin == {"/mode", "/audit"}


def test_admin_only_reads_without_the_admin_token_are_unavailable(
    bank: tuple[FakeBank, str],
) -> None:
    """Without the admin token the run still works: the mode is unknown, /audit unavailable."""
    fake, url = bank
    fake.tokens, fake.admin_only_reads = (CLIENT_TOKEN,), True
    client = BankClient(url, token=CLIENT_TOKEN)
    try:
        assert client.mode() == {}
        assert client.server_audit() is None
        assert client.open_account("token test", 5) == 1
    finally:
        client.close()


def test_admin_only_reads_without_client_tokens_go_again_with_the_admin_token(
    bank: tuple[FakeBank, str],
) -> None:
    """No BANK_API_TOKENS, admin-only reads: the tokenless 401 is answered with the admin token."""
    fake, url = bank
    fake.admin_only_reads = True
    client = BankClient(url, admin_token=ADMIN_TOKEN)
    try:
        assert client.mode()["lock_mode"] == "locked"
        assert client.server_audit() is not None
        assert client.open_account("token test", 5) == 1
    finally:
        client.close()
    first_tries = [auth for _method, path, auth in fake.seen if path == "/mode"]
    assert first_tries == [None, f"Bearer {ADMIN_TOKEN}"]


def test_the_race_report_holds_no_token(bank: tuple[FakeBank, str]) -> None:
    """The reconciliation (text and JSON) is built from answers only: no token in it."""
    fake, url = bank
    fake.tokens = (CLIENT_TOKEN,)
    client = BankClient(url, token=CLIENT_TOKEN, admin_token=ADMIN_TOKEN)
    try:
        setup = RunSetup("run-1", "deposits", 10, {1: 100}, host=url, mode=client.mode())
        result = reconcile(setup, Tally("run-1"), {1: client.observe(1)}, client.server_audit(), 1)
    finally:
        client.close()
    for text in (render_text(result), json.dumps(result.to_dict()), json.dumps(setup.to_dict())):
        assert CLIENT_TOKEN not in text and ADMIN_TOKEN not in text
    assert len(fake.seen) >= 5


def test_the_jepsen_workload_sends_the_token_and_saves_none(
    bank: tuple[FakeBank, str], tmp_path: Path
) -> None:
    """Transfers, snapshot reads and the final read carry it; the saved history does not."""
    fake, url = bank
    fake.tokens = (CLIENT_TOKEN,)
    options = WorkloadOptions(accounts=2, writers=1, readers=1, duration_seconds=0.2)
    history = run_workload(url, options, token=CLIENT_TOKEN)
    history.save(tmp_path / "history.json")
    methods_and_paths = {(method, path) for method, path, _auth in fake.seen}
    assert {("POST", "/transfers"), ("GET", "/balances")} <= methods_and_paths
    assert {auth for _method, _path, auth in fake.seen} == {f"Bearer {CLIENT_TOKEN}"}
    assert CLIENT_TOKEN not in (tmp_path / "history.json").read_text()


def test_the_jepsen_workload_without_a_token_sends_no_load(bank: tuple[FakeBank, str]) -> None:
    """A 401 on the set-up's first request: TokenRefused, no transfer ever sent."""
    fake, url = bank
    fake.tokens = (CLIENT_TOKEN,)
    with pytest.raises(TokenRefused, match="set BANK_CLIENT_TOKEN"):
        run_workload(url, WorkloadOptions(duration_seconds=0.2))
    assert fake.seen == [("GET", "/mode", None)]
