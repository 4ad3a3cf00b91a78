"""The benchmark: the bank's write path against the framework's own ceiling.

    python -m loadtest.bench [--duration 1] [--connections 32] [--workers 2] [--threads 8]
                             [--modes locked,atomic,...] [--operations deposit,withdraw,transfer]
                             [--accounts 5,1000] [--stores sqlite,postgresql]
                             [--postgres-url URL] [--race-window-ms 0] [--out reports]
                             [--load-tool auto|wrk|locust] (--help for the rest)

`main` below is what one command does, in order, on the same gunicorn
settings throughout:

1. the envelope (loadtest/bench_envelope.py): the echo app's `POST /echo`, then
   the service's common requests in locked mode, each with its ratio to the
   echo and its target, measured and printed first;
2. the echo ceiling, then every store x lock mode x operation x account count
   (loadtest/bench_runs.py): deposits, withdrawals and transfers on a few hot
   accounts and on many spread ones, on SQLite, and on PostgreSQL when
   BANK_TEST_POSTGRES_URL or --postgres-url names a server (a fresh database,
   dropped afterwards). The service is started once per store and switched
   between modes with `PUT /mode`; the load is wrk's, or Locust's where wrk
   cannot be had (loadtest/bench_load.py);
3. after every run, the judgement: the balances and the server's audits
   checked against the acknowledged operations (loadtest/bench_report.py);
4. the reports: <out>/bench-<timestamp>.json and .md (the servers' logs beside
   them in bench-<timestamp>-logs/), and the tables printed.

Exit code 0 when every run was measured and every safe mode kept every
invariant; 1 otherwise (a fast run that lost money in a safe mode is a
failure, never a result); 2 when --load-tool wrk was asked for and wrk cannot
be had (auto falls back to Locust).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from loadtest.argument_types import bounded_int, choices
from loadtest.bench_envelope import Envelope, EnvelopeRow, envelope_table
from loadtest.bench_load import ensure_wrk, tool_version
from loadtest.bench_report import (
    OPERATIONS,
    RunRecord,
    failure_lines,
    markdown_table,
    new_stamp,
    note_lines,
    summary_line,
    write_json,
    write_markdown,
)
from loadtest.bench_runs import Benchmark, hide_password
from loadtest.lock_modes import ALL_MODES
from loadtest.redis_target import hide_password as hide_redis_password
from loadtest.redis_target import redis_url_from
from loadtest.service_process import REPOSITORY_ROOT


def main(argv: list[str] | None = None) -> int:
    """One benchmark, steps 1 to 4 of the module's docstring; the exit code it states."""
    started = time.monotonic()
    arguments = parse_arguments(argv)
    wrk = None if arguments.load_tool == "locust" else ensure_wrk()
    if wrk is None and arguments.load_tool == "wrk":
        print("[bench] wrk is not installed and cannot be installed here "
              "(Debian package wrk: apt-get install wrk)", file=sys.stderr)  # fmt: skip
        return 2
    if wrk is None:
        print("[bench] load tool: Locust FastHttpUser (wrk cannot be had)", flush=True)
    arguments.out.mkdir(parents=True, exist_ok=True)
    stamp = new_stamp(arguments.out)
    settings = configuration(arguments, wrk, stamp)
    benchmark = Benchmark(arguments, wrk, arguments.out / f"bench-{stamp}-logs")
    # 1. The envelope, measured and printed first.
    envelope = measure_envelope(benchmark, arguments, wrk)
    # 2 and 3. The echo ceiling, then every store x mode x operation x account count,
    # each run judged as it ends.
    records = [] if arguments.envelope_only else benchmark.measure_every_mode()
    # 4. The reports.
    wall_time_s = time.monotonic() - started
    settings["wall time (s)"] = round(wall_time_s, 1)
    report(arguments.out / f"bench-{stamp}", settings, wall_time_s, envelope, records)
    failed = any(row.failed for row in envelope) or any(record.failed for record in records)
    return 1 if failed else 0


def measure_envelope(
    benchmark: Benchmark, arguments: argparse.Namespace, wrk: str | None
) -> list[EnvelopeRow]:
    """The envelope's rows, printed as they come; none without wrk (its GET loads are wrk's)."""
    if arguments.no_envelope:
        return []
    if wrk is None:
        print("[bench] the envelope needs wrk: skipped", flush=True)
        return []
    return Envelope(benchmark, lambda line: print(line, flush=True)).measure()


def report(
    path: Path,
    settings: dict[str, Any],
    wall_time_s: float,
    envelope: Sequence[EnvelopeRow],
    records: Sequence[RunRecord],
) -> None:
    """Write <path>.json and <path>.md, then print the envelope, the table and the findings."""
    json_path, markdown_path = path.with_suffix(".json"), path.with_suffix(".md")
    envelope_lines = envelope_table(envelope) if envelope else []
    envelope_failed = any(row.failed for row in envelope)
    write_json(json_path, records, settings, wall_time_s,
               [row.to_dict() for row in envelope], envelope_failed)  # fmt: skip
    write_markdown(markdown_path, records, settings, envelope_lines)
    if envelope_lines:
        print("\n".join(["", "The envelope (ratios to the echo of this run):", *envelope_lines]))
        for row in envelope:
            for problem in row.record.problems if row.failed else ():
                print(f"- {row.label} ({row.record.verdict}): {problem}")
    if records:
        losses = sum(1 for record in records if record.verdict == "LOST (unsafe)")
        print("\n".join(["", *markdown_table(records), "", summary_line(records)]))
        for line in [*failure_lines(records), *note_lines(records)]:
            print(line)
        print(f"[bench] unsafe modes lost money in {losses} run(s), as expected; see the report")
    print(f"[bench] {json_path} and {markdown_path}, wall time {wall_time_s:.0f} s", flush=True)


# ---------------------------------------------------------------- options

DESCRIPTION = (
    "The bank's write path against the framework's own ceiling, every lock mode, audited "
    "after every run (docs/benchmark.md)."
)
STORES = ("sqlite", "postgresql")
POSTGRES_URL_VARIABLE = "BANK_TEST_POSTGRES_URL"
DEFAULT_DURATION_S = 1
DEFAULT_ENVELOPE_DURATION_S = 5
DEFAULT_ENVELOPE_ACCOUNTS = 100
DEFAULT_ACCOUNTS = (5, 1000)
DEFAULT_AMOUNT = 1
DEFAULT_OPENING_BALANCE = 1_000_000
DURATION_LIMIT_S = 600
ACCOUNTS_LIMIT = 10_000


def account_counts(text: str) -> list[int]:
    try:
        counts = [int(item) for item in text.split(",") if item.strip()]
    except ValueError as error:
        raise argparse.ArgumentTypeError("a comma-separated list of account counts") from error
    if not counts or any(not 2 <= count <= ACCOUNTS_LIMIT for count in counts):
        raise argparse.ArgumentTypeError(f"each count between 2 and {ACCOUNTS_LIMIT}")
    return counts


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m loadtest.bench", description=DESCRIPTION)
    add = parser.add_argument
    add(
        "--duration",
        type=bounded_int(1, DURATION_LIMIT_S),
        default=DEFAULT_DURATION_S,
        help=f"seconds of load per run (default {DEFAULT_DURATION_S})",
    )
    add(
        "--connections",
        type=bounded_int(1, 1000),
        default=32,
        help="concurrent connections (default 32)",
    )
    add("--wrk-threads", type=bounded_int(1, 64), default=2, help="wrk threads (default 2)")
    add("--workers", type=bounded_int(1, 64), default=2, help="gunicorn workers (default 2)")
    add(
        "--threads",
        type=bounded_int(1, 256),
        default=4,
        help="gunicorn threads per worker (default 4, as bankrace serve)",
    )
    add(
        "--modes",
        type=choices(ALL_MODES),
        default=list(ALL_MODES),
        help=f"comma-separated lock modes (default: all {len(ALL_MODES)}; redis-lock and "
        "fenced need the Redis of --redis-url)",
    )
    add(
        "--operations",
        type=choices(OPERATIONS),
        default=list(OPERATIONS),
        help="comma-separated: deposit, withdraw, transfer (default: all three)",
    )
    add(
        "--accounts",
        type=account_counts,
        default=list(DEFAULT_ACCOUNTS),
        help="comma-separated account counts per run (default 5,1000: hot and spread)",
    )
    add(
        "--stores",
        type=choices(STORES),
        default=None,
        help="sqlite, postgresql (default: sqlite, and postgresql when a URL is known)",
    )
    add(
        "--postgres-url",
        default=os.environ.get(POSTGRES_URL_VARIABLE, ""),
        help=f"PostgreSQL server for a fresh database (default ${POSTGRES_URL_VARIABLE})",
    )
    add(
        "--race-window-ms",
        type=bounded_int(0, 5000),
        default=0,
        help="BANK_RACE_WINDOW_MS in every mode (default 0)",
    )
    add(
        "--amount",
        type=bounded_int(1, 10**6),
        default=DEFAULT_AMOUNT,
        help=f"amount of every operation (default {DEFAULT_AMOUNT})",
    )
    add(
        "--opening-balance",
        type=bounded_int(0, 10**12),
        default=DEFAULT_OPENING_BALANCE,
        help=f"opening balance of every account (default {DEFAULT_OPENING_BALANCE:,})",
    )
    add(
        "--load-tool",
        choices=("auto", "wrk", "locust"),
        default="auto",
        help="auto (default): wrk, installed if missing, else Locust FastHttpUser",
    )
    add(
        "--idempotency-keys",
        action="store_true",
        help="every money request carries its own Idempotency-Key (wrk only): what a key costs",
    )
    add(
        "--redis-url",
        default=redis_url_from(),
        help="BANK_REDIS_URL of the service (default: $BANK_REDIS_URL, else "
        "redis://127.0.0.1:6379/0)",
    )
    add(
        "--envelope-duration",
        type=bounded_int(1, DURATION_LIMIT_S),
        default=DEFAULT_ENVELOPE_DURATION_S,
        help="seconds of load per run of the envelope, the table printed first "
        f"(default {DEFAULT_ENVELOPE_DURATION_S})",
    )
    add(
        "--envelope-accounts",
        type=bounded_int(2, ACCOUNTS_LIMIT),
        default=DEFAULT_ENVELOPE_ACCOUNTS,
        help=f"accounts of the envelope's reads and money runs (default "
        f"{DEFAULT_ENVELOPE_ACCOUNTS})",
    )
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument(
        "--no-envelope", action="store_true", help="skip the envelope (the table printed first)"
    )
    scope.add_argument(
        "--envelope-only", action="store_true", help="measure the envelope only, not every mode"
    )
    add("--out", type=Path, default=Path("reports"),
        help="directory of bench-<timestamp>.json and .md (default reports)")  # fmt: skip
    arguments = parser.parse_args(argv)
    if arguments.stores is None:
        arguments.stores = ["sqlite", "postgresql"] if arguments.postgres_url else ["sqlite"]
    if "postgresql" in arguments.stores and not arguments.postgres_url:
        parser.error(f"postgresql needs --postgres-url or ${POSTGRES_URL_VARIABLE}")
    return arguments


def git_commit() -> str:
    git = shutil.which("git")  # run by its full path (bandit B607)
    if git is None:
        return "unknown"
    try:
        commit = subprocess.run(
            [git, "rev-parse", "HEAD"], cwd=REPOSITORY_ROOT, capture_output=True, text=True,
            timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            [git, "status", "--porcelain", "--untracked-files=no"], cwd=REPOSITORY_ROOT,
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{commit} (with uncommitted changes)" if dirty else commit


def configuration(arguments: argparse.Namespace, wrk: str | None, stamp: str) -> dict[str, Any]:
    stores = [
        hide_password(arguments.postgres_url) if store == "postgresql" else store
        for store in arguments.stores
    ]
    return {
        "started": stamp,
        "gunicorn": f"{arguments.workers} workers x {arguments.threads} threads (gthread)",
        "workers": arguments.workers,
        "threads": arguments.threads,
        "load tool": tool_version(wrk),
        "connections": arguments.connections,
        "duration per run (s)": arguments.duration,
        "envelope": "off"
        if arguments.no_envelope
        else f"{arguments.envelope_duration} s per run, {arguments.envelope_accounts} accounts",
        "race window (ms)": arguments.race_window_ms,
        "amount": arguments.amount,
        "opening balance": arguments.opening_balance,
        "accounts per run": ", ".join(map(str, arguments.accounts)),
        "modes": ", ".join(arguments.modes),
        "operations": ", ".join(arguments.operations),
        "stores": ", ".join(stores),
        "redis": hide_redis_password(arguments.redis_url),
        "idempotency keys": "one per request" if arguments.idempotency_keys else "none",
        "git commit": git_commit(),
        "machine cores": os.cpu_count(),
    }


if __name__ == "__main__":
    sys.exit(main())
