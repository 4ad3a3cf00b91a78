"""The real locustfile's holds scenario, headless, against a stand-in bank with holds.

The stand-in (tests/loadtest/holds_fake_bank.py) keeps every hold rule or
none: the same load must then pass, or count each hold anomaly and fail.
This proves the locustfile's own counting without the service; the run
against a real `bankrace serve` in each lock mode is in test_holds_e2e.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.loadtest.holds_fake_bank import FakeHoldsBank, serving
from tests.support.locust_runs import LOADTEST_DIRECTORY, run_headless

pytestmark = pytest.mark.e2e  # Locust in a subprocess: seconds, not milliseconds

LOCUST_DEADLINE_SECONDS = 90


def run_holds(url: str, workdir: Path) -> tuple[int, str, dict[str, Any]]:
    """Six users on one account for 4 s (an expiring hold needs more than one second)."""
    report_path = workdir / "race.json"
    run = run_headless(
        LOADTEST_DIRECTORY / "locustfile.py",
        ["-u", "6", "-r", "6", "-t", "4s", "--host", url, "--bank-scenario", "holds",
         "--bank-accounts", "1", "--bank-report-json", str(report_path)],
        workdir=workdir,
        deadline_seconds=LOCUST_DEADLINE_SECONDS,
    )  # fmt: skip
    assert report_path.exists(), f"no report written:\n{run.output[-3000:]}"
    return run.exit_code, run.output, json.loads(report_path.read_text())


def test_a_bank_that_keeps_the_hold_rules_passes(tmp_path: Path) -> None:
    with serving(FakeHoldsBank(careful=True)) as url:
        exit_code, output, report = run_holds(url, tmp_path)
    holds = report["holds"]
    assert exit_code == 0, output[-3000:]
    assert report["verdict"] == "PASS", report["problems"]
    assert report["hold_anomalies"] == 0
    # The load did everything: placed, captured, voided, and was refused correctly.
    assert holds["holds_placed"] > 0 and holds["captures"] > 0 and holds["voids"] > 0
    assert holds["not_pending_refusals"] > 0  # the races' losers and the late captures
    assert holds["lowest_available"] is not None and holds["lowest_available"] >= 0
    assert "double captures: 0" in output


def test_a_bank_that_keeps_none_is_caught_on_every_count(tmp_path: Path) -> None:
    with serving(FakeHoldsBank(careful=False)) as url:
        exit_code, output, report = run_holds(url, tmp_path)
    holds = report["holds"]
    assert exit_code == 1, output[-3000:]
    assert report["verdict"] == "FAIL"
    assert holds["double_captures"] > 0
    assert holds["captures_after_void"] > 0
    assert holds["captures_after_expiry"] > 0
    assert holds["over_hold_reads"] > 0 and holds["lowest_available"] < 0
    # Money itself was kept: every capture acknowledged is in the balance.
    assert (report["lost_updates"], report["conservation_broken"]) == (0, False)
    assert report["hold_anomalies"] == (
        holds["double_captures"] + holds["captures_after_void"]
        + holds["captures_after_expiry"] + holds["over_hold_reads"]
        + holds["held_drift_accounts"]
    )  # fmt: skip
    assert "double captures" in " ".join(report["problems"])
