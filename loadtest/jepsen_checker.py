"""Check a Jepsen-style bank history: the total never changes and no balance goes negative.

    python -m loadtest.jepsen_checker var/jepsen/history.json [--json]

Reads a history written by loadtest/jepsen_bank.py (format in
loadtest/jepsen_history.py) and judges it as Jepsen's `bank` checker does:

- every "ok" read is checked: its balances cover every account, sum to the
  opening total (transfers only move money) and none is negative; a read
  that carries each account's `held` (a service with holds) must show no
  `available` (balance - held) below zero, that is no held above the balance
  (`held` beside the snapshot, or `held_reads`, each account's own balance
  and held); holds and voids are counted, and move no money;
- the history is well formed: each invoke is completed once, by its process;
  an invoke never completed counts as indeterminate ("info");
- the final read, taken after the faults healed, reconciles the
  indeterminate transfers: its total must be the opening total, and each
  account's balance must be its opening balance plus every "ok" transfer
  plus some subset of the "info" ones (a bounded search; "undecided" if the
  subset space is too large, which does not fail the run by itself).
  A "fail" transfer that happened anyway shows up here.

It reports operations, reads checked, faults injected per kind, wrong totals,
negative balances and indeterminate operations; the exit code is 0 when the
history is valid, 1 when it is not, 2 when the file is not a history.
Standard library only; it knows nothing of the service.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from loadtest.jepsen_history import FAULT_FUNCTIONS, NEMESIS, load

# The subset search over indeterminate transfers stops past this many
# reachable balance vectors (memory and time stay small; the answer is then
# "undecided").
MAX_RECONCILE_STATES = 200_000
# Wrong reads quoted in the report, as examples.
EXAMPLES_KEPT = 5
# A pause and a cut are one fault each; resume and restore end them.
FAULT_KINDS = ("kill", "pause", "cut")

Vector = tuple[int, ...]


@dataclass
class Final:
    """What the final read says, reconciled against the history."""

    present: bool = False
    total: int | None = None
    negative_accounts: list[int] = field(default_factory=list)
    #: True: the final balances are the "ok" transfers plus some of the "info" ones;
    #: False: no subset explains them; None: not decided (no final read, or too many).
    explained: bool | None = None
    residual: dict[str, int] = field(default_factory=dict)


@dataclass
class Report:
    valid: bool
    operations: int
    outcomes: dict[str, dict[str, int]]
    reads_checked: int
    faults: dict[str, int]
    wrong_totals: int
    negative_balances: int
    indeterminate: int
    #: why operations failed or are indeterminate: "no answer", "503 lock_timeout", ...
    errors: dict[str, int]
    expected_total: int
    final: Final
    problems: list[str]
    wrong_reads: list[dict[str, Any]]
    overheld_reads: int = 0  # reads with held above the balance: available below 0 (holds)
    reads_with_holds: int = 0  # reads that reported held at all

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Scan:
    accounts: list[int]
    opening: dict[int, int]
    expected_total: int
    outcomes: dict[str, Counter[str]] = field(default_factory=dict)
    faults: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    pending: dict[Any, dict[str, Any]] = field(default_factory=dict)
    definite: list[Vector] = field(default_factory=list)
    indeterminate: list[Vector] = field(default_factory=list)
    reads_checked: int = 0
    wrong_totals: int = 0
    negative_reads: int = 0
    overheld_reads: int = 0
    reads_with_holds: int = 0
    wrong_reads: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    final: dict[str, Any] | None = None
    operations: int = 0


def check(document: dict[str, Any]) -> Report:
    """Judge a history document (as `loadtest.jepsen_history.load` returns it)."""
    opening = {int(key): int(value) for key, value in document["opening_balances"].items()}
    accounts = [int(account) for account in document["accounts"]]
    scan = _Scan(accounts, opening, sum(opening.values()))
    for operation in document["history"]:
        _step(scan, operation)
    for invoke in scan.pending.values():  # never completed (the run ended): nobody knows
        if not invoke.get("final"):
            _count(scan, invoke["f"], "info")
            scan.errors[f"{invoke['f']}: never completed"] += 1
        if invoke["f"] == "transfer":
            delta = _transfer_delta(scan, invoke["value"])
            if delta is not None:
                scan.indeterminate.append(delta)
    final = _reconcile(scan)
    if scan.final is not None and _overheld_accounts(scan.final, read_balances_of(scan.final)):
        scan.overheld_reads += 1
    indeterminate = sum(counter["info"] for counter in scan.outcomes.values())
    problems = list(scan.problems)
    if scan.wrong_totals:
        problems.append(f"{scan.wrong_totals} reads saw a total other than {scan.expected_total}")
    if scan.negative_reads:
        problems.append(f"{scan.negative_reads} reads saw a negative balance")
    if scan.overheld_reads:
        problems.append(
            f"{scan.overheld_reads} reads saw available below zero (held above the balance)"
        )
    problems += _final_problems(final, scan.expected_total)
    valid = (
        not scan.wrong_totals
        and not scan.negative_reads
        and not scan.overheld_reads
        and not scan.problems
        and final.present
        and final.total == scan.expected_total
        and not final.negative_accounts
        and final.explained is not False
    )
    return Report(
        valid=valid,
        operations=scan.operations,
        outcomes={name: dict(counter) for name, counter in sorted(scan.outcomes.items())},
        reads_checked=scan.reads_checked,
        faults={kind: scan.faults[kind] for kind in FAULT_KINDS},
        wrong_totals=scan.wrong_totals,
        negative_balances=scan.negative_reads,
        indeterminate=indeterminate,
        errors=dict(scan.errors.most_common()),
        expected_total=scan.expected_total,
        final=final,
        problems=problems,
        wrong_reads=scan.wrong_reads,
        overheld_reads=scan.overheld_reads,
        reads_with_holds=scan.reads_with_holds,
    )


def _step(scan: _Scan, operation: dict[str, Any]) -> None:
    process, kind, function = operation["process"], operation["type"], operation["f"]
    if process == NEMESIS:
        if function not in FAULT_FUNCTIONS or kind != "info":
            scan.problems.append(f"operation {operation['index']}: odd nemesis operation")
        scan.faults[function] += 1
        return
    if kind == "invoke":
        if process in scan.pending:
            scan.problems.append(
                f"operation {operation['index']}: process {process} invoked twice at once"
            )
        scan.pending[process] = operation
        if not operation.get("final"):
            scan.operations += 1
        return
    invoke = scan.pending.pop(process, None)
    if invoke is None or invoke["f"] != function:
        scan.problems.append(f"operation {operation['index']}: a completion without its invoke")
        return
    if not operation.get("final"):  # the final read is reported apart
        _count(scan, function, kind)
        if kind != "ok":
            scan.errors[f"{function}: {operation.get('error') or 'unknown'}"] += 1
    if function == "transfer":
        delta = _transfer_delta(scan, invoke["value"])
        if delta is None:
            scan.problems.append(f"operation {operation['index']}: a transfer of unknown accounts")
        elif kind == "ok":
            scan.definite.append(delta)
        elif kind == "info":
            scan.indeterminate.append(delta)
    elif function == "read" and kind == "ok":
        if operation.get("final"):
            scan.final = operation
        else:
            _check_read(scan, operation)


def _count(scan: _Scan, function: str, kind: str) -> None:
    scan.outcomes.setdefault(function, Counter())[kind] += 1


def _transfer_delta(scan: _Scan, value: dict[str, Any]) -> Vector | None:
    position = {account: number for number, account in enumerate(scan.accounts)}
    source, target = position.get(int(value["from"])), position.get(int(value["to"]))
    if source is None or target is None:
        return None
    delta = [0] * len(scan.accounts)
    delta[source] -= int(value["amount"])
    delta[target] += int(value["amount"])
    return tuple(delta)


def read_balances_of(operation: dict[str, Any]) -> dict[int, int]:
    return {int(key): int(value) for key, value in (operation.get("value") or {}).items()}


def _check_read(scan: _Scan, operation: dict[str, Any]) -> None:
    scan.reads_checked += 1
    balances = read_balances_of(operation)
    total = sum(balances.values())
    incomplete = set(balances) != set(scan.accounts)
    negative = [account for account, balance in balances.items() if balance < 0]
    overheld = _overheld_accounts(operation, balances)
    if total != scan.expected_total or incomplete:
        scan.wrong_totals += 1
    if negative:
        scan.negative_reads += 1
    if operation.get("held") is not None or operation.get("held_reads") is not None:
        scan.reads_with_holds += 1
    if overheld:
        scan.overheld_reads += 1
    wrong = total != scan.expected_total or incomplete or bool(negative) or bool(overheld)
    if wrong and len(scan.wrong_reads) < EXAMPLES_KEPT:
        scan.wrong_reads.append(
            {
                "index": operation["index"],
                "time": operation["time"],
                "process": operation["process"],
                "total": total,
                "balances": operation.get("value"),
                **({"overheld_accounts": overheld} if overheld else {}),
            }
        )


def _overheld_accounts(operation: dict[str, Any], balances: dict[int, int]) -> list[int]:
    """Accounts the read shows with held above the balance (available below zero)."""
    held = {int(key): int(value) for key, value in (operation.get("held") or {}).items()}
    overheld = {
        account for account, amount in held.items() if amount > balances.get(account, amount)
    }
    for key, read in (operation.get("held_reads") or {}).items():
        if int(read["held"]) > int(read["balance"]):
            overheld.add(int(key))
    return sorted(overheld)


def _reconcile(scan: _Scan) -> Final:
    if scan.final is None:
        return Final()
    balances = read_balances_of(scan.final)
    final = Final(
        present=True,
        total=sum(balances.values()),
        negative_accounts=sorted(account for account, balance in balances.items() if balance < 0),
    )
    if set(balances) != set(scan.accounts):
        final.explained = False
        return final
    expected = [scan.opening[account] for account in scan.accounts]
    for delta in scan.definite:
        expected = [value + change for value, change in zip(expected, delta, strict=True)]
    residual = tuple(
        balances[account] - value for account, value in zip(scan.accounts, expected, strict=True)
    )
    final.residual = {
        str(account): change
        for account, change in zip(scan.accounts, residual, strict=True)
        if change
    }
    final.explained = explain(residual, scan.indeterminate)
    return final


def explain(residual: Vector, candidates: Sequence[Vector]) -> bool | None:
    """Is `residual` the sum of some subset of `candidates`? None if the search ran too big."""
    if not any(residual):
        return True
    reachable: set[Vector] = {tuple(0 for _ in residual)}
    for candidate in candidates:
        reachable |= {
            tuple(value + change for value, change in zip(state, candidate, strict=True))
            for state in reachable
        }
        if len(reachable) > MAX_RECONCILE_STATES:
            return None
        if residual in reachable:
            return True
    return False


def _final_problems(final: Final, expected_total: int) -> list[str]:
    if not final.present:
        return ["no final read: the service never answered after the faults healed"]
    problems = []
    if final.total != expected_total:
        problems.append(f"the final total is {final.total}, not {expected_total}")
    if final.negative_accounts:
        problems.append(f"accounts {final.negative_accounts} end negative")
    if final.explained is False:
        problems.append(
            "the final balances are not the acknowledged transfers plus any subset of the "
            f"indeterminate ones (unexplained: {final.residual})"
        )
    return problems


def render(report: Report) -> str:
    """The report as a few lines of text."""
    lines = [
        f"jepsen bank: {'VALID' if report.valid else 'INVALID'}",
        f"  operations {report.operations}: "
        + "; ".join(
            f"{function} " + ", ".join(f"{kind} {count}" for kind, count in sorted(kinds.items()))
            for function, kinds in report.outcomes.items()
        ),
        f"  reads checked {report.reads_checked}, wrong totals {report.wrong_totals}, "
        f"reads with a negative balance {report.negative_balances}"
        + (
            f", reads with available below zero {report.overheld_reads} "
            f"(of {report.reads_with_holds} that reported held)"
            if report.reads_with_holds
            else ""
        ),
        "  faults " + ", ".join(f"{kind} {count}" for kind, count in report.faults.items()),
        f"  indeterminate {report.indeterminate}; not ok: "
        + (", ".join(f"{error} x{count}" for error, count in report.errors.items()) or "none"),
        f"  final total {report.final.total} (expected {report.expected_total}), "
        f"indeterminate transfers reconciled: {_explained(report.final.explained)}",
    ]
    lines += [f"  problem: {problem}" for problem in report.problems]
    return "\n".join(lines)


def _explained(explained: bool | None) -> str:
    return {True: "yes", False: "NO", None: "undecided"}[explained]


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.jepsen_checker", description=__doc__.split("\n")[0]
    )
    parser.add_argument("history", type=Path, help="a history JSON file of loadtest.jepsen_bank")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    arguments = parser.parse_args(list(argv) if argv is not None else None)
    try:
        report = check(load(arguments.history))
    except (OSError, ValueError, KeyError, TypeError) as error:
        print(f"jepsen_checker: cannot read {arguments.history}: {error}", file=sys.stderr)
        return 2
    print(json.dumps(report.to_dict(), indent=2) if arguments.json else render(report))
    return 0 if report.valid else 1


if __name__ == "__main__":
    sys.exit(main())
