"""The benchmark command: its wrk parsing, its invariant judgement, and a smoke run of it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from loadtest import bench
from loadtest.bench_envelope import (
    POSTGRES_ROWS,
    SQLITE_ROWS,
    Envelope,
    EnvelopeRow,
    WorkerClock,
    cpu_seconds,
    envelope_table,
    judge_targets,
    split_cell,
    worker_pids,
)
from loadtest.bench_load import LoadError, milliseconds, parse_wrk_output, thread_count
from loadtest.bench_report import RunEvidence, RunRecord, judge, markdown_table
from tests.support.postgres import missing

REPOSITORY_ROOT = Path(__file__).resolve().parents[2]
SMOKE_DEADLINE_SECONDS = 240

WRK_OUTPUT = """\
Running 11s test @ http://127.0.0.1:41234
  2 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    45.12ms   20.01ms   1.02s    88.12%
    Req/Sec   300.11     50.23   410.00     70.00%
  Latency Distribution
     50%   40.50ms
     75%   52.00ms
     90%   70.25ms
     99%  512.00us
  1234 requests in 2.31s, 400.00KB read
  Socket errors: connect 1, read 2, write 3, timeout 4
  Non-2xx or 3xx responses: 12
Requests/sec:    534.20
Transfer/sec:    173.16KB
bench-result threads 2
bench-result sent 1236
bench-result probes_sent 2
bench-result answered 1234
bench-result probes_answered 2
bench-result answered_in_window 1100
bench-result retry_after_503 5
bench-result mode_mismatches 0
bench-result unparsed 0
bench-result status 201 1210
bench-result status 409 7
bench-result status 503 15
bench-result mode locked 1232
bench-result credit 17 1000
bench-result credit 18 210
"""


def evidence(**changes: object) -> RunEvidence:
    """Ten deposits of 5 on two accounts, all acknowledged and all stored: a clean run."""
    base: dict[str, object] = {
        "operation": "deposit",
        "amount": 5,
        "before": {1: 100, 2: 100},
        "after": {1: 130, 2: 120},
        "credits": {1: 6, 2: 4},
        "debits": {},
        "acknowledged": 10,
        "unknown_outcomes": 0,
        "audit_before": {"chain_breaks": 0, "inconsistent_accounts": 0, "drift": 0},
        "audit_after": {"chain_breaks": 0, "inconsistent_accounts": 0, "drift": 0},
    }
    base.update(changes)
    return RunEvidence(**base)  # type: ignore[arg-type]


def test_wrk_output_parses_into_latencies_answers_and_movements() -> None:
    """wrk's --latency summary and the Lua counters become one result, /healthz probes left out."""
    result = parse_wrk_output(WRK_OUTPUT, duration_s=2.0)
    assert (result.p50_ms, result.p99_ms, result.max_ms) == (40.5, 0.512, 1020.0)
    assert result.socket_errors == {"connect": 1, "read": 2, "write": 3, "timeout": 4}
    assert result.requests_per_second == 550.0  # answers within the 2 s, not wrk's figure
    assert (result.sent, result.answered, result.unanswered) == (1236, 1232, 4)
    assert result.statuses == {201: 1210, 409: 7, 503: 15}
    assert (result.successes, result.refusals_409, result.retry_after_503) == (1210, 7, 5)
    assert result.server_errors == 10  # the 503s without Retry-After
    assert result.credits == {17: 1000, 18: 210} and result.debits == {}
    assert result.served_modes == {"locked": 1232}


def test_wrk_output_without_the_script_counters_is_an_error() -> None:
    """A run whose Lua script never reported cannot be audited, so it has no figures."""
    summary_only = WRK_OUTPUT.split("bench-result")[0]
    with pytest.raises(LoadError):
        parse_wrk_output(summary_only, duration_s=2.0)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("512.00us", 0.512), ("5.23ms", 5.23), ("1.02s", 1020.0), ("2.00m", 120_000.0)],
)
def test_wrk_durations_convert_to_milliseconds(text: str, expected: float) -> None:
    """Every unit wrk prints a latency in converts to milliseconds."""
    assert milliseconds(text) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("threads", "connections", "expected"), [(2, 32, 2), (2, 5, 1), (4, 6, 3), (8, 1, 1)]
)
def test_wrk_threads_divide_the_connections(threads: int, connections: int, expected: int) -> None:
    """wrk opens connections // threads per thread, so the thread count must divide them."""
    assert thread_count(threads, connections) == expected


def test_a_clean_run_holds_every_invariant() -> None:
    """Balances that moved exactly by the acknowledged deposits: held, no failure in any mode."""
    judgement = judge(evidence())
    assert judgement.invariants_held and not judgement.anomalies
    assert not judgement.failed("locked") and not judgement.failed("unlocked")


def test_a_safe_mode_run_with_drift_is_a_failure_never_a_result() -> None:
    """Three acknowledged deposits missing from a balance: lost updates, FAIL in a safe mode."""
    drifted = evidence(after={1: 115, 2: 120})
    judgement = judge(drifted)
    assert judgement.lost_updates == 3 and judgement.money_lost == 15
    assert judgement.money_unexplained == -15
    assert not judgement.invariants_held
    assert judgement.failed("locked") and judgement.failed("atomic")
    record = RunRecord(store="sqlite", mode="locked", operation="deposit", accounts=2)
    record.fill_judgement(judgement)
    assert record.verdict == "FAIL" and record.failed


def test_an_unsafe_mode_losing_money_is_reported_not_failed() -> None:
    """The same losses in unlocked mode are the measurement: LOST, not a failure of the run."""
    record = RunRecord(store="sqlite", mode="unlocked", operation="deposit", accounts=2)
    record.fill_judgement(judge(evidence(after={1: 115, 2: 120})))
    assert record.verdict == "LOST (unsafe)" and not record.failed
    assert record.lost_updates == 3 and record.invariants_held is False


def test_unanswered_requests_widen_the_window_only_as_far_as_they_could_reach() -> None:
    """One unanswered deposit explains one extra amount, never two, and never a missing one."""
    assert judge(evidence(after={1: 135, 2: 120}, unknown_outcomes=1)).invariants_held
    assert not judge(evidence(after={1: 140, 2: 120}, unknown_outcomes=1)).invariants_held
    assert not judge(evidence(after={1: 125, 2: 120}, unknown_outcomes=1)).invariants_held


def test_transfers_must_conserve_the_total_whatever_went_unanswered() -> None:
    """A transfer run whose total changed broke conservation, even with unknown outcomes."""
    transfers = evidence(
        operation="transfer",
        after={1: 105, 2: 100},
        credits={2: 1},
        debits={1: 1},
        acknowledged=1,
        unknown_outcomes=3,
    )
    judgement = judge(transfers)
    assert judgement.money_unexplained == 5
    assert any("conservation" in finding for finding in judgement.broken)
    assert judgement.failed("optimistic")


def test_the_servers_audit_and_overdrafts_break_invariants() -> None:
    """New chain breaks, drift or a negative balance break an invariant on their own."""
    chain_broken = evidence(
        audit_after={"chain_breaks": 2, "inconsistent_accounts": 1, "drift": -5}
    )
    assert len(judge(chain_broken).broken) == 3
    overdrawn = evidence(
        operation="withdraw", before={1: 5}, after={1: -5}, credits={}, debits={1: 2},
        acknowledged=2, amount=5,
    )  # fmt: skip
    assert any("negative balance" in finding for finding in judge(overdrawn).broken)
    inconsistent = evidence(account_audits={1: {"consistent": False}, 2: {"consistent": True}})
    assert judge(inconsistent).broken == ("the server's audit finds accounts [1] inconsistent",)


def test_anomalies_fail_a_run_in_any_mode() -> None:
    """A 5xx without Retry-After or answers from another mode make the figures untrustworthy."""
    for changes in ({"server_errors": 1}, {"mode_mismatches": 4}, {"after": {1: 130}}):
        judgement = judge(evidence(**changes))
        assert judgement.anomalies, changes
        assert judgement.failed("unlocked") and judgement.failed("locked")


def test_a_failed_safe_mode_run_makes_the_command_exit_non_zero(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A safe-mode run judged FAIL: both reports are still written, and the exit code is 1."""
    failed = RunRecord(store="sqlite", mode="locked", operation="deposit", accounts=2)
    failed.fill_judgement(judge(evidence(after={1: 115, 2: 120})))
    echo = RunRecord(store="-", mode="-", operation="echo", accounts=0, verdict="CEILING")
    monkeypatch.setattr(bench, "ensure_wrk", lambda: "wrk")
    monkeypatch.setattr(bench, "configuration", lambda *_arguments: {"workers": 2})
    monkeypatch.setattr(bench.Benchmark, "measure_echo", lambda _self: echo)
    monkeypatch.setattr(bench.Benchmark, "measure_store", lambda _self, _store: [failed])
    monkeypatch.setattr(bench, "measure_envelope", lambda *_arguments: [])
    exit_code = bench.main(["--stores", "sqlite", "--modes", "locked", "--out", str(tmp_path)])
    assert exit_code == 1
    (json_path,) = tmp_path.glob("bench-*.json")
    document = json.loads(json_path.read_text())
    assert document["passed"] is False
    assert [run["verdict"] for run in document["runs"]] == ["CEILING", "FAIL"]
    assert (
        document["runs"][1]["problems"][0] == "3 lost updates (15 money off the acknowledgements)"
    )
    markdown = json_path.with_suffix(".md").read_text()
    assert "**1 run(s) FAILED**" in markdown and "| sqlite | locked | deposits | 2 |" in markdown


def test_the_markdown_table_has_one_row_per_run() -> None:
    """Header, separator, then one row per record with its verdict."""
    records = [
        RunRecord(store="-", mode="-", operation="echo", accounts=0, verdict="CEILING"),
        RunRecord(store="sqlite", mode="locked", operation="transfer", accounts=1000),
    ]
    lines = markdown_table(records)
    assert len(lines) == 4
    assert lines[0].startswith("| store | mode | operation | accounts | req/s | x echo |")
    assert lines[3].startswith("| sqlite | locked | transfers | 1,000 |")
    assert lines[3].endswith("| ERROR |")


def envelope_row(key: str, requests_per_second: float, p99_ms: float, echo: float) -> EnvelopeRow:
    record = RunRecord(store="sqlite", mode="locked", operation="deposit", accounts=100,
                       requests_per_second=requests_per_second, p99_ms=p99_ms,
                       ratio_to_echo=requests_per_second / echo, verdict="PASS",
                       invariants_held=True)  # fmt: skip
    return EnvelopeRow(key, key, "sqlite", record, worker_cpu_s=[3.0, 1.0])


def test_the_envelope_judges_each_target_against_the_echo_or_its_reference_row() -> None:
    """Ratios to the echo; the keyed row against the unkeyed deposits; a p99 bound counts too."""
    echo = 1000.0
    rows = [
        envelope_row("healthz", 800, 5, echo),  # 0.8: met exactly
        envelope_row("read", 590, 5, echo),  # 0.59: not met
        envelope_row("deposit", 600, 31, echo),  # 0.6 but p99 31 ms > 30: not met
        envelope_row("transfer", 350, 99, echo),  # 0.35: met, no p99 bound
        envelope_row("keyed", 480, 40, echo),  # 0.8 of the deposits' 600: met
        envelope_row("pg-deposit", 400, 50, echo),  # 0.4, p99 50 <= 50: met
    ]
    failed = envelope_row("pg-deposit", 900, 1, echo)
    failed.record.verdict = "FAIL"
    judge_targets(rows, [*SQLITE_ROWS, *POSTGRES_ROWS])
    assert [row.met for row in rows] == [True, False, False, True, True, True]
    assert rows[4].ratio == pytest.approx(0.8) and rows[4].target.endswith("locked deposits")
    assert rows[2].target == ">= 0.5 x echo, p99 <= 30 ms"
    judge_targets([failed], POSTGRES_ROWS)
    assert failed.met is None  # a run that broke an invariant has no figure to meet a target


def test_the_envelope_table_shows_ratios_targets_and_the_worker_split() -> None:
    """One row per run; the keyed row says its ratio to the unkeyed; the busier worker first."""
    rows = [envelope_row("deposit", 500, 20, 1000.0), envelope_row("keyed", 250, 20, 1000.0)]
    judge_targets(rows, SQLITE_ROWS)
    lines = envelope_table(rows)
    assert lines[0].startswith("| run | req/s | x echo | target | met | p99 ms | worker CPU")
    assert lines[2] == (
        "| deposit | 500 | 0.50 | >= 0.5 x echo, p99 <= 30 ms | yes | 20.0 "
        "| 3.0 + 1.0 s (75/25 %) | held |"
    )
    assert "| 0.25 (0.50 x unkeyed) |" in lines[3] and "| **no** |" in lines[3]
    assert split_cell([]) == "-" and split_cell([0.0, 0.0]) == "0.0 + 0.0 s"


def test_the_worker_clock_reads_the_cpu_seconds_of_a_masters_children() -> None:
    """A child of this process that burns CPU between start() and stop() is counted."""
    burn = "input()\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass\n"
    child = subprocess.Popen(
        [sys.executable, "-c", f"import time\n{burn}print('burnt', flush=True)\ninput()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert child.stdin is not None and child.stdout is not None
    try:
        assert child.pid in worker_pids(os.getpid())
        clock = WorkerClock(os.getpid())
        clock.start()
        child.stdin.write("go\n")
        child.stdin.flush()
        assert child.stdout.readline() == "burnt\n"  # the 0.3 s of CPU were spent
        assert max(clock.stop()) >= 0.2
    finally:
        child.communicate("\n", timeout=30)
    assert cpu_seconds(child.pid) is None  # reaped: gone from /proc


def run_bench(*options: str) -> subprocess.CompletedProcess[str]:
    """`python -m loadtest.bench` with `options`, from the repository, bounded in time."""
    return subprocess.run(
        [sys.executable, "-m", "loadtest.bench", *options],
        cwd=REPOSITORY_ROOT,
        capture_output=True,
        text=True,
        timeout=SMOKE_DEADLINE_SECONDS,
        check=False,
    )


@pytest.mark.e2e
def test_a_short_benchmark_run_writes_its_reports_and_the_safe_mode_holds(
    tmp_path: Path,
) -> None:
    """1-second runs of locked and unlocked deposits on SQLite, measured by wrk: reports, exit 0.

    The envelope (1-second runs here) is measured and printed first: echo, /healthz, a
    read, locked deposits, transfers and keyed deposits, each with its ratio and split.

    `--load-tool auto` (the default) falls back to Locust without wrk; this run is
    wrk's, so a missing wrk skips it here and fails it under CI=true.
    """
    if shutil.which("wrk") is None:
        missing("wrk is not installed (Debian package wrk), and auto would run Locust instead")
    completed = run_bench(
        "--stores", "sqlite", "--modes", "locked,unlocked", "--operations", "deposit",
        "--accounts", "3,30", "--duration", "1", "--race-window-ms", "20",
        "--envelope-duration", "1", "--envelope-accounts", "20", "--out", str(tmp_path),
    )  # fmt: skip
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output[-4000:]
    (json_path,) = tmp_path.glob("bench-*.json")
    markdown_path = json_path.with_suffix(".md")
    document = json.loads(json_path.read_text())

    configuration = document["configuration"]
    assert configuration["load tool"].startswith("wrk "), configuration["load tool"]
    assert "load tool: Locust" not in completed.stdout
    assert (configuration["workers"], configuration["threads"]) == (2, 4)
    assert configuration["connections"] == 32
    assert configuration["machine cores"] >= 1
    assert configuration["git commit"]
    assert document["passed"] is True

    runs = document["runs"]
    echo, *bank_runs = runs
    assert echo["operation"] == "echo" and echo["verdict"] == "CEILING"
    assert echo["requests_per_second"] > 0 and echo["ok_2xx"] > 0
    assert [(run["mode"], run["accounts"]) for run in bank_runs] == [
        ("locked", 3), ("locked", 30), ("unlocked", 3), ("unlocked", 30),
    ]  # fmt: skip
    for run in bank_runs:
        assert run["store"] == "sqlite" and run["operation"] == "deposit"
        assert run["ok_2xx"] > 0 and run["requests_per_second"] > 0, run
        assert run["ratio_to_echo"] > 0, run
        assert run["p99_ms"] >= run["p50_ms"] > 0, run
        assert run["served_modes"] == {run["mode"]: run["ok_2xx"] + run["refused_409"]
                                       + run["retry_503"] + run["other"]}  # fmt: skip
    for run in bank_runs[:2]:
        assert run["verdict"] == "PASS" and run["invariants_held"] is True, run
        assert run["lost_updates"] == 0 and run["problems"] == [], run
    # 32 connections on 3 accounts with a 20 ms race window: unlocked loses deposits.
    assert bank_runs[2]["verdict"] == "LOST (unsafe)", bank_runs[2]
    assert bank_runs[2]["lost_updates"] > 0

    envelope = {row["key"]: row for row in document["envelope"]}
    assert list(envelope) == ["echo", "healthz", "read", "deposit", "transfer", "keyed"]
    for key, row in envelope.items():
        assert row["record"]["requests_per_second"] > 0 and row["record"]["p99_ms"] > 0, row
        assert len(row["worker_cpu_s"]) == 2, row  # both workers were found
        assert row["record"]["verdict"] == ("CEILING" if key == "echo" else "PASS"), row
    for key in ("deposit", "transfer", "keyed"):
        assert envelope[key]["record"]["invariants_held"] is True, envelope[key]
    assert envelope["keyed"]["ratio"] == pytest.approx(
        envelope["keyed"]["record"]["requests_per_second"]
        / envelope["deposit"]["record"]["requests_per_second"]
    )
    envelope_at = completed.stdout.index("| run | req/s | x echo | target |")
    assert envelope_at < completed.stdout.index("| store | mode | operation |")

    markdown = markdown_path.read_text()
    assert markdown.index("## The envelope") < markdown.index("| store | mode | operation |")
    assert "| store | mode | operation | accounts | req/s | x echo |" in markdown
    assert "Every safe-mode run kept every invariant." in markdown
    assert markdown.count("| sqlite | locked | deposits |") == 2
    assert "| sqlite | locked | deposits |" in completed.stdout


@pytest.mark.e2e
def test_the_locust_fallback_measures_and_audits_like_wrk(tmp_path: Path) -> None:
    """--load-tool locust (what runs where wrk cannot be had): a 1-second audited transfer run."""
    completed = run_bench(
        "--stores", "sqlite", "--modes", "atomic", "--operations", "transfer", "--accounts", "3",
        "--duration", "1", "--load-tool", "locust", "--out", str(tmp_path),
    )  # fmt: skip
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output[-4000:]
    (json_path,) = tmp_path.glob("bench-*.json")
    document = json.loads(json_path.read_text())
    assert document["configuration"]["load tool"].startswith("locust ")
    echo, transfers = document["runs"]
    assert echo["verdict"] == "CEILING" and echo["requests_per_second"] > 0
    assert (transfers["mode"], transfers["operation"], transfers["accounts"]) == (
        "atomic", "transfer", 3,
    )  # fmt: skip
    assert transfers["verdict"] == "PASS" and transfers["invariants_held"] is True, transfers
    assert transfers["ok_2xx"] > 0 and transfers["unknown_outcomes"] == 0, transfers
    assert transfers["served_modes"] == {"atomic": transfers["ok_2xx"] + transfers["refused_409"]
                                         + transfers["retry_503"] + transfers["other"]}  # fmt: skip


def test_the_envelopes_money_runs_last_the_envelope_duration(tmp_path: Path) -> None:
    """A money row is loaded for --envelope-duration, not the mode runs' --duration."""
    arguments = bench.parse_arguments(["--duration", "1", "--envelope-duration", "7"])
    benchmark = bench.Benchmark(arguments, "wrk", tmp_path)
    asked: list[dict[str, object]] = []

    class Bank:
        base_url = "http://127.0.0.1:1"

        def balances(self, accounts: list[int]) -> dict[int, int]:
            return dict.fromkeys(accounts, 10)

        def server_audit(self) -> dict[str, int]:
            return {}

    def load(*_arguments: object, **options: object) -> object:
        asked.append(options)
        raise LoadError("stop here")

    benchmark.load = load  # type: ignore[method-assign]
    envelope = Envelope(benchmark, lambda _line: None)
    (spec,) = [spec for spec in SQLITE_ROWS if spec.key == "keyed"]
    row = EnvelopeRow("keyed", "keyed", "sqlite", RunRecord("sqlite", "locked", "deposit", 2))
    envelope.measure_row(spec, row, Bank(), [1, 2], tmp_path, WorkerClock(None))  # type: ignore[arg-type]
    assert asked == [{"keyed": True, "duration_s": 7}]
    assert row.record.verdict == "ERROR" and "stop here" in row.record.problems[0]
