"""Operations: liveness, readiness, and the bank-wide audit."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify

from service import metrics, services
from service.api import auth
from service.api.context import current_bank
from service.api.representations import BankAudit, Readiness, Status, bank_audit_json
from service.api.spec import Endpoint, Success, documented
from service.domain import DomainError, LockMode

blueprint = Blueprint("ops", __name__)
# Each worker counts itself in bankrace_workers once its app exists (after the fork).
blueprint.record_once(lambda _state: metrics.process_serving())
TAG = "operations"


@blueprint.get("/healthz")
@documented(Endpoint("Liveness: the process answers", TAG, Success(200, "alive", Status)))
def healthz() -> Response:
    return jsonify(Status(status="ok"))


@blueprint.get("/readyz")
@documented(
    Endpoint(
        "Readiness: the store is reachable and its schema current",
        TAG,
        Success(200, "ready", Readiness),
        description="In `redis-lock` and `fenced` Redis (BANK_REDIS_URL) must answer too, and "
        'the answer says `"lock_service": "redis"` (not with `BANK_ADMIN_ONLY_READS=1`: it '
        "would tell the lock mode); the other modes never touch Redis.",
        problems=("store_unavailable",),
    )
)
def readyz() -> Response:
    bank = current_bank()
    bank.store.check_ready()  # StoreUnavailable -> 503 problem with the reason
    if bank.modes.current().lock_mode.uses_redis and bank.redis_locks is not None:
        bank.redis_locks.check_ready()  # the same 503, naming Redis
        if not auth.guard_of(current_app).admin_only_reads:  # it would tell the mode's family
            return jsonify(Readiness(status="ready", lock_service="redis"))
    return jsonify(Readiness(status="ready"))


@blueprint.get("/audit")
@documented(
    Endpoint(
        "Audit the whole bank: every balance against its journal",
        TAG,
        Success(200, "totals over all accounts", BankAudit),
        description="Computed by the store in bounded time and memory. `drift` is the total "
        "of stored balances minus the total of the journals: money lost (or made) by lost "
        "updates; `inconsistent_accounts` counts accounts with drift, chain breaks or a "
        "journal that went below zero.",
        problems=("audit_timeout", "store_unavailable"),
    )
)
def audit() -> Response:
    result = services.bank_audit(current_bank())
    metrics.bank_audited(
        result.drift, result.chain_breaks, result.inconsistent_accounts, result.consistent
    )
    metrics.holds_audited("bank", result.holds)
    return jsonify(bank_audit_json(result))


@blueprint.get("/metrics")
@documented(
    Endpoint(
        "Prometheus metrics of every worker of this service",
        TAG,
        Success(200, "the Prometheus text format", media_type="text/plain"),
        description="Requests by route and status, latency, problems by code, operations by "
        "kind, outcome and lock mode, lock wait, retries, the last audit's drift and chain "
        "breaks, the lock mode and the build (docs/operate.md lists them). Open to scrapers, "
        "unless `BANK_ADMIN_ONLY_READS=1`: then it needs the admin token, like `GET /mode`.",
    )
)
def metrics_text() -> Response:
    bank = current_bank()
    try:
        setting = bank.modes.current()
    except DomainError:
        setting = None  # the store is down: the metrics still answer, with the last mode
    if setting is not None:
        metrics.mode_served(
            (mode.value for mode in LockMode),
            setting.lock_mode.value,
            setting.race_window_ms,
            bank.modes.allow_unsafe_modes,
        )
    body, content_type = metrics.exposition()
    return Response(body, content_type=content_type)
