"""The service's Prometheus instruments, declared: one entry of METRICS per instrument.

Each entry says the instrument's kind, name, help text, labels and, for a
gauge, how the workers' values add up; `Instruments` names them for the
code that records (`service.metrics`, which builds them on first use).
Changing a name, a help text or a label changes what /metrics shows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Requests take from well under a millisecond (reads in memory) to the lock
# timeout (5 s) plus a race window (up to 5 s).
LATENCY_BUCKETS_SECONDS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


@dataclass(frozen=True)
class MetricSpec:
    """One instrument, declared: its kind, name, help text and labels."""

    kind: Literal["counter", "gauge", "histogram"]
    name: str
    documentation: str
    labels: tuple[str, ...] = ()
    #: Gauges: how the workers' values add up (prometheus-client's multiprocess_mode).
    combined: Literal["mostrecent", "max", "livesum"] = "mostrecent"

    def build(self, registry: CollectorRegistry) -> Counter | Gauge | Histogram:
        if self.kind == "counter":
            return Counter(self.name, self.documentation, self.labels, registry=registry)
        if self.kind == "histogram":
            return Histogram(
                self.name,
                self.documentation,
                self.labels,
                buckets=LATENCY_BUCKETS_SECONDS,
                registry=registry,
            )
        return Gauge(
            self.name,
            self.documentation,
            self.labels,
            registry=registry,
            multiprocess_mode=self.combined,
        )


def counter(name: str, documentation: str, labels: tuple[str, ...] = ()) -> MetricSpec:
    return MetricSpec("counter", name, documentation, labels)


def latency(name: str, documentation: str, labels: tuple[str, ...] = ()) -> MetricSpec:
    """A histogram of seconds, in LATENCY_BUCKETS_SECONDS."""
    return MetricSpec("histogram", name, documentation, labels)


def last(name: str, documentation: str, labels: tuple[str, ...] = ()) -> MetricSpec:
    """A gauge of the value most recently set by any worker, alive or not."""
    return MetricSpec("gauge", name, documentation, labels, combined="mostrecent")


METRICS: dict[str, MetricSpec] = {
    "requests": counter(
        "bankrace_http_requests",
        "HTTP requests answered, by method, route template and status",
        ("method", "route", "status"),
    ),
    "request_duration": latency(
        "bankrace_http_request_duration_seconds",
        "Time from the request's first hook to its response, by method and route",
        ("method", "route"),
    ),
    "problems": counter(
        "bankrace_http_problems",
        "Problem (error) responses by status and code; status 503 is the service refusing "
        "honestly under load (lock_timeout, write_conflict, store_unavailable, ...)",
        ("status", "code"),
    ),
    "operations": counter(
        "bankrace_operations",
        "Deposits, withdrawals and transfers run by the service layer, by kind, outcome "
        "(ok or the problem code) and lock mode",
        ("kind", "outcome", "lock_mode"),
    ),
    "operation_duration": latency(
        "bankrace_operation_duration_seconds",
        "Time to apply one operation, lock wait, race window, retries and commit included",
        ("kind", "lock_mode"),
    ),
    "lock_wait": latency(
        "bankrace_lock_wait_seconds",
        "locked, process-lock, redis-lock and fenced: time from asking for the accounts' "
        "lock to holding it (SQLite: the queue of the process's one writer and the "
        "database write lock)",
        ("lock_mode",),
    ),
    "optimistic_conflicts": counter(
        "bankrace_optimistic_conflicts",
        "optimistic: writes refused because the account changed since it was read; each "
        "is retried while the attempts and the lock timeout last (else write_conflict)",
    ),
    "database_retries": counter(
        "bankrace_database_retries",
        "Transactions the database aborted (PostgreSQL deadlock or serialization failure) "
        "and the service ran again",
        ("reason",),
    ),
    "stale_lock_refusals": counter(
        "bankrace_stale_lock_refusals",
        "fenced: writes the store refused because a newer lock holder had claimed the "
        "account (the request's Redis lease ran out); answered 409 stale_lock, nothing "
        "written",
        ("lock_mode",),
    ),
    "lease_expiries": counter(
        "bankrace_lock_lease_expiries",
        "redis-lock and fenced: Redis locks found expired (gone, or another holder's) "
        "when their holder gave them back: the holder outlived its lease",
        ("lock_mode",),
    ),
    "audit_drift": last(
        "bankrace_audit_drift_minor",
        "The last audit answered: stored balance minus journal sum (money lost or made by "
        "lost updates), of the whole bank or of the last account audited",
        ("scope",),
    ),
    "audit_chain_breaks": last(
        "bankrace_audit_chain_breaks",
        "The last audit answered: journal entries that do not follow the previous one",
        ("scope",),
    ),
    "audit_inconsistent_accounts": last(
        "bankrace_audit_inconsistent_accounts",
        "The last bank audit answered: accounts with drift, chain breaks or an overdraft",
    ),
    "audit_consistent": last(
        "bankrace_audit_consistent",
        "The last audit answered: 1 if consistent, 0 if not",
        ("scope",),
    ),
    "audit_account": last("bankrace_audit_account_id", "The account of the last account audit"),
    "audit_held": last(
        "bankrace_audit_held_minor",
        "The last audit answered: money held by pending holds not yet expired",
        ("scope",),
    ),
    "audit_hold_anomalies": last(
        "bankrace_audit_hold_anomalies",
        "The last audit answered: holds with two outcomes, captured above their amount or "
        "after their expiry, and accounts holding more than their balance (overcommitted)",
        ("scope", "anomaly"),
    ),
    "audit_time": last(
        "bankrace_audit_time_seconds",
        "When the last audit was answered (Unix time)",
        ("scope",),
    ),
    "build_info": MetricSpec(
        "gauge",
        "bankrace_build_info",
        "The running version (the value is always 1)",
        ("version", "python_version"),
        combined="max",
    ),
    "lock_mode": last(
        "bankrace_lock_mode",
        "1 for the lock mode serving requests, 0 for the others",
        ("lock_mode",),
    ),
    "race_window": last(
        "bankrace_race_window_seconds", "The race window between a read and its write"
    ),
    "unsafe_modes_allowed": last(
        "bankrace_unsafe_modes_allowed",
        "1 if BANK_ALLOW_UNSAFE_MODES lets PUT /mode choose a mode that loses money",
    ),
    "workers": MetricSpec(
        "gauge",
        "bankrace_workers",
        "Processes serving this service (gunicorn workers alive)",
        combined="livesum",
    ),
    "queue_wait": latency(
        "bankrace_queue_wait_seconds",
        "Time a request served by the API waited in its worker's queue for a thread "
        "(health, readiness and metrics excluded); bounded by BANK_QUEUE_WAIT_MAX_MS",
    ),
    "shed_requests": counter(
        "bankrace_shed_requests",
        "Requests answered 503 overloaded without running, by reason: queue_full "
        "(BANK_QUEUE_MAX_REQUESTS were waiting) or queue_wait (waited past "
        "BANK_QUEUE_WAIT_MAX_MS)",
        ("reason",),
    ),
}


@dataclass(frozen=True)
class Instruments:
    """The instruments of METRICS, built in one registry (one field per entry).

    `request_series` caches the children of each request series (see request_answered).
    """

    registry: CollectorRegistry
    requests: Counter
    request_duration: Histogram
    problems: Counter
    operations: Counter
    operation_duration: Histogram
    lock_wait: Histogram
    optimistic_conflicts: Counter
    database_retries: Counter
    stale_lock_refusals: Counter
    lease_expiries: Counter
    audit_drift: Gauge
    audit_chain_breaks: Gauge
    audit_inconsistent_accounts: Gauge
    audit_consistent: Gauge
    audit_account: Gauge
    audit_held: Gauge
    audit_hold_anomalies: Gauge
    audit_time: Gauge
    build_info: Gauge
    lock_mode: Gauge
    race_window: Gauge
    unsafe_modes_allowed: Gauge
    workers: Gauge
    queue_wait: Histogram
    shed_requests: Counter
    # (method, route, status) -> the request counter's and duration histogram's children
    request_series: dict[tuple[str, str, int], tuple[Any, Any]] = field(default_factory=dict)
