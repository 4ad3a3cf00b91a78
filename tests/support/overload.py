"""Push deposits at a real server far beyond its capacity with wrk, and read what happened.

`run_overload` starts wrk with tests/support/overload.lua: many connections
send deposits of 1 to random accounts for `duration_s`, then drain (every
request sent gets its answer or wrk's timeout) and wrk is stopped; the run
and the reading of wrk's output are the benchmark's (loadtest/bench_load.py). The result
holds the answers by status, per-class latency histograms (201, 503
`overloaded`, other) timed by the client from the X-Request-ID it sent and
the service echoed, and the deposits acknowledged per account.

Black-box over HTTP only, like tests/support/load.py.

Also a measuring tool (docs/overload.md): it starts `bankrace serve` with
the given settings and prints one line per connection count.

    python -m tests.support.overload [--connections 16,64,256] [--duration 3]
                                     [--set BANK_QUEUE_MAX_REQUESTS=32 ...]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import requests

from loadtest.bench_load import (
    LoadError,
    drive_wrk,
    int_keys,
    prepare_workdir,
    result_lines,
    socket_errors,
)

LUA_SCRIPT = Path(__file__).resolve().parent / "overload.lua"
DRAIN_LIMIT_SECONDS = 15  # beyond the service's lock-wait bound (5 s) and queue bounds
WRK_TIMEOUT_SECONDS = 10  # wrk counts slower answers as timeouts (unanswered)


class OverloadError(LoadError):
    """wrk failed; the run has no figures."""


@dataclass
class OverloadResult:
    duration_s: float
    sent: int = 0
    answered: int = 0
    untimed: int = 0
    bannered: int = 0  # answers with a `Server` header
    #: answers that arrived before the load's end, by class ok / shed / other: the rates
    in_window: dict[str, int] = field(default_factory=dict)
    statuses: dict[int, int] = field(default_factory=dict)
    credits: dict[int, int] = field(default_factory=dict)
    #: latency histograms, milliseconds (bucket floor) -> count, by class ok / shed / other
    latency_ms: dict[str, dict[int, int]] = field(default_factory=dict)
    socket_errors: dict[str, int] = field(default_factory=dict)
    drained: bool = True

    @property
    def unanswered(self) -> int:
        return max(self.sent - self.answered, 0)

    @property
    def acknowledged(self) -> int:
        return self.statuses.get(201, 0)

    @property
    def shed(self) -> int:
        return sum(self.latency_ms.get("shed", {}).values())

    def rate(self, count: int) -> float:
        return count / self.duration_s if self.duration_s > 0 else 0.0

    def percentile_ms(self, kind: str, fraction: float) -> float | None:
        """The latency under which `fraction` of the `kind` answers came (bucket's upper edge)."""
        return histogram_percentile(self.latency_ms.get(kind, {}), fraction)

    def summary(self) -> str:
        def shown(value: float | None) -> str:
            return "-" if value is None else f"{value:.0f} ms"

        return (
            f"offered {self.rate(self.sent):.0f} deposits/s over {self.duration_s:.0f} s "
            f"({self.sent} sent); answered 201 {self.rate(self.in_window.get('ok', 0)):.0f}/s "
            f"({self.acknowledged} in all), shed 503 overloaded "
            f"{self.rate(self.in_window.get('shed', 0)):.0f}/s ({self.shed} in all), other "
            f"{self._other()}, unanswered "
            f"{self.unanswered}; 201 latency p50 {shown(self.percentile_ms('ok', 0.5))} "
            f"p99 {shown(self.percentile_ms('ok', 0.99))} max "
            f"{shown(self.percentile_ms('ok', 1.0))}; shed latency p50 "
            f"{shown(self.percentile_ms('shed', 0.5))} p99 "
            f"{shown(self.percentile_ms('shed', 0.99))}"
        )

    def _other(self) -> dict[int, int]:
        counted = {201: self.acknowledged, 503: self.shed}
        other = {status: count - counted.get(status, 0) for status, count in self.statuses.items()}
        return {status: count for status, count in sorted(other.items()) if count}


def histogram_percentile(histogram: Mapping[int, int], fraction: float) -> float | None:
    total = sum(histogram.values())
    if total == 0:
        return None
    wanted = fraction * total
    seen = 0
    for bucket in sorted(histogram):
        seen += histogram[bucket]
        if seen >= wanted:
            return float(bucket + 1)
    return float(max(histogram) + 1)


def parse_output(text: str, duration_s: float) -> OverloadResult:
    if "ov-result threads" not in text:
        raise OverloadError(f"wrk printed no ov-result lines (did the Lua script fail?)\n{text}")
    result = OverloadResult(duration_s=duration_s)
    scalars, maps = result_lines(text, "ov")
    result.sent = scalars.get("sent", 0)
    # The /healthz probes after the deadline move no money and are not deposits.
    result.answered = scalars.get("answered", 0) - scalars.get("probes_answered", 0)
    result.untimed = scalars.get("untimed", 0)
    result.bannered = scalars.get("bannered", 0)
    result.in_window = {
        kind: scalars.get(f"in_window_{kind}", 0) for kind in ("ok", "shed", "other")
    }
    result.statuses = int_keys(maps.get("status", {}))
    result.credits = int_keys(maps.get("credit", {}))
    result.latency_ms = {
        kind: int_keys(maps.get(f"latency_{kind}", {})) for kind in ("ok", "shed", "other")
    }
    result.socket_errors = socket_errors(text)
    return result


def run_overload(
    url: str,
    account_ids: Sequence[int],
    *,
    duration_s: int,
    connections: int,
    workdir: Path,
    wrk_threads: int = 2,
) -> OverloadResult:
    """One run: deposits for `duration_s` from `connections` connections, drain, stop, parse."""
    wrk = shutil.which("wrk")
    if wrk is None:
        raise OverloadError("wrk is not installed (.ci/run installs it)")
    ids_file, signal_dir = prepare_workdir(workdir, account_ids, prefix="overload-")
    try:
        text, drained = drive_wrk(
            wrk, url, threads=wrk_threads, connections=connections, duration_s=duration_s,
            arguments=[str(duration_s), str(ids_file), str(signal_dir)], signal_dir=signal_dir,
            output_path=workdir / "overload-wrk.out", script=LUA_SCRIPT,
            drain_limit_s=DRAIN_LIMIT_SECONDS, timeout_s=WRK_TIMEOUT_SECONDS,
        )  # fmt: skip
    except LoadError as error:
        raise OverloadError(str(error)) from error
    result = parse_output(text, float(duration_s))
    result.drained = drained
    return result


def _served_queue_wait(url: str) -> str:
    """The server's own histogram of served requests' queue wait, as `<= bound: share`."""
    from prometheus_client.parser import text_string_to_metric_families

    text = requests.get(f"{url}/metrics", timeout=10).text
    buckets = {
        sample.labels["le"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "bankrace_queue_wait_seconds_bucket"
    }
    total = buckets.get("+Inf", 0.0)
    if not total:
        return "no request served"
    shown = ("0.01", "0.05", "0.1", "0.25", "0.5", "1.0")
    return ", ".join(f"<= {bound} s {buckets.get(bound, 0.0) / total:.1%}" for bound in shown)


def main() -> None:
    parser = argparse.ArgumentParser(description="deposits from wrk at bankrace serve")
    parser.add_argument("--connections", default="16,64,256")
    parser.add_argument("--duration", type=int, default=3)
    parser.add_argument("--accounts", type=int, default=100)
    parser.add_argument("--set", action="append", default=[], metavar="BANK_X=VALUE")
    arguments = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bankrace-overload-"))
    settings = dict(item.split("=", 1) for item in arguments.set)
    settings.setdefault("BANK_DATABASE_URL", f"sqlite:///{workdir / 'bank.db'}")
    print(f"settings {settings}", flush=True)
    try:
        _measure(arguments, settings, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _measure(arguments: argparse.Namespace, settings: dict[str, str], workdir: Path) -> None:
    from tests.support.servers import ServerProcess

    for connections in arguments.connections.split(","):
        # A fresh server per run: its queue-wait histogram is this run's alone.
        with ServerProcess(workdir=workdir, settings=settings) as server, requests.Session() as s:
            ids = [
                s.post(f"{server.url}/accounts", json={"owner": f"o{n}"}, timeout=10).json()["id"]
                for n in range(arguments.accounts)
            ]
            result = run_overload(
                server.url,
                ids,
                duration_s=arguments.duration,
                connections=int(connections),
                workdir=workdir,
            )
            print(f"c={connections}: {result.summary()}", flush=True)
            print(f"    served queue wait (server): {_served_queue_wait(server.url)}", flush=True)
            if result.unanswered or any(result.socket_errors.values()):
                print(f"    unanswered {result.unanswered}, socket errors {result.socket_errors}")


if __name__ == "__main__":
    main()
