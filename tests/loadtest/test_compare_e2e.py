"""End-to-end: `python -m loadtest.compare` starts every mode itself and compares them."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

REPOSITORY_ROOT = Path(__file__).resolve().parents[2]
COMPARE_DEADLINE_SECONDS = 240
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
UNSAFE_MODES = {"unlocked", "process-lock"}
ALL_MODES = ["unlocked", "locked", "process-lock", "optimistic", "atomic"]


def test_compare_reports_every_mode_and_the_losses_of_the_unsafe_ones(tmp_path: Path) -> None:
    """3 s per mode, 20 ms window: unsafe modes lose money, safe modes pass, files are written."""
    completed = subprocess.run(
        [sys.executable, "-m", "loadtest.compare", "--duration", "3", "--users", "16",
         "--race-window-ms", "20", "--out", str(tmp_path)],
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

    report = (report_directory / "report.md").read_text()
    for mode in ALL_MODES:
        assert f"| `{mode}` |" in report
    assert "Every safe mode kept every invariant." in report
    assert "FAIL (unsafe mode: expected)" in report
    assert (report_directory / "chart.png").read_bytes().startswith(PNG_SIGNATURE)
    assert "![throughput and losses per mode](chart.png)" in report
