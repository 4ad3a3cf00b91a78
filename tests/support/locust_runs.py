"""Run a locustfile headless in a subprocess, bounded by a deadline.

Locust runs only as a subprocess: importing it in the test process would let
gevent patch pytest. Each run gets its own process group, so a run past its
deadline is killed together with any workers it forked (`--processes`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

LOADTEST_DIRECTORY = Path(__file__).resolve().parents[2] / "loadtest"  # the locustfiles


@dataclass
class LocustProcess:
    exit_code: int  # negative (the signal) when it was killed at the deadline
    output: str  # stdout and stderr
    timed_out: bool


def run_headless(
    locustfile: Path,
    arguments: Sequence[str],
    *,
    workdir: Path,
    deadline_seconds: float,
    environment: Mapping[str, str] | None = None,
) -> LocustProcess:
    """`python -m locust -f LOCUSTFILE --headless ARGUMENTS` from `workdir`.

    Killed with its process group at the deadline; `environment` replaces the inherited one.
    """
    process = subprocess.Popen(
        [sys.executable, "-m", "locust", "-f", str(locustfile), "--headless", *arguments],
        cwd=workdir,
        env=None if environment is None else dict(environment),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=deadline_seconds)
        timed_out = False
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        timed_out = True
    return LocustProcess(process.returncode, output, timed_out)
