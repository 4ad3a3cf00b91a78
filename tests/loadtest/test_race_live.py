"""The live Race view's arithmetic (loadtest.race_live): pure, no processes."""

from __future__ import annotations

from typing import Any

from loadtest.lock_modes import ALL_MODES, UNSAFE_MODES, explain_mode
from loadtest.race_live import (
    HISTORY_POINTS_LIMIT,
    History,
    InFlight,
    LiveSample,
    account_view,
    merged,
    race_accounts,
    race_totals,
    server_counts,
)
from loadtest.reconcile import RunSetup
from loadtest.scenarios import Operation
from loadtest.tally import Answer, Tally

AMOUNT = 10
OPENING = 1000
ACCOUNT = 1
OTHER_ACCOUNT = 2


def deposit(account_id: int = ACCOUNT) -> Operation:
    return Operation("deposit", account_id, AMOUNT)


def acknowledge(tally: Tally, flight: InFlight, operation: Operation) -> None:
    flight.start(operation)
    tally.record(operation, Answer(201, 5.0, lock_mode="unlocked"))
    flight.settle(operation)


def audit(balance: int, journal: int, chain_breaks: int = 0, lowest: int = 0) -> dict[str, Any]:
    return {
        "account_id": ACCOUNT,
        "balance": balance,
        "journal_balance": journal,
        "drift": balance - journal,
        "chain_breaks": chain_breaks,
        "lowest_journal_balance": lowest,
        "consistent": balance == journal and not chain_breaks and lowest >= 0,
    }


def sample(tally: Tally, flight: InFlight, taken_at: float = 1.0) -> LiveSample:
    return LiveSample.of(tally, flight, taken_at)


def test_an_applied_but_unanswered_deposit_is_not_a_lost_update() -> None:
    """A request in flight may already be in the balance: the margin explains it."""
    tally, flight = Tally(run_id="r"), InFlight()
    acknowledge(tally, flight, deposit())
    flight.start(deposit())  # sent, applied by the server, not answered yet
    view = account_view(
        ACCOUNT,
        OPENING,
        AMOUNT,
        sample(tally, flight),
        sample(tally, flight),
        audit(OPENING + 2 * AMOUNT, OPENING + 2 * AMOUNT),
    )
    assert view.expected == OPENING + AMOUNT
    assert view.difference == AMOUNT
    assert view.maybe_credit == AMOUNT
    assert view.lost_updates == view.money_lost == 0


def test_a_request_sent_while_the_audit_was_read_widens_the_margin() -> None:
    """Started between the two samples, its effect may be in the audit: not a loss either."""
    tally, flight = Tally(run_id="r"), InFlight()
    before = sample(tally, flight)
    flight.start(deposit())
    after = sample(tally, flight)
    view = account_view(
        ACCOUNT, OPENING, AMOUNT, before, after, audit(OPENING + AMOUNT, OPENING + AMOUNT)
    )
    assert view.lost_updates == 0


def test_a_lost_deposit_counts_from_the_drift_even_while_requests_fly() -> None:
    """Stored below the journal by one amount: one lost update, money destroyed."""
    tally, flight = Tally(run_id="r"), InFlight()
    for _ in range(3):
        acknowledge(tally, flight, deposit())
    flight.start(deposit())  # its margin cannot hide a drift the server itself sees
    journal = OPENING + 3 * AMOUNT
    view = account_view(
        ACCOUNT,
        OPENING,
        AMOUNT,
        sample(tally, flight),
        sample(tally, flight),
        audit(journal - AMOUNT, journal, chain_breaks=1),
    )
    assert (view.drift, view.lost_updates, view.chain_breaks) == (-AMOUNT, 1, 1)
    totals = race_totals([view], sample(tally, flight))
    assert totals["money_created"] == -AMOUNT
    assert totals["lost_updates"] == 1
    assert totals["acknowledged"] == 3


def test_a_journal_missing_acknowledged_money_is_flagged_and_counted() -> None:
    """Stored equals journal, but both lack two acknowledged deposits: lost, and flagged."""
    tally, flight = Tally(run_id="r"), InFlight()
    for _ in range(3):
        acknowledge(tally, flight, deposit())
    view = account_view(
        ACCOUNT,
        OPENING,
        AMOUNT,
        sample(tally, flight),
        sample(tally, flight),
        audit(OPENING + AMOUNT, OPENING + AMOUNT),
    )
    assert view.drift == 0
    assert view.journal_disagreement == -2 * AMOUNT
    assert view.lost_updates == 2
    totals = race_totals([view], sample(tally, flight))
    assert totals["journal_disagreements"] == [ACCOUNT]
    assert totals["money_created"] == -2 * AMOUNT


def test_overdraft_is_the_deepest_balance_below_zero() -> None:
    """Stored, expected and the journal's lowest running balance all count."""
    tally, flight = Tally(run_id="r"), InFlight()
    view = account_view(
        ACCOUNT, 0, AMOUNT, sample(tally, flight), sample(tally, flight), audit(-5, -5, lowest=-30)
    )
    assert view.overdraft == 30
    clean = account_view(
        ACCOUNT, 0, AMOUNT, sample(tally, flight), sample(tally, flight), audit(0, 0)
    )
    assert clean.overdraft == 0


def test_an_unreadable_audit_shows_no_numbers_and_is_listed() -> None:
    """No audit: stored unknown, nothing claimed lost, the account named."""
    setup = RunSetup("r", "deposits", AMOUNT, {ACCOUNT: OPENING, OTHER_ACCOUNT: OPENING})
    tally, flight = Tally(run_id="r"), InFlight()
    accounts = race_accounts(
        setup, sample(tally, flight), sample(tally, flight), {ACCOUNT: audit(OPENING, OPENING)}
    )
    assert [view.account_id for view in accounts] == [ACCOUNT, OTHER_ACCOUNT]
    assert accounts[1].stored is None
    assert accounts[1].lost_updates == 0
    totals = race_totals(accounts, sample(tally, flight))
    assert totals["unreadable_accounts"] == [OTHER_ACCOUNT]
    assert totals["money_created"] == 0


def test_samples_travel_as_plain_data_and_merge_by_adding() -> None:
    """Two workers' samples merge into the sums, after a round trip through plain dicts."""
    samples = []
    for worker in range(2):
        tally, flight = Tally(run_id="r"), InFlight()
        for _ in range(worker + 1):
            acknowledge(tally, flight, Operation("transfer", ACCOUNT, AMOUNT, OTHER_ACCOUNT))
        flight.start(deposit(OTHER_ACCOUNT))
        samples.append(LiveSample.from_dict(sample(tally, flight, taken_at=worker).to_dict()))
    total = merged(samples, "r", taken_at=5.0)
    assert total.accounts[ACCOUNT].debited == 3 * AMOUNT
    assert total.accounts[OTHER_ACCOUNT].credited == 3 * AMOUNT
    assert total.outcomes == {"acknowledged": 3}
    assert total.served_by_mode == {"unlocked": 3}
    assert total.flight.started_credit[OTHER_ACCOUNT] == 5 * AMOUNT  # 3 legs in + 2 deposits
    assert total.flight.settled_credit[OTHER_ACCOUNT] == 3 * AMOUNT
    assert total.taken_at == 5.0


def test_a_sample_is_a_copy_the_tally_does_not_change() -> None:
    """The tally goes on counting; the sample taken before does not move."""
    tally, flight = Tally(run_id="r"), InFlight()
    acknowledge(tally, flight, deposit())
    taken = sample(tally, flight)
    acknowledge(tally, flight, deposit())
    assert taken.accounts[ACCOUNT].credited == AMOUNT
    assert taken.flight.settled_credit[ACCOUNT] == AMOUNT


def totals(acknowledged: int, lost: int, served: dict[str, int]) -> dict[str, Any]:
    return {
        "acknowledged": acknowledged,
        "lost_updates": lost,
        "chain_breaks": lost,
        "money_created": -lost * AMOUNT,
        "served_by_mode": served,
    }


def test_history_separates_modes_and_blames_neither_for_the_switch() -> None:
    """Unlocked loses 10/s; around the switch answers of both modes: neither is blamed."""
    history = History("r")
    unlocked = {"lock_mode": "unlocked", "race_window_ms": 20}
    locked = {"lock_mode": "locked", "race_window_ms": 20}
    history.add(100.0, unlocked, totals(0, 0, {}))
    history.add(101.0, unlocked, totals(50, 10, {"unlocked": 50}))
    history.add(102.0, unlocked, totals(100, 20, {"unlocked": 100}))
    history.add(103.0, unlocked, totals(150, 30, {"unlocked": 150}))
    # switched after 103: the writes of requests still in flight show up at 103 already,
    # their answers (served unlocked) only by 104
    history.add(104.0, locked, totals(190, 35, {"unlocked": 170, "locked": 20}))
    history.add(105.0, locked, totals(230, 35, {"unlocked": 170, "locked": 60}))
    history.add(107.0, locked, totals(310, 35, {"unlocked": 170, "locked": 140}))
    assert history.settled() == [True, True, True, False, False, True, True]
    segments = history.segments()
    assert [(s["lock_mode"], s["settled"]) for s in segments] == [
        ("unlocked", True),
        ("locked", False),  # the switch, named after the mode it switched to
        ("locked", True),
    ]
    assert segments[0]["lost_updates_per_second"] == 10.0
    assert (segments[0]["from_seconds"], segments[0]["to_seconds"]) == (0, 2)
    assert segments[0]["unsafe"] and not segments[2]["unsafe"]
    assert segments[1]["lost_updates"] == 15  # from the last settled unlocked point
    assert segments[2]["lost_updates_per_second"] == 0.0
    assert segments[2]["acknowledged_per_second"] == 40.0
    assert [point["seconds"] for point in history.to_list()] == [0, 1, 2, 3, 4, 5, 7]


def test_a_window_change_in_one_mode_starts_a_new_stretch() -> None:
    """Unlocked at 20 ms and at 100 ms are two stretches with their own rates."""
    history = History("r")
    history.add(0.0, {"lock_mode": "unlocked", "race_window_ms": 20}, totals(0, 0, {}))
    history.add(1.0, {"lock_mode": "unlocked", "race_window_ms": 20}, totals(9, 4, {"unlocked": 9}))
    history.add(
        2.0, {"lock_mode": "unlocked", "race_window_ms": 100}, totals(10, 5, {"unlocked": 10})
    )
    history.add(
        4.0, {"lock_mode": "unlocked", "race_window_ms": 100}, totals(12, 9, {"unlocked": 12})
    )
    segments = history.segments()
    assert [(s["race_window_ms"], s["lost_updates_per_second"]) for s in segments] == [
        (20, 4.0),
        (100, 2.0),
    ]


def test_history_keeps_a_bounded_number_of_points() -> None:
    """A long run keeps only the latest points."""
    history = History("r")
    mode = {"lock_mode": "atomic", "race_window_ms": 0}
    for second in range(HISTORY_POINTS_LIMIT + 10):
        history.add(float(second), mode, totals(second, 0, {"atomic": second}))
    points = history.to_list()
    assert len(points) == HISTORY_POINTS_LIMIT
    assert points[0]["seconds"] == 10


def test_every_mode_of_the_service_has_a_one_line_explanation() -> None:
    """The seven modes of DESIGN §2, each with its own line; redis-lock is unsafe, fenced not."""
    assert ALL_MODES == (
        "unlocked", "locked", "process-lock", "optimistic", "atomic", "redis-lock", "fenced",
    )  # fmt: skip
    explanations = [explain_mode(mode) for mode in ALL_MODES]
    assert len(set(explanations)) == len(ALL_MODES)
    assert all("\n" not in line and len(line) <= 90 for line in explanations)
    assert explain_mode("future-mode") == "see the README's lock-mode table"
    assert {"unlocked", "process-lock", "redis-lock"} == UNSAFE_MODES
    assert "lease" in explain_mode("redis-lock") and "409" in explain_mode("fenced")


def test_a_redis_lock_stretch_is_unsafe_and_a_fenced_one_is_not() -> None:
    """The chart colours redis-lock's stretch as a mode that loses money, fenced's as correct."""
    history = History("r")
    redis_lock = {"lock_mode": "redis-lock", "race_window_ms": 20}
    fenced = {"lock_mode": "fenced", "race_window_ms": 20}
    history.add(0.0, redis_lock, totals(0, 0, {}))
    history.add(1.0, redis_lock, totals(40, 6, {"redis-lock": 40}))
    history.add(2.0, redis_lock, totals(80, 12, {"redis-lock": 80}))
    history.add(3.0, fenced, totals(100, 13, {"redis-lock": 90, "fenced": 10}))
    history.add(4.0, fenced, totals(120, 13, {"redis-lock": 90, "fenced": 30}))
    history.add(5.0, fenced, totals(140, 13, {"redis-lock": 90, "fenced": 50}))
    segments = history.segments()
    assert [(s["lock_mode"], s["settled"], s["unsafe"]) for s in segments] == [
        ("redis-lock", True, True),
        ("fenced", False, False),
        ("fenced", True, False),
    ]
    assert segments[0]["lost_updates_per_second"] == 6.0
    assert segments[2]["lost_updates_per_second"] == 0.0


def test_a_stale_lock_refusal_is_refused_not_an_anomaly_nor_a_loss() -> None:
    """409 stale_lock (fenced) changed nothing: counted refused, expected balance unmoved."""
    tally, flight = Tally(run_id="r"), InFlight()
    acknowledge(tally, flight, deposit())
    refused = deposit()
    flight.start(refused)
    tally.record(refused, Answer(409, 5.0, code="stale_lock", lock_mode="fenced"))
    flight.settle(refused)
    stored = OPENING + AMOUNT
    view = account_view(
        ACCOUNT,
        OPENING,
        AMOUNT,
        sample(tally, flight),
        sample(tally, flight),
        audit(stored, stored),
    )
    assert (view.expected, view.lost_updates, view.money_lost) == (stored, 0, 0)
    totals_now = race_totals([view], sample(tally, flight))
    assert (totals_now["refused"], totals_now["anomalies"]) == (1, 0)
    assert totals_now["served_by_mode"] == {"unlocked": 1, "fenced": 1}


def test_the_servers_own_counts_are_read_from_its_metrics() -> None:
    """/metrics text: operations summed per lock mode and outcome, refusals per code."""
    exposition = "\n".join(
        [
            "# TYPE bankrace_operations counter",
            'bankrace_operations_total{kind="deposit",lock_mode="unlocked",outcome="ok"} 7.0',
            'bankrace_operations_total{kind="withdrawal",lock_mode="unlocked",outcome="ok"} 3.0',
            'bankrace_operations_total{kind="deposit",lock_mode="locked",'
            'outcome="lock_timeout"} 2.0',
            "# TYPE bankrace_http_problems counter",
            'bankrace_http_problems_total{code="lock_timeout",status="503"} 2.0',
            'bankrace_http_problems_total{code="insufficient_funds",status="409"} 4.0',
            "",
        ]
    )
    counts = server_counts(exposition)
    assert counts["operations"] == {"unlocked": {"ok": 10}, "locked": {"lock_timeout": 2}}
    assert counts["problems"] == {"lock_timeout": 2, "insufficient_funds": 4}


def hold_tally_with_anomalies() -> Tally:
    """Account 1: one hold captured twice, one captured and voided; account 2: an over-hold."""
    tally = Tally(run_id="r")
    for hold_id in (1, 2):
        placed = {"id": hold_id, "expires_at": "2099-01-01T00:00:00+00:00"}
        tally.holds.note(
            Operation("hold", ACCOUNT, AMOUNT, expires_in_s=30), "acknowledged", placed, 0.0
        )
    capture = Operation("capture", ACCOUNT, AMOUNT, hold_id=1)
    for action in (capture, capture, Operation("void", ACCOUNT, AMOUNT, hold_id=2)):
        tally.holds.note(action, "acknowledged", {}, 1.0)
    tally.holds.note(Operation("capture", ACCOUNT, AMOUNT, hold_id=2), "acknowledged", {}, 1.0)
    tally.holds.note_read(OTHER_ACCOUNT, {"balance": 5, "held": 10, "available": -5})
    return tally


def test_hold_anomalies_reach_the_accounts_the_totals_and_the_wire() -> None:
    """The holds scenario's anomalies so far, per account and in total; merged over workers."""
    flight = InFlight()
    tally = hold_tally_with_anomalies()
    live = LiveSample.from_dict(sample(tally, flight).to_dict())  # as a worker sends it
    assert live.hold_counts == {
        ACCOUNT: {"double_captures": 1, "captures_after_void": 1},
        OTHER_ACCOUNT: {"over_hold_reads": 1},
    }
    setup = RunSetup("r", "holds", AMOUNT, {ACCOUNT: OPENING, OTHER_ACCOUNT: OPENING})
    audits = {ACCOUNT: audit(OPENING, OPENING), OTHER_ACCOUNT: audit(OPENING, OPENING)}
    accounts = race_accounts(setup, live, live, audits)
    assert [view.hold_anomalies for view in accounts] == [2, 1]
    totals = race_totals(accounts, merged([live, live], "r", 2.0))  # two workers' samples
    assert totals["holds"] == {
        "double_captures": 2,
        "captures_after_void": 2,
        "captures_after_expiry": 0,
        "over_hold_reads": 2,
        "anomalies": 6,
    }
    plain = Tally(run_id="r")
    acknowledge(plain, flight, deposit())
    assert race_totals([], sample(plain, flight))["holds"] is None  # no hold: no card
