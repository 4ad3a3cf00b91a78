"""Unit tests of the comparison runner's pure parts: statistics, rows, report files, options."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest

from loadtest.compare import parse_arguments
from loadtest.comparison_report import (
    LocustStatistics,
    ModeResult,
    percentile_ms,
    read_locust_statistics,
    write_chart,
    write_csv,
    write_markdown,
)


def locust_entry(name: str, response_times: dict[str, int], failures: int = 0) -> dict[str, object]:
    return {
        "name": name,
        "method": "POST",
        "num_requests": sum(response_times.values()),
        "num_failures": failures,
        "start_time": 1000.0,
        "last_request_timestamp": 1010.0,
        "response_times": response_times,
    }


def reconciliation(verdict: str, lost_updates: int = 0) -> dict[str, object]:
    return {
        "verdict": verdict,
        "acknowledged_operations": 100,
        "refusals": 2,
        "bounded_refusals": 1,
        "lost_updates": lost_updates,
        "money_lost": lost_updates * 10,
        "server_chain_breaks": lost_updates,
        "overdrafts": 0,
        "overdraft_money": 0,
        "money_created": -10 * lost_updates,
        "conservation_broken": bool(lost_updates),
        "server_errors": 0,
        "lock_timeouts": 0,
        "problems": [f"{lost_updates} lost updates"] if lost_updates else [],
    }


def test_percentile_follows_locusts_rule() -> None:
    """p50 and p99 over a {ms: count} histogram, as Locust computes them."""
    histogram = {10: 51, 20: 40, 300: 9}  # checked against locust.stats
    assert percentile_ms(histogram, 0.50) == 10
    assert percentile_ms(histogram, 0.90) == 20
    assert percentile_ms(histogram, 0.99) == 300
    assert percentile_ms({}, 0.5) == 0.0


def test_locust_statistics_aggregate_every_request_name(tmp_path: Path) -> None:
    """Requests, failures, requests/s and percentiles over all names of Locust's JSON."""
    path = tmp_path / "stats.json"
    entries = [locust_entry("deposit", {"10": 60}), locust_entry("transfer", {"30": 40}, 3)]
    path.write_text(json.dumps(entries))
    statistics = read_locust_statistics(path)
    assert statistics == LocustStatistics(
        requests=100, failures=3, requests_per_second=10.0, p50_ms=10.0, p99_ms=30.0
    )


def test_missing_locust_statistics_are_zero(tmp_path: Path) -> None:
    """A run that wrote no statistics yields zeros, not a crash."""
    assert read_locust_statistics(tmp_path / "absent.json") == LocustStatistics()


def test_mode_without_a_reconciliation_is_an_error() -> None:
    """No JSON report from the locustfile: the row says ERROR and why."""
    result = ModeResult.from_runs("locked", LocustStatistics(), None, None, "service not ready")
    assert result.verdict == "ERROR"
    assert result.problems == ["service not ready"]


def results() -> list[ModeResult]:
    statistics = LocustStatistics(requests=500, requests_per_second=50.0, p50_ms=20, p99_ms=90)
    return [
        ModeResult.from_runs("unlocked", statistics, reconciliation("FAIL", 7), 1),
        ModeResult.from_runs("locked", statistics, reconciliation("PASS"), 0),
    ]


def test_report_files(tmp_path: Path) -> None:
    """report.md has one row per mode and the verdicts; results.csv has the same numbers."""
    write_markdown(tmp_path / "report.md", results(), {"users": 10}, chart=False)
    write_csv(tmp_path / "results.csv", results())
    report = (tmp_path / "report.md").read_text()
    assert "| `unlocked` | 50.0 | 20 | 90 | 100 | 7 | 70 | 7 | 0 | broken (-70) | 1 |" in report
    assert "FAIL (unsafe mode: expected)" in report
    assert "Every safe mode kept every invariant." in report
    assert "chart.png" not in report
    with (tmp_path / "results.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(row["mode"], row["lost_updates"]) for row in rows] == [
        ("unlocked", "7"),
        ("locked", "0"),
    ]


def test_report_shouts_when_a_safe_mode_fails(tmp_path: Path) -> None:
    """A safe mode that loses money is called a bug, in bold."""
    statistics = LocustStatistics()
    broken = [ModeResult.from_runs("atomic", statistics, reconciliation("FAIL", 1), 1)]
    write_markdown(tmp_path / "report.md", broken, {}, chart=True)
    report = (tmp_path / "report.md").read_text()
    assert "**A safe mode failed: `atomic`.**" in report
    assert "| **FAIL** |" in report


def test_report_separates_a_mode_that_could_not_run(tmp_path: Path) -> None:
    """A service that did not start is 'not measured', not a safe mode that lost money."""
    error = ModeResult.from_runs("atomic", LocustStatistics(), None, None, "exited early")
    write_markdown(tmp_path / "report.md", [*results(), error], {}, chart=False)
    report = (tmp_path / "report.md").read_text()
    assert "**Not measured: `atomic`**" in report
    assert "A safe mode failed" not in report
    assert "Every safe mode kept every invariant." not in report
    assert "  - exited early" in report


def test_chart_is_skipped_without_matplotlib(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the optional charts extra the chart is skipped with a message."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    message = write_chart(tmp_path / "chart.png", results())
    assert message is not None and "matplotlib" in message
    assert not (tmp_path / "chart.png").exists()


def test_compare_options() -> None:
    """Defaults are all five modes and a 20 ms window; bad values are refused."""
    arguments = parse_arguments([])
    assert arguments.modes == ["unlocked", "locked", "process-lock", "optimistic", "atomic"]
    assert arguments.race_window_ms == 20
    assert parse_arguments(["--modes", "locked, atomic"]).modes == ["locked", "atomic"]
    for bad in (["--modes", "yolo"], ["--duration", "0"], ["--race-window-ms", "6000"]):
        with pytest.raises(SystemExit):
            parse_arguments(bad)
