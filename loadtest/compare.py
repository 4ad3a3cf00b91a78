"""Run the same Locust scenario against every lock mode and report them side by side.

    python -m loadtest.compare [--duration 15] [--users 20] [--modes unlocked,locked,...]
                               [--race-window-ms 20] [--database-url URL] [--out reports]
                               [--redis-url URL] [--redis-lock-ttl-ms MS]

For each mode it starts the service itself (`python -m service serve`, gunicorn,
on a free loopback port, a fresh SQLite database unless --database-url is
given), runs `locust --headless` against it for the same fixed time, stops it by
its process group, and reads Locust's final JSON statistics and the locustfile's JSON
reconciliation. It writes `<out>/<timestamp>/report.md`, `results.csv` and
`chart.png` (when matplotlib is installed), plus each mode's logs.

`redis-lock` and `fenced` need Redis: the service is told which one
(`--redis-url`, else BANK_REDIS_URL, else redis://127.0.0.1:6379/0), and it
is pinged first, so that a missing Redis is one line in the report. Their
lease (BANK_REDIS_LOCK_TTL_MS) is by default half the race window, at least
10 ms (the service's minimum): every lock holder then outlives its lease, as
one paused by a GC or a swap storm would, which is when `redis-lock` loses
money and `fenced` refuses the stale writes instead (409 stale_lock).

`--scenario holds` races holds (capture, void, expiry; loadtest/hold_tally.py):
the table gains a "hold anomalies" column.

Exit code: 0 when every safe mode kept every invariant and every mode produced
a report; 1 otherwise. Unsafe modes losing money is the demonstration, not a failure.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from loadtest.argument_types import bounded_int, choices
from loadtest.comparison_report import (
    LocustStatistics,
    ModeResult,
    markdown_table,
    read_locust_statistics,
    write_chart,
    write_csv,
    write_markdown,
)
from loadtest.lock_modes import ALL_MODES, REDIS_MODES
from loadtest.redis_target import (
    LEAVE_OUT_HINT,
    REDIS_LOCK_TTL_VARIABLE,
    REDIS_URL_VARIABLE,
    hide_password,
    redis_problem,
    redis_url_from,
)
from loadtest.scenarios import (
    DEFAULT_ACCOUNT_COUNT,
    DEFAULT_OPENING_BALANCE,
    DEFAULT_SCENARIO,
    SCENARIOS,
)
from loadtest.service_process import ServiceProcess

LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
# Locust needs a few seconds beyond the run time to start, drain and reconcile.
LOCUST_GRACE_SECONDS = 120
DURATION_LIMIT_SECONDS = 3600
USERS_LIMIT = 1000
# The service's bounds on BANK_REDIS_LOCK_TTL_MS.
REDIS_LOCK_TTL_MIN_MS = 10
REDIS_LOCK_TTL_MAX_MS = 600_000


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.compare", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--duration",
        type=bounded_int(1, DURATION_LIMIT_SECONDS),
        default=15,
        help="seconds of load per mode (default 15)",
    )
    parser.add_argument(
        "--users",
        type=bounded_int(1, USERS_LIMIT),
        default=20,
        help="concurrent Locust users (default 20)",
    )
    parser.add_argument(
        "--modes",
        type=choices(ALL_MODES),
        default=list(ALL_MODES),
        help=f"comma-separated modes (default: all {len(ALL_MODES)}: {', '.join(ALL_MODES)})",
    )
    parser.add_argument(
        "--race-window-ms",
        type=bounded_int(0, 5000),
        default=20,
        help="BANK_RACE_WINDOW_MS for every mode (default 20)",
    )
    parser.add_argument(
        "--database-url",
        default="",
        help="BANK_DATABASE_URL for every mode (default: a fresh SQLite per mode)",
    )
    parser.add_argument("--scenario", choices=SCENARIOS, default=DEFAULT_SCENARIO)
    parser.add_argument(
        "--accounts",
        type=bounded_int(1, 1000),
        default=DEFAULT_ACCOUNT_COUNT,
        help=f"hot accounts per run (default {DEFAULT_ACCOUNT_COUNT})",
    )
    parser.add_argument(
        "--opening-balance",
        type=bounded_int(0, 10**12),
        default=DEFAULT_OPENING_BALANCE,
        help=f"opening balance of each account (default {DEFAULT_OPENING_BALANCE}; "
        "a small one makes overdrafts visible in the withdrawals scenario)",
    )
    parser.add_argument(
        "--redis-url",
        default=redis_url_from(),
        help=f"{REDIS_URL_VARIABLE} of every mode (default: ${REDIS_URL_VARIABLE}, else the "
        "service's default redis://127.0.0.1:6379/0)",
    )
    parser.add_argument(
        "--redis-lock-ttl-ms",
        type=bounded_int(REDIS_LOCK_TTL_MIN_MS, REDIS_LOCK_TTL_MAX_MS),
        default=None,
        help=f"{REDIS_LOCK_TTL_VARIABLE} of every mode (default: half the race window, at "
        f"least {REDIS_LOCK_TTL_MIN_MS}: the window outlives the lease, so redis-lock loses)",
    )
    parser.add_argument("--workers", type=bounded_int(1, 64), default=2, help="BANK_WORKERS")
    parser.add_argument("--threads", type=bounded_int(1, 256), default=8, help="BANK_THREADS")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("reports"),
        help="directory under which <timestamp>/ is created (default reports)",
    )
    arguments = parser.parse_args(argv)
    if arguments.redis_lock_ttl_ms is None:
        arguments.redis_lock_ttl_ms = default_lease_ms(arguments.race_window_ms)
    return arguments


def default_lease_ms(race_window_ms: int) -> int:
    """Half the race window, within the service's bounds: every holder outlives its lease."""
    return max(REDIS_LOCK_TTL_MIN_MS, min(race_window_ms // 2, REDIS_LOCK_TTL_MAX_MS))


def new_report_directory(root: Path) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for suffix in ["", *(f"-{number}" for number in range(1, 100))]:
        directory = root / f"{stamp}{suffix}"
        try:
            directory.mkdir(parents=True)
            return directory
        except FileExistsError:
            continue
    raise RuntimeError(f"cannot create a report directory under {root}")


def locust_command(arguments: argparse.Namespace, url: str, prefix: Path) -> list[str]:
    return [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE),
        "--headless", "-u", str(arguments.users), "-r", str(arguments.users),
        "-t", f"{arguments.duration}s", "--host", url, "--only-summary",
        "--json-file", f"{prefix}-locust", "--bank-scenario", arguments.scenario,
        "--bank-report-json", f"{prefix}-race.json",
        "--bank-accounts", str(arguments.accounts),
        "--bank-opening-balance", str(arguments.opening_balance),
    ]  # fmt: skip


def service_settings(mode: str, arguments: argparse.Namespace, workdir: str) -> dict[str, str]:
    """The service's whole environment for one mode (nothing else of ours leaks in)."""
    return {
        "BANK_DATABASE_URL": arguments.database_url or f"sqlite:///{workdir}/bank.db",
        "BANK_LOCK_MODE": mode,
        "BANK_ALLOW_UNSAFE_MODES": "1",
        "BANK_RACE_WINDOW_MS": str(arguments.race_window_ms),
        "BANK_WORKERS": str(arguments.workers),
        "BANK_THREADS": str(arguments.threads),
        REDIS_URL_VARIABLE: arguments.redis_url,
        REDIS_LOCK_TTL_VARIABLE: str(arguments.redis_lock_ttl_ms),
    }


def run_mode(mode: str, arguments: argparse.Namespace, directory: Path) -> ModeResult:
    """Start the service in `mode`, load it, stop it; one row of the comparison."""
    prefix = directory / mode
    if mode in REDIS_MODES:
        unreachable = redis_problem(arguments.redis_url)
        if unreachable:
            problem = f"{unreachable}: {LEAVE_OUT_HINT}"
            return ModeResult.from_runs(mode, LocustStatistics(), None, None, problem)
    race_json = Path(f"{prefix}-race.json")
    with tempfile.TemporaryDirectory(prefix=f"bankrace-{mode}-") as workdir:
        settings = service_settings(mode, arguments, workdir)
        service = ServiceProcess(settings, Path(workdir), directory / f"{mode}-server.log")
        try:
            service.start()
        except RuntimeError as start_error:
            return ModeResult.from_runs(mode, LocustStatistics(), None, None, str(start_error))
        try:
            with Path(f"{prefix}-locust.log").open("wb") as log:
                completed = subprocess.run(
                    locust_command(arguments, service.url, prefix),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    timeout=arguments.duration + LOCUST_GRACE_SECONDS,
                    check=False,
                )
            exit_code: int | None = completed.returncode
            problem = None
        except subprocess.TimeoutExpired:
            exit_code, problem = None, "locust did not finish in time"
        finally:
            service.stop()
    reconciliation = json.loads(race_json.read_text()) if race_json.exists() else None
    statistics = read_locust_statistics(Path(f"{prefix}-locust.json"))
    return ModeResult.from_runs(mode, statistics, reconciliation, exit_code, problem)


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    directory = new_report_directory(arguments.out)
    database = arguments.database_url or "a fresh SQLite file per mode"
    configuration = {
        "scenario": arguments.scenario,
        "accounts": f"{arguments.accounts} opened with {arguments.opening_balance} each",
        "users": arguments.users,
        "duration per mode": f"{arguments.duration} s",
        "race window": f"{arguments.race_window_ms} ms",
        "gunicorn": f"{arguments.workers} workers x {arguments.threads} threads",
        "database": database.split("@")[-1],  # never print a password
    }
    if any(mode in REDIS_MODES for mode in arguments.modes):
        configuration["Redis"] = (
            f"{hide_password(arguments.redis_url)}, lease {arguments.redis_lock_ttl_ms} ms"
        )
    results = []
    for mode in arguments.modes:
        print(
            f"[compare] {mode}: {arguments.duration} s of {arguments.scenario} load ...", flush=True
        )
        result = run_mode(mode, arguments, directory)
        stale = f", {result.stale_lock_refusals} stale-lock 409s" if mode == "fenced" else ""
        if result.hold_anomalies is not None:
            stale += f", {result.hold_anomalies} hold anomalies"
        print(f"[compare] {mode}: {result.verdict}, {result.lost_updates} lost updates{stale}, "
              f"{result.requests_per_second:.1f} requests/s", flush=True)  # fmt: skip
        results.append(result)
    chart_problem = write_chart(directory / "chart.png", results)
    if chart_problem:
        print(f"[compare] {chart_problem}", flush=True)
    write_csv(directory / "results.csv", results)
    write_markdown(directory / "report.md", results, configuration, chart=chart_problem is None)
    print("\n".join(markdown_table(results)))
    print(f"[compare] report: {directory / 'report.md'}", flush=True)
    safe_modes_held = all(result.verdict == "PASS" for result in results if not result.unsafe)
    every_mode_reported = all(result.verdict != "ERROR" for result in results)
    return 0 if safe_modes_held and every_mode_reported else 1


if __name__ == "__main__":
    sys.exit(main())
