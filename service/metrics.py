"""Prometheus metrics: what the service did, summed over every gunicorn worker.

prometheus-client's multiprocess mode: when PROMETHEUS_MULTIPROC_DIR names a
directory, each worker writes its samples to files of its own there and
`exposition()` adds them up, so the GET /metrics of any worker tells the
whole service. `bankrace serve` creates that directory (or empties the one it
is given) before the workers start, removes the one it created when it
stops, and marks each worker that exits (`worker_exited`). Without the
variable (the tests, one process) the samples stay in this process.

prometheus-client decides how to store samples when it is first imported,
from the environment; `bankrace serve` imports it before it names the
directory, so `use_directory` has it decide again. The instruments are built
on first use, in a worker after the fork, never at import time.

Every label has a bounded set of values: route templates (never paths), the
HTTP methods, statuses, problem codes, lock modes and operation kinds.

The instruments are declared in `service.metric_specs`. This module knows
metrics only: the request hooks (service/api/request_log.py),
the /metrics and audit views (service/api/ops.py, accounts.py), the use cases
(service/services.py) and the lock modes (service/modes.py) call the small
functions below.
"""

from __future__ import annotations

import os
import platform
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, TypeVar

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    disable_created_metrics,
    generate_latest,
    multiprocess,
    values,
)

from service.domain import DomainError, HoldAudit
from service.metric_specs import METRICS, Instruments

MULTIPROCESS_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED_ROUTE = "unmatched"
Argument = TypeVar("Argument")
Result = TypeVar("Result")


_built: Instruments | None = None
_build_guard = threading.Lock()


def _instruments() -> Instruments:
    global _built
    if _built is None:
        with _build_guard:
            if _built is None:
                _built = _build()
    return _built


def _build() -> Instruments:
    # `*_created` series only exist in one process; the sums over workers have none.
    disable_created_metrics()  # type: ignore[no-untyped-call]
    registry = CollectorRegistry()
    # Typed by Instruments' fields; a missing or extra entry is a TypeError here.
    built: dict[str, Any] = {field: spec.build(registry) for field, spec in METRICS.items()}
    instruments = Instruments(registry=registry, **built)
    instruments.build_info.labels(_version(), platform.python_version()).set(1)
    return instruments


def _version() -> str:
    try:
        return version("bankrace")
    except PackageNotFoundError:
        return "unknown"


# --------------------------------------------------------------------------- processes


@contextmanager
def shared_directory() -> Iterator[Path]:
    """The workers' sample files: PROMETHEUS_MULTIPROC_DIR emptied, or a new one removed after.

    Files left by an earlier run would be added to this one's counts, so a
    given directory loses its `*.db` files first (prometheus-client's rule).
    """
    given = multiprocess_directory()
    if given is not None:
        given.mkdir(parents=True, exist_ok=True)
        for stale in given.glob("*.db"):
            stale.unlink()
        use_directory(given)
        yield given
        return
    created = Path(tempfile.mkdtemp(prefix="bankrace-metrics-"))
    use_directory(created)
    maker = os.getpid()
    try:
        yield created
    finally:
        # gunicorn's workers are forked inside this block and leave it too when they
        # exit (SystemExit): only the master removes it, or the next worker cannot boot.
        if os.getpid() == maker:
            shutil.rmtree(created, ignore_errors=True)


def use_directory(path: Path) -> None:
    """Every process forked from now on shares its samples through files in `path`."""
    os.environ[MULTIPROCESS_VARIABLE] = str(path)
    # prometheus-client read the variable when it was imported, before it was set.
    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]


def multiprocess_directory() -> Path | None:
    configured = os.environ.get(MULTIPROCESS_VARIABLE)
    return Path(configured) if configured else None


def process_serving() -> None:
    """This process serves the app (counted in bankrace_workers until it exits)."""
    _instruments().workers.set(1)


def worker_exited(pid: int) -> None:
    """gunicorn's child_exit: drop the dead worker's live gauges (its counters still count)."""
    if multiprocess_directory() is not None:
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


def exposition() -> tuple[bytes, str]:
    """The text format of every sample, of every worker when the directory is set."""
    instruments = _instruments()
    if multiprocess_directory() is None:
        return generate_latest(instruments.registry), CONTENT_TYPE_LATEST
    collected = CollectorRegistry()
    multiprocess.MultiProcessCollector(collected)  # type: ignore[no-untyped-call]
    return generate_latest(collected), CONTENT_TYPE_LATEST


# --------------------------------------------------------------------------- requests


def request_answered(
    method: str, route: str | None, status: int, duration_seconds: float | None
) -> None:
    instruments = _instruments()
    method = method if method in KNOWN_METHODS else "OTHER"
    route = route or UNMATCHED_ROUTE
    # labels() validates and locks on every call (about two thirds of this
    # function's cost); a series' children never change, so each is looked up once.
    series = instruments.request_series.get((method, route, status))
    if series is None:  # a few hundred at most: known methods x route templates x statuses
        series = (
            instruments.requests.labels(method, route, str(status)),
            instruments.request_duration.labels(method, route),
        )
        instruments.request_series[(method, route, status)] = series
    counter, duration = series
    counter.inc()
    if duration_seconds is not None:
        duration.observe(duration_seconds)


def problem_answered(status: int, code: str) -> None:
    _instruments().problems.labels(str(status), code).inc()


def queue_waited(seconds: float) -> None:
    """A request leaves its worker's queue for a thread and is served (service/overload.py)."""
    _instruments().queue_wait.observe(seconds)


def request_shed(reason: str) -> None:
    """A request is answered 503 overloaded without running (service/overload.py)."""
    _instruments().shed_requests.labels(reason).inc()


def mode_served(lock_modes: Iterable[str], current: str, race_window_ms: int, unsafe: bool) -> None:
    instruments = _instruments()
    for lock_mode in lock_modes:
        instruments.lock_mode.labels(lock_mode).set(1 if lock_mode == current else 0)
    instruments.race_window.set(race_window_ms / 1000)
    instruments.unsafe_modes_allowed.set(1 if unsafe else 0)


def bank_audited(
    drift: int, chain_breaks: int, inconsistent_accounts: int, consistent: bool
) -> None:
    instruments = _instruments()
    instruments.audit_drift.labels("bank").set(drift)
    instruments.audit_chain_breaks.labels("bank").set(chain_breaks)
    instruments.audit_inconsistent_accounts.set(inconsistent_accounts)
    instruments.audit_consistent.labels("bank").set(1 if consistent else 0)
    instruments.audit_time.labels("bank").set(time.time())


def holds_audited(scope: str, holds: HoldAudit) -> None:
    """The hold part of an audit: the held money and each kind of anomaly's count."""
    instruments = _instruments()
    instruments.audit_held.labels(scope).set(holds.held)
    for anomaly, count in (
        ("two_outcomes", holds.two_outcomes),
        ("captured_above_amount", holds.captured_above_amount),
        ("captured_after_expiry", holds.captured_after_expiry),
        ("overcommitted_accounts", holds.overcommitted_accounts),
    ):
        instruments.audit_hold_anomalies.labels(scope, anomaly).set(count)


def account_audited(account_id: int, drift: int, chain_breaks: int, consistent: bool) -> None:
    instruments = _instruments()
    instruments.audit_drift.labels("account").set(drift)
    instruments.audit_chain_breaks.labels("account").set(chain_breaks)
    instruments.audit_consistent.labels("account").set(1 if consistent else 0)
    instruments.audit_account.set(account_id)
    instruments.audit_time.labels("account").set(time.time())


# --------------------------------------------------------------------------- operations


@contextmanager
def operation(kind: str, lock_mode: str) -> Iterator[None]:
    """Count one operation by its outcome (ok, or the refusal's code) and time it."""
    started = time.perf_counter()
    outcome = "ok"
    try:
        yield
    except Exception as error:
        outcome = error.code if isinstance(error, DomainError) else "error"
        raise
    finally:
        instruments = _instruments()
        instruments.operations.labels(kind, outcome, lock_mode).inc()
        instruments.operation_duration.labels(kind, lock_mode).observe(
            time.perf_counter() - started
        )


def after_lock_wait(
    lock_mode: str, work: Callable[[Argument], Result]
) -> Callable[[Argument], Result]:
    """`work`, timing the wait from now until the store (holding the lock) first calls it."""
    started = time.perf_counter()
    timed = False

    def locked(argument: Argument) -> Result:
        nonlocal timed
        if not timed:
            timed = True
            lock_waited(lock_mode, started)
        return work(argument)

    return locked


def lock_started() -> float:
    return time.perf_counter()


def lock_waited(lock_mode: str, started: float) -> None:
    _instruments().lock_wait.labels(lock_mode).observe(time.perf_counter() - started)


def optimistic_conflict() -> None:
    _instruments().optimistic_conflicts.inc()


def stale_lock_refused(lock_mode: str) -> None:
    _instruments().stale_lock_refusals.labels(lock_mode).inc()


def lease_expired(lock_mode: str) -> None:
    _instruments().lease_expiries.labels(lock_mode).inc()


def database_retry(deadlock: bool) -> None:
    _instruments().database_retries.labels("deadlock" if deadlock else "serialization").inc()
