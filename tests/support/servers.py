"""Start and stop a real `bankrace serve` (gunicorn) for end-to-end tests.

Every server is started as its own process group on a free loopback port and
stopped by its PID; readiness is awaited by polling /healthz against a
deadline, never by sleeping a fixed time.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import requests

from loadtest.service_process import free_port, stop_process_group

STARTUP_DEADLINE_SECONDS = 30.0
STOP_DEADLINE_SECONDS = 15.0
POLL_INTERVAL_SECONDS = 0.05
STATUS_POLL_INTERVAL_SECONDS = 0.1


def wait_for_status(
    url: str, status: int, *, deadline_seconds: float, request_timeout_seconds: float = 10
) -> requests.Response:
    """GET `url` until it answers `status`; the last answer (another status at the deadline)."""
    deadline = time.monotonic() + deadline_seconds
    while True:
        response = requests.get(url, timeout=request_timeout_seconds)
        if response.status_code == status or time.monotonic() > deadline:
            return response
        time.sleep(STATUS_POLL_INTERVAL_SECONDS)  # polling interval, not synchronisation


def clean_environment(overrides: Mapping[str, str]) -> dict[str, str]:
    """The test's environment without any BANK_* setting leaking in, plus overrides."""
    environment = {key: value for key, value in os.environ.items() if not key.startswith("BANK_")}
    environment.update(overrides)
    return environment


@dataclass
class ServerProcess:
    """One `bankrace serve` under gunicorn, configured only by environment."""

    workdir: Path
    settings: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    _workers_before_start: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / f"server-{self.port}.log"

    def start(self) -> ServerProcess:
        # A restarted server appends to the same log: count only new lines.
        self._workers_before_start = self.read_log().count("bankrace: worker ")
        environment = clean_environment({"BANK_BIND": f"127.0.0.1:{self.port}", **self.settings})
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "service", "serve"],
            cwd=self.workdir,
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self.wait_until_healthy()
        return self

    @property
    def workers(self) -> int:
        return int(self.settings.get("BANK_WORKERS", "2"))

    def ready_workers(self) -> int:
        return self.read_log().count("bankrace: worker ") - self._workers_before_start

    def wait_until_healthy(self) -> None:
        """Every worker announced itself ready, and /readyz answers 200."""
        deadline = time.monotonic() + STARTUP_DEADLINE_SECONDS
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.read_log()}")
            try:
                ready = requests.get(f"{self.url}/readyz", timeout=1).status_code == 200
                if ready and self.ready_workers() >= self.workers:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(POLL_INTERVAL_SECONDS)  # polling interval, not synchronisation
        self.stop()
        raise RuntimeError(
            f"server not ready within {STARTUP_DEADLINE_SECONDS}s:\n{self.read_log()}"
        )

    def read_log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        """Graceful stop (SIGTERM to the gunicorn master), then SIGKILL if it hangs."""
        self._signal_and_wait(signal.SIGTERM)

    def kill(self) -> None:
        """A crash: SIGKILL to the whole process group, no chance to flush anything."""
        self._signal_and_wait(signal.SIGKILL)

    def _signal_and_wait(self, signum: int) -> None:
        if self.process is not None:
            stop_process_group(self.process, signum, STOP_DEADLINE_SECONDS)

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
