"""Unit tests of the comparison runner's pure parts: statistics, rows, report files, options."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest

from loadtest.compare import parse_arguments, run_mode, service_settings
from loadtest.comparison_report import (
    LocustStatistics,
    ModeResult,
    percentile_ms,
    read_locust_statistics,
    write_chart,
    write_csv,
    write_markdown,
)
from loadtest.service_process import free_port


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
    """Defaults are all seven modes and a 20 ms window; bad values are refused."""
    arguments = parse_arguments([])
    assert arguments.modes == [
        "unlocked", "locked", "process-lock", "optimistic", "atomic", "redis-lock", "fenced",
    ]  # fmt: skip
    assert arguments.race_window_ms == 20
    assert parse_arguments(["--modes", "locked, atomic"]).modes == ["locked", "atomic"]
    for bad in (
        ["--modes", "yolo"],
        ["--duration", "0"],
        ["--race-window-ms", "6000"],
        ["--redis-lock-ttl-ms", "9"],
    ):
        with pytest.raises(SystemExit):
            parse_arguments(bad)


def test_the_redis_lease_defaults_to_half_the_race_window(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The window outlives the lease (redis-lock's failure), never below the service's 10 ms."""
    monkeypatch.delenv("BANK_REDIS_URL", raising=False)
    assert parse_arguments([]).redis_lock_ttl_ms == 10
    assert parse_arguments(["--race-window-ms", "500"]).redis_lock_ttl_ms == 250
    assert parse_arguments(["--race-window-ms", "0"]).redis_lock_ttl_ms == 10
    assert parse_arguments(["--redis-lock-ttl-ms", "3000"]).redis_lock_ttl_ms == 3000
    assert parse_arguments([]).redis_url == "redis://127.0.0.1:6379/0"
    monkeypatch.setenv("BANK_REDIS_URL", "redis://cache.internal:6380/2")
    assert parse_arguments([]).redis_url == "redis://cache.internal:6380/2"
    assert parse_arguments(["--redis-url", "redis://10.0.0.9/1"]).redis_url == "redis://10.0.0.9/1"


def test_the_service_is_told_which_redis_and_which_lease(tmp_path: Path) -> None:
    """Its environment is built from scratch: BANK_REDIS_URL and the lease go through on purpose."""
    arguments = parse_arguments(
        ["--redis-url", "redis://127.0.0.1:6390/3", "--race-window-ms", "40"]
    )
    settings = service_settings("fenced", arguments, str(tmp_path))
    assert settings["BANK_LOCK_MODE"] == "fenced"
    assert settings["BANK_REDIS_URL"] == "redis://127.0.0.1:6390/3"
    assert settings["BANK_REDIS_LOCK_TTL_MS"] == "20"
    assert settings["BANK_RACE_WINDOW_MS"] == "40"
    assert settings["BANK_ALLOW_UNSAFE_MODES"] == "1"  # redis-lock is unsafe


def test_a_redis_mode_without_redis_is_not_measured_and_says_why(tmp_path: Path) -> None:
    """No Redis at the URL: the row is ERROR with one clear line; no service was started."""
    arguments = parse_arguments(["--redis-url", f"redis://127.0.0.1:{free_port()}/0"])
    result = run_mode("redis-lock", arguments, tmp_path)
    assert result.verdict == "ERROR"
    (problem,) = result.problems
    assert "does not answer" in problem and "--modes" in problem
    assert list(tmp_path.iterdir()) == []


def test_stale_lock_refusals_reach_the_row_the_table_and_the_csv(tmp_path: Path) -> None:
    """fenced's 409 stale_lock: a column of its own, final count and retries; PASS stays PASS."""
    statistics = LocustStatistics(requests=300, requests_per_second=30.0, p50_ms=25, p99_ms=80)
    fenced = {**reconciliation("PASS"), "stale_lock_refusals": 12, "stale_lock_retries": 40}
    redis_lock = reconciliation("FAIL", 9)  # a report written before fenced existed
    rows = [
        ModeResult.from_runs("redis-lock", statistics, redis_lock, 1),
        ModeResult.from_runs("fenced", statistics, fenced, 0),
    ]
    assert rows[0].unsafe and not rows[1].unsafe
    assert (rows[0].stale_lock_refusals, rows[1].stale_lock_refusals) == (0, 12)
    write_markdown(tmp_path / "report.md", rows, {}, chart=False)
    write_csv(tmp_path / "results.csv", rows)
    report = (tmp_path / "report.md").read_text()
    assert "| 503 refusals | stale-lock 409s | verdict |" in report
    assert "| `redis-lock` | 30.0 | 25 | 80 | 100 | 9 |" in report
    assert "| 1 | 0 | FAIL (unsafe mode: expected) |" in report
    assert "| kept | 1 | 12 (+40 retried) | PASS |" in report
    assert "Every safe mode kept every invariant." in report
    assert "- `redis-lock` (a lease lock in Redis: correct until a holder outlives" in report
    with (tmp_path / "results.csv").open(newline="") as handle:
        csv_rows = list(csv.DictReader(handle))
    assert [(row["mode"], row["stale_lock_refusals"]) for row in csv_rows] == [
        ("redis-lock", "0"),
        ("fenced", "12"),
    ]


def holds_reconciliation(
    verdict: str, double_captures: int, over_hold_reads: int
) -> dict[str, object]:
    holds = {
        "double_captures": double_captures,
        "captures_after_void": 0,
        "captures_after_expiry": 0,
        "over_hold_reads": over_hold_reads,
        "held_drift_accounts": 0,
    }
    return {
        **reconciliation(verdict),
        "holds": holds,
        "hold_anomalies": double_captures + over_hold_reads,
    }


def test_hold_anomalies_get_a_column_in_the_holds_scenario_only(tmp_path: Path) -> None:
    """The holds scenario adds a column (total, then each kind there was) and a summary line."""
    statistics = LocustStatistics(requests=300, requests_per_second=30.0, p50_ms=25, p99_ms=80)
    rows = [
        ModeResult.from_runs("unlocked", statistics, holds_reconciliation("FAIL", 14, 3), 1),
        ModeResult.from_runs("locked", statistics, holds_reconciliation("PASS", 0, 0), 0),
    ]
    assert (rows[0].hold_anomalies, rows[0].double_captures, rows[1].hold_anomalies) == (17, 14, 0)
    write_markdown(tmp_path / "report.md", rows, {}, chart=False)
    write_csv(tmp_path / "results.csv", rows)
    report = (tmp_path / "report.md").read_text()
    assert "| stale-lock 409s | hold anomalies | verdict |" in report
    assert "| 17 (14 double captures, 3 over-holds) | FAIL (unsafe mode: expected) |" in report
    assert "| 0 | 0 | PASS |" in report
    assert "Holds broke in: `unlocked`." in report
    with (tmp_path / "results.csv").open(newline="") as handle:
        csv_rows = list(csv.DictReader(handle))
    assert [(row["mode"], row["hold_anomalies"]) for row in csv_rows] == [
        ("unlocked", "17"),
        ("locked", "0"),
    ]
    # Other scenarios (and reports written before holds) keep the table as it was.
    plain = tmp_path / "plain.md"
    write_markdown(plain, results(), {}, chart=False)
    assert "hold anomalies" not in plain.read_text().split("## How to read it")[0]
    assert results()[0].hold_anomalies is None
