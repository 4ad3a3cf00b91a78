"""The benchmark's options and the configuration its reports record.

`parse_arguments` reads the command line of `python -m loadtest.bench`;
`configuration` states what a report was measured with (gunicorn settings,
load, durations, stores without passwords, git commit, cores).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from loadtest.bench_judge import OPERATIONS
from loadtest.bench_targets import hide_password
from loadtest.lock_modes import ALL_MODES
from loadtest.redis_target import hide_password as hide_redis_password
from loadtest.redis_target import redis_url_from
from loadtest.service_process import REPOSITORY_ROOT

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


def bounded_int(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low} and {high}")
        return value

    return parse


def choices(allowed: tuple[str, ...]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        chosen = [item.strip() for item in text.split(",") if item.strip()]
        unknown = [item for item in chosen if item not in allowed]
        if unknown or not chosen:
            raise argparse.ArgumentTypeError(f"choose from {', '.join(allowed)}")
        return chosen

    return parse


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
        "load tool": wrk_version(wrk) if wrk else f"locust {locust_version()} (FastHttpUser)",
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


def wrk_version(wrk: str) -> str:
    completed = subprocess.run([wrk, "--version"], capture_output=True, text=True, check=False)
    first_line = (completed.stdout or completed.stderr).splitlines()[:1]
    return " ".join(first_line[0].split()[:2]) if first_line else "wrk"


def locust_version() -> str:
    completed = subprocess.run(
        [sys.executable, "-m", "locust", "--version"], capture_output=True, text=True, check=False
    )
    fields = (completed.stdout or completed.stderr).split()
    return fields[1] if len(fields) > 1 else "?"
