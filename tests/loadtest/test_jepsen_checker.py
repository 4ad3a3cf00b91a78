"""The bank checker on hand-made histories: it passes what is right and names what is wrong."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from loadtest import jepsen_checker
from loadtest.jepsen_bank import read_snapshot
from loadtest.jepsen_checker import check, explain, main
from loadtest.jepsen_history import FORMAT, History
from loadtest.jepsen_nemesis import child_pids

OPENING = {1: 10, 2: 10, 3: 10}


class Script:
    """Builds a history by hand: each call appends the operation it names."""

    def __init__(self, opening: dict[int, int] | None = None) -> None:
        self.history = History(dict(opening or OPENING))

    def transfer(self, process: int, source: int, target: int, amount: int, outcome: str) -> None:
        value = {"from": source, "to": target, "amount": amount}
        self.history.append(process, "invoke", "transfer", value)
        if outcome != "pending":
            self.history.append(process, outcome, "transfer", value)

    def read(self, process: int, balances: dict[int, int] | None, *, final: bool = False) -> None:
        self.history.append(process, "invoke", "read", None, final=final or None)
        kind = "ok" if balances is not None else "info"
        value = {str(key): balance for key, balance in balances.items()} if balances else None
        self.history.append(process, kind, "read", value, final=final or None)

    def fault(self, function: str) -> None:
        self.history.append("nemesis", "info", function, {"pid": 1})

    def checked(self) -> jepsen_checker.Report:
        # Through JSON, as an outside reader of the saved file gets it.
        return check(json.loads(json.dumps(self.history.to_dict())))


def test_a_clean_history_is_valid_and_counted() -> None:
    """Transfers, consistent reads, faults and a final read that adds up: valid, figures right."""
    script = Script()
    script.read(9, {1: 10, 2: 10, 3: 10})
    script.transfer(0, 1, 2, 4, "ok")
    script.fault("kill")
    script.transfer(1, 2, 3, 50, "fail")
    script.read(9, {1: 6, 2: 14, 3: 10})
    script.fault("pause")
    script.fault("resume")
    script.fault("cut")
    script.fault("restore")
    script.read(9, None)
    script.read(10, {1: 6, 2: 14, 3: 10}, final=True)
    report = script.checked()
    assert report.valid, report.problems
    assert report.operations == 5  # the final read is reported apart
    assert report.outcomes == {"read": {"ok": 2, "info": 1}, "transfer": {"ok": 1, "fail": 1}}
    assert report.reads_checked == 2
    assert report.faults == {"kill": 1, "pause": 1, "cut": 1}
    assert (report.wrong_totals, report.negative_balances, report.indeterminate) == (0, 0, 1)
    assert report.final.total == 30 and report.final.explained is True


def test_a_wrong_total_is_caught_at_the_read() -> None:
    """A read summing to 31 (money created) counts once, and the example is quoted."""
    script = Script()
    script.read(9, {1: 10, 2: 10, 3: 10})
    script.read(9, {1: 11, 2: 10, 3: 10})
    script.read(9, {1: 11, 2: 10, 3: 10})
    script.read(10, {1: 10, 2: 10, 3: 10}, final=True)
    report = script.checked()
    assert not report.valid
    assert report.wrong_totals == 2 and report.reads_checked == 3
    assert report.wrong_reads[0]["total"] == 31
    assert "2 reads saw a total other than 30" in report.problems


def test_a_half_transfer_is_a_wrong_total() -> None:
    """A snapshot that holds one leg of a transfer but not the other breaks the total."""
    script = Script()
    script.transfer(0, 1, 2, 5, "ok")
    script.read(9, {1: 5, 2: 10, 3: 10})
    script.read(10, {1: 5, 2: 15, 3: 10}, final=True)
    assert script.checked().wrong_totals == 1


def test_a_negative_balance_is_caught_even_when_the_total_holds() -> None:
    """An overdraft balanced elsewhere keeps the total but breaks the other invariant."""
    script = Script()
    script.read(9, {1: -2, 2: 22, 3: 10})
    script.read(10, {1: 10, 2: 10, 3: 10}, final=True)
    report = script.checked()
    assert not report.valid
    assert (report.wrong_totals, report.negative_balances) == (0, 1)


def test_a_read_missing_an_account_is_wrong() -> None:
    """A read must name every account: a partial read cannot vouch for the total."""
    script = Script()
    script.read(9, {1: 15, 2: 15})
    script.read(10, {1: 10, 2: 10, 3: 10}, final=True)
    assert script.checked().wrong_totals == 1


def test_indeterminate_transfers_are_reconciled_by_the_final_read() -> None:
    """Two "info" transfers: the final balances show one applied and one not; that is valid."""
    script = Script()
    script.transfer(0, 1, 2, 3, "info")
    script.transfer(1, 2, 3, 7, "info")
    script.transfer(2, 3, 1, 1, "pending")  # never completed: indeterminate as well
    script.read(10, {1: 7, 2: 13, 3: 10}, final=True)
    report = script.checked()
    assert report.valid, report.problems
    assert report.indeterminate == 3
    assert report.errors["transfer: never completed"] == 1
    assert report.final.residual == {"1": -3, "2": 3}
    assert report.final.explained is True


def test_a_failed_transfer_that_happened_is_caught() -> None:
    """A "fail" is a promise that nothing moved: final balances that show it break the run."""
    script = Script()
    script.transfer(0, 1, 2, 3, "fail")
    script.read(10, {1: 7, 2: 13, 3: 10}, final=True)
    report = script.checked()
    assert not report.valid
    assert report.final.total == 30 and report.final.explained is False


def test_a_lost_update_in_the_final_read_is_caught() -> None:
    """An acknowledged transfer missing from the final balances is unexplained."""
    script = Script()
    script.transfer(0, 1, 2, 3, "ok")
    script.transfer(1, 1, 3, 2, "ok")
    script.read(10, {1: 8, 2: 13, 3: 12}, final=True)  # the debit of 3 was lost
    report = script.checked()
    assert not report.valid
    assert report.final.total == 33 and report.final.explained is False
    assert any("final total is 33" in problem for problem in report.problems)


def test_no_final_read_is_not_valid() -> None:
    """A run whose service never came back cannot be judged valid."""
    script = Script()
    script.read(9, {1: 10, 2: 10, 3: 10})
    report = script.checked()
    assert not report.valid and not report.final.present


def test_a_malformed_history_is_named() -> None:
    """A completion without its invoke, or two invokes at once, are problems."""
    script = Script()
    script.history.append(0, "ok", "transfer", {"from": 1, "to": 2, "amount": 1})
    script.history.append(1, "invoke", "read", None)
    script.history.append(1, "invoke", "read", None)
    script.read(10, {1: 10, 2: 10, 3: 10}, final=True)
    report = script.checked()
    assert not report.valid
    assert any("without its invoke" in problem for problem in report.problems)
    assert any("invoked twice" in problem for problem in report.problems)


def test_the_subset_search_is_exact_and_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """explain() finds a subset, refuses a residual no subset makes, and gives up when too big."""
    candidates = [(-1, 1, 0), (0, -2, 2), (3, 0, -3)]
    assert explain((0, 0, 0), []) is True
    assert explain((2, -1, -1), candidates) is True  # first + third
    assert explain((1, 1, -2), candidates) is False
    monkeypatch.setattr(jepsen_checker, "MAX_RECONCILE_STATES", 4)
    assert explain((9, 9, -18), candidates) is None


def test_the_command_line_reads_a_saved_history(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`python -m loadtest.jepsen_checker FILE`: 0 valid, 1 invalid, 2 not a history."""
    good, bad = Script(), Script()
    good.read(10, {1: 10, 2: 10, 3: 10}, final=True)
    bad.read(9, {1: 0, 2: 0, 3: 0})
    bad.read(10, {1: 10, 2: 10, 3: 10}, final=True)
    good.history.save(tmp_path / "good.json")
    bad.history.save(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text(json.dumps({"format": "something else"}))
    assert main([str(tmp_path / "good.json")]) == 0
    assert "VALID" in capsys.readouterr().out
    assert main([str(tmp_path / "bad.json"), "--json"]) == 1
    report: dict[str, Any] = json.loads(capsys.readouterr().out)
    assert report["wrong_totals"] == 1 and report["valid"] is False
    assert main([str(tmp_path / "other.json")]) == 2
    saved = json.loads((tmp_path / "good.json").read_text())
    assert saved["format"] == FORMAT
    assert set(saved["history"][0]) >= {"index", "time", "process", "type", "f", "value"}


def test_child_pids_finds_the_children_of_a_process() -> None:
    """The nemesis finds workers as the children of the master (Linux /proc)."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert child.pid in child_pids(os.getpid())
        assert child_pids(child.pid) == []
    finally:
        child.kill()
        child.wait()


def read_with_held(
    script: Script, balances: dict[int, int], held: dict[int, int], *, final: bool = False
) -> None:
    """An "ok" read from a service with holds: each account's held beside its balance."""
    script.history.append(10 if final else 9, "invoke", "read", None, final=final or None)
    script.history.append(
        10 if final else 9,
        "ok",
        "read",
        {str(key): value for key, value in balances.items()},
        held={str(key): value for key, value in held.items()},
        final=final or None,
    )


def test_a_read_with_held_above_the_balance_is_an_anomaly() -> None:
    """Holds: available (balance - held) below zero in any read makes the history invalid."""
    script = Script()
    read_with_held(script, {1: 10, 2: 10, 3: 10}, {1: 10, 2: 0, 3: 4})  # available 0: fine
    read_with_held(script, {1: 10, 2: 10, 3: 10}, {1: 0, 2: 15, 3: 0})  # available -5
    read_with_held(script, {1: 10, 2: 10, 3: 10}, {1: 0, 2: 0, 3: 0}, final=True)
    report = script.checked()
    assert not report.valid
    assert (report.overheld_reads, report.reads_with_holds, report.negative_balances) == (1, 2, 0)
    assert "1 reads saw available below zero (held above the balance)" in report.problems
    assert report.wrong_reads[0]["overheld_accounts"] == [2]
    assert "reads with available below zero 1 (of 2 that reported held)" in (
        jepsen_checker.render(report)
    )


def test_holds_within_the_balance_keep_a_history_valid_and_the_final_read_counts() -> None:
    script = Script()
    read_with_held(script, {1: 10, 2: 10, 3: 10}, {1: 10, 2: 10, 3: 10})
    read_with_held(script, {1: 10, 2: 10, 3: 10}, {1: 0, 2: 0, 3: 0}, final=True)
    assert script.checked().valid
    overheld_at_the_end = Script()
    read_with_held(overheld_at_the_end, {1: 10, 2: 10, 3: 10}, {1: 11, 2: 0, 3: 0}, final=True)
    report = overheld_at_the_end.checked()
    assert not report.valid and report.overheld_reads == 1
    plain = Script()  # no held reported: no hold line, nothing changes
    plain.read(10, {1: 10, 2: 10, 3: 10}, final=True)
    assert plain.checked().valid
    assert "available" not in jepsen_checker.render(plain.checked())


class AnsweringSession:
    """Stands in for requests.Session: every GET answers 200 with `body`."""

    def __init__(self, body: dict[str, Any]) -> None:
        self.body = body

    def get(self, _url: str, **_kwargs: Any) -> Any:
        body = self.body

        class Response:
            status_code = 200

            def json(self) -> dict[str, Any]:
                return body

        return Response()


def test_the_workload_records_held_when_the_service_reports_it() -> None:
    with_holds = {"items": [{"account_id": 1, "balance": 10, "held": 4}]}
    without = {"items": [{"account_id": 1, "balance": 10}]}
    session: Any = AnsweringSession(with_holds)
    assert read_snapshot(session, "u", 1.0) == ("ok", {"1": 10}, {"1": 4}, None)
    session = AnsweringSession(without)
    assert read_snapshot(session, "u", 1.0) == ("ok", {"1": 10}, None, None)
