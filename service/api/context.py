"""Per-request access to the Bank wired by `create_app` (kept in app.extensions)."""

from __future__ import annotations

from typing import cast

from flask import current_app, g

from service.domain import ModeSetting
from service.services import Bank

EXTENSION_KEY = "bankrace"


def current_bank() -> Bank:
    return cast(Bank, current_app.extensions[EXTENSION_KEY])


def serving_setting() -> ModeSetting:
    """The mode this request runs in, read once and remembered for X-Lock-Mode."""
    setting = current_bank().modes.current()
    g.lock_mode = setting.lock_mode.value
    return setting
