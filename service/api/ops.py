"""Operations: liveness, readiness, and the bank-wide audit."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from service import services
from service.api.context import current_bank
from service.api.representations import bank_audit_json

blueprint = Blueprint("ops", __name__)


@blueprint.get("/healthz")
def healthz() -> Response:
    return jsonify({"status": "ok"})


@blueprint.get("/readyz")
def readyz() -> Response:
    current_bank().store.check_ready()  # StoreUnavailable -> 503 problem with the reason
    return jsonify({"status": "ready"})


@blueprint.get("/audit")
def audit() -> Response:
    return jsonify(bank_audit_json(services.bank_audit(current_bank())))
