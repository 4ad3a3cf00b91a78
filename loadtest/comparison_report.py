"""The side-by-side report of every lock mode: report.md, results.csv and chart.png.

Pure apart from writing the three files: takes one `ModeResult` per mode
(built from Locust's final JSON statistics and the locustfile's JSON reconciliation).
The chart needs matplotlib (the optional `charts` extra); without it the
chart is skipped with a message.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from loadtest.lock_modes import explain_mode, is_unsafe

HOLD_COUNTS = (
    "double_captures",
    "captures_after_void",
    "captures_after_expiry",
    "over_hold_reads",
    "held_drift_accounts",
)


@dataclass
class LocustStatistics:
    requests: int = 0
    failures: int = 0
    requests_per_second: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0


@dataclass
class ModeResult:
    """One mode's row: throughput, latency and the race report's findings."""

    mode: str
    verdict: str  # PASS, FAIL, or ERROR when no report came back
    requests: int = 0
    requests_per_second: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    acknowledged: int = 0
    refusals: int = 0
    bounded_refusals: int = 0
    lost_updates: int = 0
    money_lost: int = 0
    server_chain_breaks: int = 0
    overdrafts: int = 0
    overdraft_money: int = 0
    money_created: int = 0
    conservation_broken: bool = False
    server_errors: int = 0
    lock_timeouts: int = 0
    stale_lock_refusals: int = 0  # final 409 stale_lock (fenced), within `refusals`
    stale_lock_retries: int = 0  # 409 stale_lock answers sent again with the same key
    # The holds scenario (None in the others): every broken hold invariant, then each kind.
    hold_anomalies: int | None = None
    double_captures: int = 0
    captures_after_void: int = 0
    captures_after_expiry: int = 0
    over_hold_reads: int = 0
    held_drift_accounts: int = 0
    locust_exit_code: int | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def unsafe(self) -> bool:
        return is_unsafe(self.mode)

    @classmethod
    def from_runs(
        cls,
        mode: str,
        statistics: LocustStatistics,
        reconciliation: Mapping[str, Any] | None,
        locust_exit_code: int | None,
        error: str | None = None,
    ) -> ModeResult:
        result = cls(mode=mode, verdict="ERROR", locust_exit_code=locust_exit_code)
        result.requests = statistics.requests
        result.requests_per_second = statistics.requests_per_second
        result.p50_ms, result.p99_ms = statistics.p50_ms, statistics.p99_ms
        if reconciliation is None:
            result.problems = [error or "the load test wrote no reconciliation"]
            return result
        result.verdict = str(reconciliation["verdict"])
        result.acknowledged = int(reconciliation["acknowledged_operations"])
        for name in (
            "refusals",
            "bounded_refusals",
            "lost_updates",
            "money_lost",
            "server_chain_breaks",
            "overdrafts",
            "overdraft_money",
            "money_created",
            "server_errors",
            "lock_timeouts",
        ):
            setattr(result, name, int(reconciliation[name]))
        for name in ("stale_lock_refusals", "stale_lock_retries"):  # absent before fenced
            setattr(result, name, int(reconciliation.get(name, 0)))
        holds = reconciliation.get("holds")  # absent before holds, None in other scenarios
        if isinstance(holds, Mapping):
            result.hold_anomalies = int(reconciliation.get("hold_anomalies", 0))
            for name in HOLD_COUNTS:
                setattr(result, name, int(holds[name]))
        result.conservation_broken = bool(reconciliation["conservation_broken"])
        result.problems = list(reconciliation["problems"])
        return result


def percentile_ms(response_times: Mapping[int, int], percent: float) -> float:
    """Locust's own rule over its rounded-millisecond histogram {ms: count}."""
    total = sum(response_times.values())
    if not total:
        return 0.0
    threshold = int(total * percent)
    processed = 0
    for response_time_ms in sorted(response_times, reverse=True):
        processed += response_times[response_time_ms]
        if total - processed <= threshold:
            return float(response_time_ms)
    return 0.0


def read_locust_statistics(stats_json: Path) -> LocustStatistics:
    """Aggregate Locust's final `--json-file` entries (one per request name)."""
    if not stats_json.is_file():
        return LocustStatistics()
    entries = json.loads(stats_json.read_text())
    if not entries:
        return LocustStatistics()
    response_times: dict[int, int] = {}
    for entry in entries:
        for response_time_ms, count in entry["response_times"].items():
            key = int(float(response_time_ms))
            response_times[key] = response_times.get(key, 0) + int(count)
    requests = sum(int(entry["num_requests"]) for entry in entries)
    started = min(float(entry["start_time"]) for entry in entries)
    last_request = max(float(entry["last_request_timestamp"] or started) for entry in entries)
    elapsed_seconds = last_request - started
    return LocustStatistics(
        requests=requests,
        failures=sum(int(entry["num_failures"]) for entry in entries),
        requests_per_second=requests / elapsed_seconds if elapsed_seconds > 0 else 0.0,
        p50_ms=percentile_ms(response_times, 0.50),
        p99_ms=percentile_ms(response_times, 0.99),
    )


def verdict_cell(result: ModeResult) -> str:
    if result.verdict == "PASS":
        return "PASS"
    if result.verdict == "FAIL" and result.unsafe:
        return "FAIL (unsafe mode: expected)"
    return f"**{result.verdict}**"


def conservation_cell(result: ModeResult) -> str:
    return f"broken ({result.money_created:+d})" if result.conservation_broken else "kept"


def stale_lock_cell(result: ModeResult) -> str:
    """Final refusals, and the retries before them when there were any."""
    if not result.stale_lock_retries:
        return str(result.stale_lock_refusals)
    return f"{result.stale_lock_refusals} (+{result.stale_lock_retries} retried)"


def hold_cell(result: ModeResult) -> str:
    """All hold anomalies, then the kinds there were; "-" when the run placed no holds."""
    if not result.hold_anomalies:
        return "0" if result.hold_anomalies == 0 else "-"
    kinds = [
        (result.double_captures, "double captures"),
        (result.captures_after_void, "captured+voided"),
        (result.captures_after_expiry, "after expiry"),
        (result.over_hold_reads, "over-holds"),
        (result.held_drift_accounts, "held drift"),
    ]
    return f"{result.hold_anomalies} (" + ", ".join(f"{n} {k}" for n, k in kinds if n) + ")"


def markdown_table(results: Sequence[ModeResult]) -> list[str]:
    """One row per mode; a hold anomalies column when the scenario placed holds."""
    holds = any(result.hold_anomalies is not None for result in results)
    lines = [
        "| mode | requests/s | p50 ms | p99 ms | acknowledged | lost updates | money lost "
        "| chain breaks | overdrafts | conservation | 503 refusals | stale-lock 409s "
        + ("| hold anomalies " if holds else "")
        + "| verdict |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|"
        + ("---|" if holds else "")
        + "---|",
    ]
    for result in results:
        lines.append(
            f"| `{result.mode}` | {result.requests_per_second:.1f} | {result.p50_ms:.0f} "
            f"| {result.p99_ms:.0f} | {result.acknowledged} | {result.lost_updates} "
            f"| {result.money_lost} | {result.server_chain_breaks} | {result.overdrafts} "
            f"| {conservation_cell(result)} "
            f"| {result.bounded_refusals} | {stale_lock_cell(result)} "
            + (f"| {hold_cell(result)} " if holds else "")
            + f"| {verdict_cell(result)} |"
        )
    return lines


def summary_lines(results: Sequence[ModeResult]) -> list[str]:
    lost = [r.mode for r in results if r.lost_updates or r.overdrafts or r.conservation_broken]
    broken_holds = [r.mode for r in results if r.hold_anomalies]
    safe_failures = [r.mode for r in results if not r.unsafe and r.verdict == "FAIL"]
    unmeasured = [r.mode for r in results if r.verdict == "ERROR"]
    lines = []
    if lost:
        lines.append(f"Money went wrong in: {', '.join(f'`{mode}`' for mode in lost)}.")
    else:
        lines.append("No mode lost money in this run.")
    if broken_holds:
        lines.append(f"Holds broke in: {', '.join(f'`{mode}`' for mode in broken_holds)}.")
    elif any(r.hold_anomalies is not None for r in results):
        lines.append("No mode broke a hold invariant in this run.")
    if safe_failures:
        lines.append(
            f"**A safe mode failed: {', '.join(f'`{mode}`' for mode in safe_failures)}.** "
            "That is a bug; see its problems below."
        )
    if unmeasured:
        lines.append(
            f"**Not measured: {', '.join(f'`{mode}`' for mode in unmeasured)}** "
            "(the service or the load test did not run; see below and its logs)."
        )
    if not safe_failures and not unmeasured and any(not r.unsafe for r in results):
        lines.append("Every safe mode kept every invariant.")
    return lines


def write_markdown(
    path: Path, results: Sequence[ModeResult], configuration: Mapping[str, Any], chart: bool
) -> None:
    lines = [
        "# bankrace: every lock mode side by side",
        "",
        "Configuration: "
        + ", ".join(f"{key} {value}" for key, value in configuration.items())
        + ".",
        "",
        *summary_lines(results),
        "",
        *markdown_table(results),
        "",
    ]
    if chart:
        lines += ["![throughput and losses per mode](chart.png)", ""]
    lines += ["## Modes", ""]
    for result in results:
        lines.append(f"- `{result.mode}` ({explain_mode(result.mode)}): {result.verdict}.")
        lines += [f"  - {problem}" for problem in result.problems]
    lines += [
        "",
        "## How to read it",
        "",
        "- *acknowledged*: operations the server answered 2xx; 409 insufficient_funds "
        "refusals are correct and not counted as anomalies.",
        "- *lost updates*: |actual - expected| balance per account, divided by the fixed "
        "amount of every operation (expected = opening + acknowledged credits - debits).",
        "- *chain breaks*: journal entries whose balance_after does not follow from the "
        "previous one, as the server's audit counts them. They also reveal lost updates whose "
        "money cancels out within an account; they count broken links, not operations.",
        "- *overdrafts*: accounts whose acknowledged outflows exceeded their funds.",
        "- *conservation*: the sum of balances against the sum of acknowledged deposits and "
        "withdrawals; transfers must not change it.",
        "- *503 refusals*: honest, bounded refusals (503 with Retry-After), not anomalies.",
        "- *stale-lock 409s*: `fenced` refused the write of a request whose Redis lease ran out "
        "while a newer holder took the account; nothing changed. The load test sends such a "
        "request again with its Idempotency-Key (bounded); the first number counts those still "
        "refused at the end (correct refusals, not losses), the second the answers retried.",
        "- *hold anomalies* (the holds scenario): double captures (captures of one hold beyond "
        "the first), holds both captured and voided, captures acknowledged after the hold "
        "expired, over-holds (reads with available below 0) and accounts whose held drifted "
        "from the holds acknowledged pending; each breaks an invariant of DESIGN §3 Holds.",
        "- Each mode's full race report is in `<mode>-locust.log`; its JSON in `<mode>-race.json`.",
        "",
    ]
    path.write_text("\n".join(lines))


def write_csv(path: Path, results: Sequence[ModeResult]) -> None:
    names = [item.name for item in fields(ModeResult)]
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=names)
        writer.writeheader()
        for result in results:
            row = asdict(result)
            row["problems"] = "; ".join(result.problems)
            writer.writerow(row)


def write_chart(path: Path, results: Sequence[ModeResult]) -> str | None:
    """Draw chart.png; returns why not when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only, no display
        from matplotlib import pyplot
    except ImportError:
        return "matplotlib is not installed (pip install 'bankrace[charts]'): no chart"
    modes = [result.mode for result in results]
    colours = ["tab:green" if result.verdict == "PASS" else "tab:red" for result in results]
    figure, (throughput_axes, losses_axes) = pyplot.subplots(1, 2, figsize=(11, 4.2))
    throughput = [result.requests_per_second for result in results]
    throughput_axes.bar_label(throughput_axes.bar(modes, throughput, color=colours), fmt="%.0f")
    throughput_axes.set_title("throughput (requests/s)")
    losses = [result.lost_updates for result in results]
    losses_axes.bar_label(losses_axes.bar(modes, losses, color=colours))
    losses_axes.set_title("lost updates (red: invariant broken)")
    for axes in (throughput_axes, losses_axes):
        axes.tick_params(axis="x", labelrotation=20)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    pyplot.close(figure)
    return None
