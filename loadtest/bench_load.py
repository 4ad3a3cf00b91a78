"""The benchmark's load: wrk, or Locust where wrk cannot be had, and what it counted.

`run_wrk` starts wrk with loadtest/bench.lua for the run's duration plus a
drain limit, waits (polling, against a deadline) until every wrk thread has
had every request answered after the deadline, then stops wrk with SIGINT and
parses its output: wrk's own summary (`--latency`: percentiles, max, socket
errors) and the `bench-result` lines of the script (answers by status, the
accounts each acknowledgement moved, requests still unanswered).

The run itself (`prepare_workdir`, `drive_wrk`, `wait_for_drain`) and the
reading of a script's counters (`result_lines`, `socket_errors`) serve any
script built on loadtest/wrk_load.lua: tests/support/overload.lua's too.

`run_locust` is the fallback for a machine without wrk: it runs
loadtest/bench_locustfile.py headless (FastHttpUser) for one run and reads
back a `LoadResult` like wrk's. Locust spends far more CPU per request than
wrk, so on a small machine it caps the echo ceiling lower: the report names
the tool. This module does not import Locust (which patches the process with
gevent); only the subprocess does.

`ensure_wrk` finds wrk, installing the Debian package when it is missing and
the process may (root with apt-get).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loadtest.service_process import stop_process_group

LUA_SCRIPT = Path(__file__).resolve().parent / "bench.lua"
LOCUSTFILE = Path(__file__).resolve().parent / "bench_locustfile.py"
LOCUST_GRACE_SECONDS = 60  # start-up and shut-down beyond the run and its drain
DRAIN_LIMIT_SECONDS = 10  # beyond the service's lock-wait bound (5 s)
WRK_TIMEOUT_SECONDS = 30  # wrk counts slower answers as timeouts
EXIT_DEADLINE_SECONDS = 15.0
POLL_INTERVAL_SECONDS = 0.02
INSTALL_DEADLINE_SECONDS = 600
UNIT_MILLISECONDS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
SOCKET_ERROR_KINDS = ("connect", "read", "write", "timeout")
COUNTERS = (
    "sent",
    "answered",
    "answered_in_window",
    "retry_after_503",
    "mode_mismatches",
    "unparsed",
)


class LoadError(RuntimeError):
    """The load generator failed; the run has no figures."""


@dataclass
class LoadResult:
    """One run's figures and counts, whichever tool produced them."""

    duration_s: float
    answered_in_window: int = 0  # money answers that arrived before the deadline
    sent: int = 0  # money requests sent
    answered: int = 0  # money requests answered
    statuses: dict[int, int] = field(default_factory=dict)
    retry_after_503: int = 0
    socket_errors: dict[str, int] = field(default_factory=dict)
    credits: dict[int, int] = field(default_factory=dict)
    debits: dict[int, int] = field(default_factory=dict)
    served_modes: dict[str, int] = field(default_factory=dict)
    mode_mismatches: int = 0
    unparsed: int = 0
    p50_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None
    drained: bool = True
    tool: str = "wrk"

    @property
    def requests_per_second(self) -> float:
        return self.answered_in_window / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def unanswered(self) -> int:
        return max(self.sent - self.answered, 0)

    def count(self, *, low: int, high: int) -> int:
        return sum(n for status, n in self.statuses.items() if low <= status <= high)

    @property
    def successes(self) -> int:
        return self.count(low=200, high=299)

    @property
    def refusals_409(self) -> int:
        return self.statuses.get(409, 0)

    @property
    def server_errors(self) -> int:
        """5xx answers other than the honest refusal, a 503 with Retry-After."""
        return self.count(low=500, high=599) - self.retry_after_503


def ensure_wrk() -> str | None:
    """The path of wrk; installs Debian's package if missing and possible; None otherwise."""
    found = shutil.which("wrk")
    if found or os.geteuid() != 0 or shutil.which("apt-get") is None:
        return found
    print("[bench] wrk is missing: apt-get install wrk ...", flush=True)
    environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "wrk"]):
        completed = subprocess.run(
            command,
            env=environment,
            capture_output=True,
            timeout=INSTALL_DEADLINE_SECONDS,
            check=False,
        )
        if completed.returncode != 0:
            print(f"[bench] {' '.join(command)} failed: {completed.stderr[-500:]!r}", flush=True)
            return None
    return shutil.which("wrk")


def milliseconds(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text.strip())
    if not match:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(match.group(1)) * UNIT_MILLISECONDS[match.group(2)]


def parse_wrk_output(text: str, duration_s: float) -> LoadResult:
    """wrk's summary (--latency) and the bench.lua `bench-result` lines, as one result."""
    if "bench-result threads" not in text:
        raise LoadError("wrk printed no bench-result lines (did the Lua script fail?)")
    result = LoadResult(duration_s=duration_s)
    read_summary(text, result)
    read_counters(text, result)
    return result


def read_summary(text: str, result: LoadResult) -> None:
    """Latencies and socket errors from wrk's own summary."""
    latency = re.search(r"^\s+Latency\s+(\S+)\s+(\S+)\s+(\S+)\s+", text, re.MULTILINE)
    if latency:  # average, standard deviation, max
        result.max_ms = milliseconds(latency.group(3))
    percentiles = dict(re.findall(r"^\s+(50|99)%\s+(\S+)\s*$", text, re.MULTILINE))
    if "50" in percentiles:
        result.p50_ms = milliseconds(percentiles["50"])
    if "99" in percentiles:
        result.p99_ms = milliseconds(percentiles["99"])
    result.socket_errors = socket_errors(text)


def socket_errors(text: str) -> dict[str, int]:
    """The counts of wrk's `Socket errors:` line, by kind (all 0 when it printed none)."""
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text
    )
    counts = map(int, errors.groups()) if errors else [0] * len(SOCKET_ERROR_KINDS)
    return dict(zip(SOCKET_ERROR_KINDS, counts, strict=True))


def result_lines(text: str, prefix: str) -> tuple[dict[str, int], dict[str, dict[str, int]]]:
    """The counters a loadtest/wrk_load.lua script's done() printed, as (scalars, maps).

    `PREFIX-result NAME N` is a scalar, `PREFIX-result MAP KEY N` one key of a map.
    """
    label = f"{prefix}-result"
    scalars: dict[str, int] = {}
    maps: dict[str, dict[str, int]] = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) == 3 and fields[0] == label:
            scalars[fields[1]] = int(fields[2])
        elif len(fields) == 4 and fields[0] == label:
            maps.setdefault(fields[1], {})[fields[2]] = int(fields[3])
    return scalars, maps


def int_keys(counts: dict[str, int]) -> dict[int, int]:
    return {int(key): count for key, count in counts.items()}


def read_counters(text: str, result: LoadResult) -> None:
    """The counters bench.lua's done() printed: `bench-result NAME N` or `... MAP KEY N`."""
    scalars, maps = result_lines(text, "bench")
    for name in COUNTERS:
        setattr(result, name, scalars.get(name, 0))
    # The /healthz probes sent after the deadline (answered 200) move no money.
    result.answered -= scalars.get("probes_answered", 0)
    result.statuses = int_keys(maps.get("status", {}))
    result.credits = int_keys(maps.get("credit", {}))
    result.debits = int_keys(maps.get("debit", {}))
    result.served_modes = maps.get("mode", {})


def write_account_ids(path: Path, account_ids: Sequence[int]) -> None:
    path.write_text("".join(f"{account}\n" for account in account_ids))


def thread_count(threads: int, connections: int) -> int:
    """At most `threads`, dividing `connections`: wrk gives each thread connections // threads."""
    return max(
        count for count in range(1, min(threads, connections) + 1) if connections % count == 0
    )


def prepare_workdir(
    workdir: Path, account_ids: Sequence[int], *, prefix: str = ""
) -> tuple[Path, Path]:
    """The account ids file (written) and an empty signal directory, in `workdir`."""
    workdir.mkdir(parents=True, exist_ok=True)
    ids_file, signal_dir = workdir / f"{prefix}accounts.txt", workdir / f"{prefix}signals"
    write_account_ids(ids_file, account_ids)
    shutil.rmtree(signal_dir, ignore_errors=True)
    signal_dir.mkdir(parents=True)
    return ids_file, signal_dir


@dataclass(frozen=True)
class LoadPlan:
    """One run's load, whichever tool sends it."""

    url: str
    operation: str  # a bench.lua operation: deposit, withdraw, transfer, echo, healthz, read
    amount: int
    account_ids: Sequence[int]
    expected_mode: str  # answers served by another lock mode are counted apart
    duration_s: int
    connections: int
    workdir: Path


def run_wrk(wrk: str, plan: LoadPlan, *, threads: int, keyed: bool = False) -> LoadResult:
    """One run: load for the plan's duration, drain, stop wrk, parse. Raises LoadError."""
    ids_file, signal_dir = prepare_workdir(plan.workdir, plan.account_ids)
    arguments = [plan.operation, str(plan.amount), str(plan.duration_s), str(ids_file),
                 str(signal_dir), plan.expected_mode, "keyed" if keyed else ""]  # fmt: skip
    text, drained = drive_wrk(
        wrk, plan.url, threads=threads, connections=plan.connections,
        duration_s=plan.duration_s, arguments=arguments, signal_dir=signal_dir,
        output_path=plan.workdir / "wrk.out",
    )  # fmt: skip
    result = parse_wrk_output(text, float(plan.duration_s))
    result.drained = drained
    return result


def drive_wrk(
    wrk: str,
    url: str,
    *,
    signal_dir: Path,
    output_path: Path,
    threads: int,
    connections: int,
    duration_s: int,
    arguments: list[str],
    script: Path = LUA_SCRIPT,
    drain_limit_s: int = DRAIN_LIMIT_SECONDS,
    timeout_s: int = WRK_TIMEOUT_SECONDS,
) -> tuple[str, bool]:
    """Run wrk, wait for the drain, stop it with SIGINT: (its output, whether it drained).

    Raises LoadError if wrk does not stop or exits with an error.
    """
    wrk_threads = thread_count(threads, connections)  # wrk gives each connections // threads
    command = [
        wrk, "-t", str(wrk_threads), "-c", str(connections),
        "-d", f"{duration_s + drain_limit_s}s", "--latency",
        "--timeout", f"{timeout_s}s", "-s", str(script), url, "--", *arguments,
    ]  # fmt: skip
    with output_path.open("wb") as output:
        process = subprocess.Popen(
            command, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            drained = wait_for_drain(process, signal_dir, wrk_threads, duration_s, drain_limit_s)
            if process.poll() is None:
                process.send_signal(signal.SIGINT)  # wrk stops, runs done(), prints its summary
            process.wait(timeout=EXIT_DEADLINE_SECONDS)
        except subprocess.TimeoutExpired as timeout:
            raise LoadError("wrk did not stop after SIGINT") from timeout
        finally:
            stop_process_group(process, signal.SIGKILL)
    text = output_path.read_text(errors="replace")
    if process.returncode != 0:
        raise LoadError(f"wrk exited with {process.returncode}: {text[-1000:]}")
    return text, drained


def wait_for_drain(
    process: subprocess.Popen[bytes],
    signal_dir: Path,
    threads: int,
    duration_s: int,
    drain_limit_s: int = DRAIN_LIMIT_SECONDS,
) -> bool:
    """Poll until every wrk thread signalled that it has nothing in flight after the deadline."""
    deadline = time.monotonic() + duration_s + drain_limit_s
    while time.monotonic() < deadline and process.poll() is None:
        if len(list(signal_dir.glob("drained-*"))) >= threads:
            return True
        time.sleep(POLL_INTERVAL_SECONDS)  # polling interval under a deadline
    return False


def run_locust(plan: LoadPlan) -> LoadResult:
    """One run with Locust; raises LoadError when it produced no result."""
    workdir, duration_s, connections = plan.workdir, plan.duration_s, plan.connections
    workdir.mkdir(parents=True, exist_ok=True)
    ids_file, result_file = workdir / "accounts.txt", workdir / "locust-result.json"
    write_account_ids(ids_file, plan.account_ids)
    result_file.unlink(missing_ok=True)
    command = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
        "-u", str(connections), "-r", str(connections * 10), "-t", f"{duration_s}s",
        "--stop-timeout", str(DRAIN_LIMIT_SECONDS), "--host", plan.url, "--only-summary",
        "--loglevel", "WARNING", "--bench-operation", plan.operation,
        "--bench-amount", str(plan.amount), "--bench-ids-file", str(ids_file),
        "--bench-mode", plan.expected_mode,
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


def tool_version(wrk: str | None) -> str:
    """The load tool as a report names it: `wrk 4.1.0`, or `locust 2.x (FastHttpUser)`."""
    if wrk:
        completed = subprocess.run([wrk, "--version"], capture_output=True, text=True, check=False)
        first_line = (completed.stdout or completed.stderr).splitlines()[:1]
        return " ".join(first_line[0].split()[:2]) if first_line else "wrk"
    completed = subprocess.run(
        [sys.executable, "-m", "locust", "--version"], capture_output=True, text=True, check=False
    )
    fields = (completed.stdout or completed.stderr).split()
    return f"locust {fields[1] if len(fields) > 1 else '?'} (FastHttpUser)"
