"""The lock mode: read it, and change it at run time with the admin token.

Every `PUT /mode` is logged, changed or refused: who asked (client address;
the request id is stamped by service/logs.py) and the mode and race window
before and after. A change that leaves the service in a mode that loses
money is a WARNING. The token is never logged, right or wrong.
"""

from __future__ import annotations

import logging

from flask import Blueprint, Response, jsonify, request
from pydantic import MISSING

from service.api.auth import require_admin
from service.api.bodies import ModeChange, validated
from service.api.context import current_bank
from service.api.errors import ProblemError
from service.api.parsing import json_object
from service.api.representations import Mode
from service.api.spec import BODY_PROBLEMS, WRITE_PROBLEMS, Endpoint, Success, documented
from service.domain import DomainError, LockMode, ModeSetting

logger = logging.getLogger(__name__)

blueprint = Blueprint("admin", __name__)

TAG = "mode"


def mode_json(setting: ModeSetting) -> Mode:
    return {
        "lock_mode": setting.lock_mode,  # a StrEnum: JSON writes its value
        "race_window_ms": setting.race_window_ms,
        "modes": list(LockMode),
        "unsafe_modes_allowed": current_bank().modes.allow_unsafe_modes,
    }


@blueprint.get("/mode")
@documented(
    Endpoint(
        "The lock mode and race window serving requests",
        TAG,
        Success(200, "the current mode", Mode),
        problems=("store_unavailable",),
    )
)
def get_mode() -> Response:
    return jsonify(mode_json(current_bank().modes.current()))


@blueprint.put("/mode")
@documented(
    Endpoint(
        "Change the lock mode or the race window (admin)",
        TAG,
        Success(200, "the new mode", Mode),
        description="Reaches every worker and replica within one second. The unsafe modes "
        "(`unlocked`, `process-lock`, `redis-lock`) are refused (403) unless the service runs with "
        "`BANK_ALLOW_UNSAFE_MODES=1`; with no `BANK_ADMIN_TOKEN` set, admin is off (403).",
        body=ModeChange,
        problems=("unauthorized", "forbidden", *BODY_PROBLEMS, *WRITE_PROBLEMS),
        admin=True,
    )
)
def put_mode() -> Response:
    try:
        before, after = _change_mode()
    except (ProblemError, DomainError) as refusal:
        logger.warning(
            "lock mode not changed: %s",
            refusal.code,
            extra={"code": refusal.code, "client_address": request.remote_addr},
        )
        raise
    level = logging.WARNING if after.lock_mode.is_unsafe else logging.INFO
    logger.log(
        level,
        "lock mode changed from %s (race window %d ms) to %s (race window %d ms)",
        before.lock_mode.value,
        before.race_window_ms,
        after.lock_mode.value,
        after.race_window_ms,
        extra={
            "client_address": request.remote_addr,
            "from_lock_mode": before.lock_mode.value,
            "from_race_window_ms": before.race_window_ms,
            "to_lock_mode": after.lock_mode.value,
            "to_race_window_ms": after.race_window_ms,
        },
    )
    return jsonify(mode_json(after))


def _change_mode() -> tuple[ModeSetting, ModeSetting]:
    """The mode stored before the change (what every worker and replica was told), and after."""
    require_admin()  # the one admin check, shared with the admin-only reads
    change = validated(json_object(), ModeChange)
    bank = current_bank()
    # Read from the store, not this worker's cache, which may be up to
    # MODE_REFRESH_SECONDS behind a change made through another worker.
    before = bank.store.load_mode() or bank.modes.current()
    return before, bank.modes.change(
        None if change.lock_mode is MISSING else change.lock_mode,
        None if change.race_window_ms is MISSING else change.race_window_ms,
    )
