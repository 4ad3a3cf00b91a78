"""Operations: liveness, readiness, and the bank-wide audit."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from service import services
from service.api.context import current_bank
from service.api.representations import bank_audit_json
from service.api.spec import Endpoint, Success, documented

blueprint = Blueprint("ops", __name__)
TAG = "operations"


@blueprint.get("/healthz")
@documented(Endpoint("Liveness: the process answers", TAG, Success(200, "alive", "Status")))
def healthz() -> Response:
    return jsonify({"status": "ok"})


@blueprint.get("/readyz")
@documented(
    Endpoint(
        "Readiness: the store is reachable and its schema current",
        TAG,
        Success(200, "ready", "Status"),
        problems=("store_unavailable",),
    )
)
def readyz() -> Response:
    current_bank().store.check_ready()  # StoreUnavailable -> 503 problem with the reason
    return jsonify({"status": "ready"})


@blueprint.get("/audit")
@documented(
    Endpoint(
        "Audit the whole bank: every balance against its journal",
        TAG,
        Success(200, "totals over all accounts", "BankAudit"),
        description="Computed by the store in bounded time and memory. `drift` is the total "
        "of stored balances minus the total of the journals: money lost (or made) by lost "
        "updates; `inconsistent_accounts` counts accounts with drift, chain breaks or a "
        "journal that went below zero.",
        problems=("audit_timeout", "store_unavailable"),
    )
)
def audit() -> Response:
    return jsonify(bank_audit_json(services.bank_audit(current_bank())))
