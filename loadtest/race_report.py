"""The race report as text a person reads at the end of a load test.

Pure: formats a `Reconciliation`, nothing else.
"""

from __future__ import annotations

from loadtest.hold_tally import EXPIRY_CLOCK_MARGIN_S
from loadtest.reconcile import AccountReport, Reconciliation

RULE_WIDTH = 96

DEFINITIONS = """\
How to read this report:
  expected    = opening + acknowledged (2xx) deposits and transfers in
                - acknowledged withdrawals and transfers out
  lost update = an acknowledged operation whose effect is missing from the stored balance;
                money lost = |actual - expected| per account, and as every operation moves
                the same amount, lost updates = money lost / amount (rounded up). Updates
                whose losses cancel out are still caught by the server's journal chain_breaks.
  overdraft   = acknowledged outflows beyond the funds (expected, stored or journal balance
                below zero, or an answer with balance_after below zero)
  created     = sum of actual - sum of expected; transfers only move money, so non-zero
                breaks conservation
  409 insufficient_funds is a correct refusal, and so is 409 stale_lock (fenced: the request's
  lock lease ran out, a newer holder took the account, the store refused the stale write);
  503 with Retry-After is an honest, bounded refusal (counted, never an anomaly), except 503
  outcome_unknown: honest too, but its write may have been applied, so its money is counted
  as unknown (like no answer), never as refused; any other 5xx, no answer or unexpected
  status is an anomaly."""

HOLD_DEFINITIONS = f"""\
Holds (the holds scenario; counted from the answers, see loadtest/hold_tally.py):
  double capture       = a hold with two captures answered 201 (each capture beyond the first)
  captured and voided  = a hold with a capture 201 and a void 200: two final outcomes
  capture after expiry = a capture 201 whose request left after the hold's expires_at (as the
                         server stated it, plus {EXPIRY_CLOCK_MARGIN_S} s for the clocks)
  over-hold            = a read of the account with available below 0 or held above balance
  held drift           = the server's held at the end, once quiet, against the holds
                         acknowledged pending and unexpired (holds whose fate is unknown,
                         or that expired while the final read was under way, widen what
                         is explained)
  409 hold_not_pending and 409 insufficient_funds on a hold are correct refusals. In an
  unsafe mode (unlocked, process-lock, redis-lock) these are expected to break; in every
  other mode each is a failure."""


def signed(value: int | None) -> str:
    return "-" if value is None else f"{value:+d}"


def audit_cell(report: AccountReport) -> str:
    if report.server_consistent is None:
        return "n/a"
    if report.server_consistent:
        return "consistent"
    parts = [f"drift {signed(report.server_drift)}"]
    if report.server_chain_breaks:
        parts.append(f"{report.server_chain_breaks} chain breaks")
    return "INCONSISTENT: " + ", ".join(parts)


def account_table(result: Reconciliation) -> list[str]:
    header = (
        f"{'account':>8} {'opening':>10} {'expected':>10} {'actual':>10} {'diff':>8} "
        f"{'lost upd':>8} {'lost $':>8} {'overdraft':>9}  server audit"
    )
    lines = [header, "-" * len(header)]
    for report in result.accounts:
        actual = "?" if report.actual_balance is None else str(report.actual_balance)
        lines.append(
            f"{report.account_id:>8} {report.opening_balance:>10} {report.expected_balance:>10} "
            f"{actual:>10} {signed(report.difference):>8} {report.lost_updates:>8} "
            f"{report.money_lost:>8} {report.overdraft_money:>9}  {audit_cell(report)}"
        )
    lines.append(
        f"{'total':>8} {sum(r.opening_balance for r in result.accounts):>10} "
        f"{result.total_expected:>10} {result.total_actual:>10} {signed(result.money_created):>8} "
        f"{result.lost_updates:>8} {result.money_lost:>8} {result.overdraft_money:>9}"
    )
    return lines


def deadlock_lines(result: Reconciliation) -> list[str]:
    """503 lock_timeout: deadlocks in the deadlock scenario, plain lock waits elsewhere."""
    label = "deadlocks" if result.scenario == "deadlock" else "lock timeouts"
    line = f"{label} (503 lock_timeout): {result.lock_timeouts}"
    if result.lock_timeouts:
        line += (
            f"; clients waited median {result.lock_timeout_median_ms:.0f} ms, "
            f"max {result.lock_timeout_max_ms:.0f} ms before the bounded lock wait gave up"
        )
    elif result.scenario == "deadlock":
        line += (
            " (opposing transfers never deadlocked: the server took the locks in one global"
            " order, or its store serialized the writes)"
        )
    return [line]


def stale_lock_lines(result: Reconciliation) -> list[str]:
    """409 stale_lock (fenced): writes refused because their lease ran out; shown when any came."""
    if not (result.stale_lock_refusals or result.stale_lock_retries):
        return []
    return [
        f"stale-lock refusals (409 stale_lock, fenced): {result.stale_lock_refusals} final "
        f"(counted as correct refusals, nothing written), {result.stale_lock_retries} more "
        "sent again with the same Idempotency-Key"
    ]


def hold_lines(result: Reconciliation) -> list[str]:
    """The hold invariants, when the run placed holds."""
    holds = result.holds
    if holds is None:
        return []
    lines = [
        f"holds placed {holds.holds_placed}   refused (409 insufficient_funds) "
        f"{holds.placements_refused}   captures {holds.captures} ({holds.captured_money} money)"
        f"   voids {holds.voids}   refused 409 hold_not_pending {holds.not_pending_refusals}"
        f"   outcome unknown {holds.unknown_outcomes}",
        f"double captures: {holds.double_captures} "
        f"({holds.double_captured_money} money taken beyond the first capture)",
        f"holds captured and voided: {holds.captures_after_void}",
        f"captures after expiry: {holds.captures_after_expiry}",
        f"over-holds (reads with available below 0 or held above balance): "
        f"{holds.over_hold_reads}, lowest available seen {lowest_cell(holds.lowest_available)}",
        f"held drift: {holds.held_drift_accounts} accounts, {holds.held_drift_money} money",
    ]
    for report in holds.accounts:
        held = "?" if report.held is None else str(report.held)
        lines.append(
            f"  account {report.account_id}: placed {report.placed}, refused {report.refused}; "
            f"held at the end {held} vs acknowledged pending {report.known_pending} "
            f"(+{report.uncertain} unknown): drift {report.held_drift:+d}; "
            f"over-hold reads {report.over_hold_reads}"
        )
    return lines


def lowest_cell(value: int | None) -> str:
    return "none (no read showed held and available)" if value is None else str(value)


def server_audit_line(result: Reconciliation) -> str:
    audit = result.server_audit
    if audit is None:
        return "server /audit: unavailable"
    fields = ", ".join(f"{key} {value}" for key, value in audit.items())
    return f"server /audit (every account in the database, earlier runs included): {fields}"


def render_text(result: Reconciliation) -> str:
    """The whole race report, ending with the verdict and its reasons."""
    window = "?" if result.race_window_ms is None else result.race_window_ms
    served = ", ".join(f"{mode} x{count}" for mode, count in result.served_by_mode.items())
    answers = ", ".join(f"{label} x{count}" for label, count in result.responses.items())
    lines = [
        " bankrace race report ".center(RULE_WIDTH, "="),
        f"run {result.run_id}   scenario {result.scenario}   amount {result.amount}   "
        f"host {result.host}",
        f"server lock mode {result.lock_mode}, race window {window} ms; "
        f"answers served by: {served or 'none'}",
        f"load-test processes reporting: {result.reporters} of {result.expected_reporters}",
        "",
        *account_table(result),
        "",
        f"operations acknowledged {result.acknowledged_operations}   "
        f"correct refusals (409) {result.refusals}   "
        f"bounded refusals (503 + Retry-After) {result.bounded_refusals}",
        f"server errors (other 5xx) {result.server_errors}   no answer {result.no_answers}   "
        f"outcome unknown (503 outcome_unknown) {result.outcome_unknown}   "
        f"unexpected answers {result.unexpected_responses}",
        f"answers: {answers or 'none'}",
        "",
        f"lost updates: {result.lost_updates} (money lost {result.money_lost}: "
        f"{result.credits_lost} acknowledged in but missing, "
        f"{result.debits_lost} acknowledged out but still there)",
        f"server journal chain breaks: {result.server_chain_breaks}",
        f"retries with the same Idempotency-Key: {result.retries}   "
        f"answers replayed by the server: {result.replays}   "
        f"operations applied twice: {result.applied_twice}",
        f"overdrafts: {result.overdrafts} accounts, {result.overdraft_money} beyond the funds",
        *[
            f"  account {report.account_id}: {'; '.join(report.overdraft_reasons)}"
            for report in result.accounts
            if report.overdraft_reasons
        ],
        f"money created (+) or destroyed (-): {signed(result.money_created)} "
        f"(sum actual {result.total_actual} - sum expected {result.total_expected})",
        *deadlock_lines(result),
        *stale_lock_lines(result),
        *hold_lines(result),
        server_audit_line(result),
        "",
        DEFINITIONS,
        *(["", HOLD_DEFINITIONS] if result.holds is not None else []),
        "",
        f"VERDICT: {result.verdict}",
        *[f"  - {problem}" for problem in result.problems],
        "=" * RULE_WIDTH,
    ]
    return "\n".join(lines)
