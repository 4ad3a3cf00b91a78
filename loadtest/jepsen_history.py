"""The history of a Jepsen-style bank run: every operation, as JSON an outside checker can read.

Shaped after Jepsen's histories (and so readable by a Knossos/Elle-style
tool after a key rename): a list of operations, each

    {"index": 7, "time": 120034567, "process": 2, "type": "invoke",
     "f": "transfer", "value": {"from": 1, "to": 3, "amount": 4}}

- `process`: an integer per client thread, or "nemesis" for the fault injector;
- `type`: "invoke" when a client sends an operation, then exactly one of
  "ok" (it happened), "fail" (it certainly did not happen) or "info" (no one
  knows: a timeout, a reset connection, a 5xx that may have applied) from the
  same process; the nemesis writes only "info" operations;
- `f`: "transfer", "read", "hold" or "void" for clients; "kill", "pause",
  "resume", "cut", "restore" for the nemesis (a hold moves no money: it is
  voided or left to expire, never captured);
- `value`: a transfer's {"from", "to", "amount"}; a hold's {"account",
  "amount"}; a void's {"hold"}; a read's balances as
  {"<account id>": balance} on "ok" (null on its invoke); a fault's target;
- `time`: nanoseconds since the run started (monotonic clock);
- optional: `error` (why a fail or info), `final` (true on the read taken
  after the faults healed), `transfer_id`, and on an "ok" read `held`
  ({"<account id>": held}) when the service reports the money its pending
  holds keep (DESIGN §3 Holds): the read's available = balance - held; or,
  when /balances does not report it, `held_reads` ({"<account id>":
  {"balance", "held"}} from each account's own GET, not one snapshot);
  `hold_id` on an "ok" hold.

The document around the list says what the checker needs to know: the
accounts and their opening balances (so the expected total), the mode the
service said it ran, and the workload's options. Nothing here talks HTTP.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FORMAT = "bankrace-jepsen-bank/1"
CLIENT_FUNCTIONS = ("transfer", "read", "hold", "void")
FAULT_FUNCTIONS = ("kill", "pause", "resume", "cut", "restore")
TYPES = ("invoke", "ok", "fail", "info")
NEMESIS = "nemesis"


@dataclass
class History:
    """A thread-safe, append-only list of operations with the run's metadata."""

    opening_balances: dict[int, int]
    metadata: dict[str, Any] = field(default_factory=dict)
    operations: list[dict[str, Any]] = field(default_factory=list)
    started_ns: int = field(default_factory=time.monotonic_ns)
    _guard: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def account_ids(self) -> list[int]:
        return list(self.opening_balances)

    @property
    def total(self) -> int:
        return sum(self.opening_balances.values())

    def append(
        self, process: int | str, kind: str, function: str, value: Any = None, **extra: Any
    ) -> dict[str, Any]:
        if kind not in TYPES:
            raise ValueError(f"unknown operation type {kind!r}")
        fields = {
            "process": process,
            "type": kind,
            "f": function,
            "value": value,
            **{name: item for name, item in extra.items() if item is not None},
        }
        with self._guard:
            operation = {
                "index": len(self.operations),
                "time": time.monotonic_ns() - self.started_ns,
                **fields,
            }
            self.operations.append(operation)
        return operation

    def snapshot(self) -> list[dict[str, Any]]:
        with self._guard:
            return list(self.operations)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            **self.metadata,
            "accounts": self.account_ids,
            "opening_balances": {str(key): value for key, value in self.opening_balances.items()},
            "total": self.total,
            "history": self.snapshot(),
        }

    def save(self, path: Path) -> None:
        """Write the document: metadata indented, then one operation per line."""
        document = self.to_dict()
        operations = document.pop("history")
        head = json.dumps(document, indent=1)
        lines = ",\n".join(f"  {json.dumps(operation)}" for operation in operations)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f'{head.removesuffix("}").rstrip()},\n "history": [\n{lines}\n ]\n}}\n')


def balances_value(balances: dict[int, int]) -> dict[str, int]:
    """A read's value as JSON keys it: account ids as strings."""
    return {str(account_id): balance for account_id, balance in balances.items()}


def load(path: Path) -> dict[str, Any]:
    """A saved history document; ValueError if it is not one."""
    document = json.loads(path.read_text())
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise ValueError(f"{path} is not a {FORMAT} history")
    return document
