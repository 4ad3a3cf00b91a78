"""End-to-end: `python -m loadtest.compare` starts every mode itself and compares them.

The Redis modes use the Redis of BANK_TEST_REDIS_URL (default 127.0.0.1:6379): skipped
without one, a failure under CI=true.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from loadtest.redis_target import redis_problem
from tests.support.postgres import missing

pytestmark = pytest.mark.e2e

REPOSITORY_ROOT = Path(__file__).resolve().parents[2]
COMPARE_DEADLINE_SECONDS = 240
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
UNSAFE_MODES = {"unlocked", "process-lock", "redis-lock"}
ALL_MODES = ["unlocked", "locked", "process-lock", "optimistic", "atomic", "redis-lock", "fenced"]
REDIS_URL = os.environ.get("BANK_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def test_compare_reports_every_mode_and_the_losses_of_the_unsafe_ones(tmp_path: Path) -> None:
    """3 s per mode, 20 ms window, 10 ms Redis lease: unsafe modes (redis-lock too) lose money,
    safe modes pass (fenced by refusing stale writes), files are written."""
    unreachable = redis_problem(REDIS_URL)
    if unreachable:
        missing(unreachable)
    completed = subprocess.run(
        [sys.executable, "-m", "loadtest.compare", "--duration", "3", "--users", "16",
         "--race-window-ms", "20", "--redis-url", REDIS_URL, "--out", str(tmp_path)],
        cwd=REPOSITORY_ROOT,
        capture_output=True,
        text=True,
        timeout=COMPARE_DEADLINE_SECONDS,
        check=False,
    )  # fmt: skip
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output[-4000:]
    (report_directory,) = tmp_path.iterdir()

    with (report_directory / "results.csv").open(newline="") as handle:
        rows = {row["mode"]: row for row in csv.DictReader(handle)}
    assert list(rows) == ALL_MODES
    for mode, row in rows.items():
        assert int(row["acknowledged"]) > 0, row
        assert float(row["requests_per_second"]) > 0, row
        assert float(row["p99_ms"]) >= float(row["p50_ms"]) > 0, row
        if mode in UNSAFE_MODES:
            assert row["verdict"] == "FAIL", row
            assert int(row["lost_updates"]) > 0, row
            assert int(row["money_lost"]) > 0, row
        else:
            assert row["verdict"] == "PASS", row
            assert int(row["lost_updates"]) == int(row["overdrafts"]) == 0, row
            assert row["conservation_broken"] == "False", row
    # Every fenced holder outlived its lease: the store refused stale writes, none got through.
    fenced = rows["fenced"]
    assert int(fenced["stale_lock_refusals"]) + int(fenced["stale_lock_retries"]) > 0, fenced
    assert int(fenced["server_chain_breaks"]) == 0, fenced

    report = (report_directory / "report.md").read_text()
    for mode in ALL_MODES:
        assert f"| `{mode}` |" in report
    assert "Every safe mode kept every invariant." in report
    assert "race window 20 ms" in report and "lease 10 ms" in report
    assert "FAIL (unsafe mode: expected)" in report
    assert (report_directory / "chart.png").read_bytes().startswith(PNG_SIGNATURE)
    assert "![throughput and losses per mode](chart.png)" in report
