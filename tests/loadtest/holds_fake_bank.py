"""A stand-in bank with holds, on 127.0.0.1, for the holds scenario's own tests.

It speaks the part of DESIGN §3 the load tools use (accounts, deposits,
transfers, holds, capture, void, reads, snapshot balances, audits, journals)
from one dict under one lock. `careful=True` keeps every hold rule
(available checked by holds and transfers out, one final status, no capture
after expiry); `careful=False` checks none of them, so that each hold
anomaly happens on purpose and the tools must count it. Its `held` is always
the sum of the holds it has pending and unexpired; `GET /balances` reports
it only with `balances_show_held=True`.
"""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def now() -> datetime:
    return datetime.now(UTC)


@dataclass
class FakeHold:
    id: int
    account_id: int
    amount: int
    expires_at: datetime
    status: str = "pending"

    def body(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "account_id": self.account_id,
            "amount": self.amount,
            "status": self.status,
            "expires_at": self.expires_at.isoformat(),
        }


@dataclass
class FakeHoldsBank:
    careful: bool
    balances_show_held: bool = False
    balances: dict[int, int] = field(default_factory=dict)
    journals: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    holds: dict[int, FakeHold] = field(default_factory=dict)
    ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    lock: threading.Lock = field(default_factory=threading.Lock)

    def held(self, account_id: int, moment: datetime) -> int:
        return sum(
            hold.amount
            for hold in self.holds.values()
            if hold.account_id == account_id and hold.status == "pending"
            and hold.expires_at > moment
        )  # fmt: skip

    def entry(self, account_id: int, kind: str, amount: int) -> dict[str, Any]:
        credit = kind in ("open", "deposit", "transfer_in")
        self.balances[account_id] += amount if credit else -amount
        entry = {
            "id": next(self.ids),
            "account_id": account_id,
            "kind": kind,
            "amount": amount,
            "balance_after": self.balances[account_id],
        }
        self.journals[account_id].append(entry)
        return entry

    def answer(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        with self.lock:
            return self.route(method, path.split("?")[0].strip("/").split("/"), body)

    def route(self, method: str, parts: list[str], body: Any) -> tuple[int, Any]:
        moment = now()
        if method == "GET" and parts == ["mode"]:
            mode = "locked" if self.careful else "unlocked"
            return 200, {"lock_mode": mode, "race_window_ms": 0}
        if method == "GET" and parts == ["audit"]:
            return 200, {"accounts": len(self.balances), "consistent": True}
        if method == "GET" and parts == ["balances"]:
            items = [
                {"account_id": account_id, "balance": balance}
                | ({"held": self.held(account_id, moment)} if self.balances_show_held else {})
                for account_id, balance in self.balances.items()
            ]
            return 200, {"items": items}
        if method == "POST" and parts == ["transfers"]:
            return self.transfer(body, moment)
        if method == "POST" and parts == ["accounts"]:
            account_id = next(self.ids)
            self.balances[account_id], self.journals[account_id] = 0, []
            self.entry(account_id, "open", int(body["opening_balance"]))
            return 201, {"id": account_id}
        if parts[0] == "accounts" and int(parts[1]) in self.balances:
            return self.account_route(method, int(parts[1]), parts[2:], body, moment)
        if method == "POST" and parts[0] == "holds" and int(parts[1]) in self.holds:
            return self.hold_route(self.holds[int(parts[1])], parts[2], body, moment)
        return 404, {"code": "not_found"}

    def transfer(self, body: Any, moment: datetime) -> tuple[int, Any]:
        source, target, amount = body["from_account"], body["to_account"], int(body["amount"])
        if self.careful and amount > self.balances[source] - self.held(source, moment):
            return 409, {"code": "insufficient_funds"}
        legs = [
            self.entry(source, "transfer_out", amount),
            self.entry(target, "transfer_in", amount),
        ]
        return 201, {"id": next(self.ids), "legs": legs}

    def account_route(
        self, method: str, account_id: int, rest: list[str], body: Any, moment: datetime
    ) -> tuple[int, Any]:
        balance, held = self.balances[account_id], self.held(account_id, moment)
        if method == "GET" and not rest:
            return 200, {"id": account_id, "balance": balance, "held": held,
                         "available": balance - held}  # fmt: skip
        if method == "GET" and rest == ["audit"]:
            return 200, {"balance": balance, "journal_balance": balance, "drift": 0,
                         "chain_breaks": 0, "consistent": True}  # fmt: skip
        if method == "GET" and rest == ["transactions"]:
            return 200, {"items": list(reversed(self.journals[account_id])), "next": None}
        if method == "POST" and rest == ["deposit"]:
            return 201, self.entry(account_id, "deposit", int(body["amount"]))
        if method == "POST" and rest == ["holds"]:
            amount = int(body["amount"])
            if self.careful and amount > balance - held:
                return 409, {"code": "insufficient_funds"}
            expires_at = moment + timedelta(seconds=int(body["expires_in_s"]))
            hold = FakeHold(next(self.ids), account_id, amount, expires_at)
            self.holds[hold.id] = hold
            return 201, hold.body()
        return 404, {"code": "not_found"}

    def hold_route(
        self, hold: FakeHold, action: str, body: Any, moment: datetime
    ) -> tuple[int, Any]:
        if hold.status == "pending" and hold.expires_at <= moment:
            hold.status = "expired"
        if self.careful and hold.status != "pending":
            return 409, {"code": "hold_not_pending", "detail": f"the hold is {hold.status}"}
        if action == "void":
            hold.status = "voided"
            return 200, hold.body()
        hold.status = "captured"
        return 201, self.entry(hold.account_id, "capture", int(body["amount"]))


@contextmanager
def serving(bank: FakeHoldsBank) -> Iterator[str]:
    """Serve `bank` on a free loopback port; yields its base URL."""

    class Handler(BaseHTTPRequestHandler):
        def respond(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            status, answer = bank.answer(self.command, self.path, json.loads(raw) if raw else None)
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = respond

        def log_message(self, *_args: Any) -> None:  # quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
