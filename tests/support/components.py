"""The one rule for a component a test needs and this machine lacks: skip here, fail under CI.

PostgreSQL, Redis, Chromium, nginx, wrk, iptables and the root needed to
mount a file system are all checked through `missing()`. A developer without one gets
a skip that names what is missing and how to get it; a CI run (the `CI`
variable set to 1, true or yes, in any case, as CI services set it) gets a
failure instead, so a green CI always means every component was really
exercised. Any other value of `CI` (unset, empty, 0, false, no) is a
developer's run.
"""

from __future__ import annotations

import os
import shutil
from typing import NoReturn

import pytest

CI_VARIABLE = "CI"
CI_TRUE_VALUES = frozenset({"1", "true", "yes"})


def running_in_ci() -> bool:
    return os.environ.get(CI_VARIABLE, "").strip().lower() in CI_TRUE_VALUES


def missing(reason: str) -> NoReturn:
    """Skip locally; fail under CI, where a missing component is a broken set-up."""
    if running_in_ci():
        value = os.environ.get(CI_VARIABLE, "")
        pytest.fail(f"{reason} ({CI_VARIABLE}={value}: a missing component fails, not skips)")
    pytest.skip(reason)


def require_executable(name: str, install: str) -> str:
    """The path of the command `name` on PATH, else `missing` (saying how to `install` it)."""
    path = shutil.which(name)
    if path is None:
        missing(f"{name} is not installed ({install})")
    return path
