"""The lock mode: read it, and change it at run time with the admin token."""

from __future__ import annotations

import hmac

from flask import Blueprint, Response, current_app, jsonify, request

from service.api.context import current_bank
from service.api.errors import ProblemError
from service.api.parsing import json_object, validated
from service.domain import (
    FieldError,
    LockMode,
    ModeSetting,
    ValidationFailed,
    lock_mode_error,
    race_window_error,
)

blueprint = Blueprint("admin", __name__)

ADMIN_TOKEN_KEY = "BANKRACE_ADMIN_TOKEN"


def mode_json(setting: ModeSetting) -> dict[str, object]:
    return {
        "lock_mode": setting.lock_mode.value,
        "race_window_ms": setting.race_window_ms,
        "modes": [mode.value for mode in LockMode],
        "unsafe_modes_allowed": current_bank().modes.allow_unsafe_modes,
    }


@blueprint.get("/mode")
def get_mode() -> Response:
    return jsonify(mode_json(current_bank().modes.current()))


@blueprint.put("/mode")
def put_mode() -> Response:
    _require_admin()
    fields = validated(
        json_object(),
        required={},
        optional={"lock_mode": lock_mode_error, "race_window_ms": race_window_error},
    )
    if not fields:
        raise ValidationFailed([FieldError("lock_mode", "give lock_mode, race_window_ms or both")])
    lock_mode = LockMode(fields["lock_mode"]) if "lock_mode" in fields else None
    setting = current_bank().modes.change(lock_mode, fields.get("race_window_ms"))
    return jsonify(mode_json(setting))


def _require_admin() -> None:
    expected: str | None = current_app.config.get(ADMIN_TOKEN_KEY)
    if expected is None:
        raise ProblemError(403, "forbidden", "admin is disabled: BANK_ADMIN_TOKEN is not set")
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given:
        raise ProblemError(
            401,
            "unauthorized",
            "send Authorization: Bearer <admin token>",
            headers={"WWW-Authenticate": 'Bearer realm="bankrace"'},
        )
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise ProblemError(403, "forbidden", "the admin token is wrong")
