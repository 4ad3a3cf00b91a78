"""The benchmark's load with Locust (FastHttpUser), for a machine without wrk.

`run_locust` runs loadtest/bench_locustfile.py headless for one run and
reads back a `LoadResult` like wrk's. Locust spends far more CPU per request
than wrk, so on a small machine it caps the echo ceiling lower: the report
names the tool. This module does not import Locust (which patches the
process with gevent); only the subprocess does.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from loadtest.bench_wrk import DRAIN_LIMIT_SECONDS, LoadError, LoadResult

LOCUSTFILE = Path(__file__).resolve().parent / "bench_locustfile.py"
LOCUST_GRACE_SECONDS = 60  # start-up and shut-down beyond the run and its drain


def run_locust(
    url: str,
    *,
    operation: str,
    amount: int,
    account_ids: Sequence[int],
    expected_mode: str,
    duration_s: int,
    connections: int,
    workdir: Path,
) -> LoadResult:
    """One run with Locust; raises LoadError when it produced no result."""
    workdir.mkdir(parents=True, exist_ok=True)
    ids_file, result_file = workdir / "accounts.txt", workdir / "locust-result.json"
    ids_file.write_text("".join(f"{account}\n" for account in account_ids))
    result_file.unlink(missing_ok=True)
    command = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
        "-u", str(connections), "-r", str(connections * 10), "-t", f"{duration_s}s",
        "--stop-timeout", str(DRAIN_LIMIT_SECONDS), "--host", url, "--only-summary",
        "--loglevel", "WARNING", "--bench-operation", operation, "--bench-amount", str(amount),
        "--bench-ids-file", str(ids_file), "--bench-mode", expected_mode,
        "--bench-duration", str(duration_s), "--bench-result", str(result_file),
    ]  # fmt: skip
    with (workdir / "locust.log").open("wb") as log:
        try:
            subprocess.run(
                command, stdout=log, stderr=subprocess.STDOUT, check=False,
                timeout=duration_s + DRAIN_LIMIT_SECONDS + LOCUST_GRACE_SECONDS,
            )  # fmt: skip
        except subprocess.TimeoutExpired as timeout:
            raise LoadError("locust did not finish in time") from timeout
    if not result_file.exists():
        log_tail = (workdir / "locust.log").read_text(errors="replace")[-1000:]
        raise LoadError(f"locust wrote no result: {log_tail}")
    return load_result(json.loads(result_file.read_text()), float(duration_s))


def load_result(data: dict[str, Any], duration_s: float) -> LoadResult:
    return LoadResult(
        duration_s=duration_s,
        answered_in_window=data["answered_in_window"],
        sent=data["sent"],
        answered=data["answered"],
        statuses={int(key): value for key, value in data["statuses"].items()},
        retry_after_503=data["retry_after_503"],
        socket_errors={"read": data["socket_errors"]},
        credits={int(key): value for key, value in data["credits"].items()},
        debits={int(key): value for key, value in data["debits"].items()},
        served_modes=dict(data["served_modes"]),
        mode_mismatches=data["mode_mismatches"],
        unparsed=data["unparsed"],
        p50_ms=data["p50_ms"],
        p99_ms=data["p99_ms"],
        max_ms=data["max_ms"],
        drained=data["in_flight"] == 0,
        tool="locust",
    )
