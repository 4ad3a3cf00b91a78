"""Start and stop one bankrace service (`python -m service serve`) for the comparison runner.

Configured only through the environment of DESIGN §4, started in its own
process group on a free loopback port, awaited by polling GET /readyz against
a deadline, and stopped by its process group id. It runs the service as a
black box: nothing here imports `service`.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from loadtest.bank_http import BankClient

READY_DEADLINE_SECONDS = 60.0
STOP_DEADLINE_SECONDS = 15.0
POLL_INTERVAL_SECONDS = 0.1
REPOSITORY_ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def stop_process_group(
    process: subprocess.Popen[Any],
    graceful_signal: int,
    deadline_seconds: float = STOP_DEADLINE_SECONDS,
) -> None:
    """Signal a process group (started with start_new_session); SIGKILL it past the deadline.

    Shared by every harness that starts a server (service, nginx) so none leaks processes.
    """
    if process.poll() is not None:
        return
    for signum in dict.fromkeys((graceful_signal, signal.SIGKILL)):
        try:
            os.killpg(process.pid, signum)
            process.wait(timeout=deadline_seconds)
            return
        except subprocess.TimeoutExpired:
            continue
        except ProcessLookupError:
            return


def service_environment(settings: Mapping[str, str]) -> dict[str, str]:
    """This process's environment without any BANK_* leaking in, plus `settings`.

    The repository root goes first on PYTHONPATH so that `python -m service`
    works from a checkout that is not installed.
    """
    environment = {key: value for key, value in os.environ.items() if not key.startswith("BANK_")}
    python_path = [str(REPOSITORY_ROOT), *filter(None, [environment.get("PYTHONPATH")])]
    environment["PYTHONPATH"] = os.pathsep.join(python_path)
    environment.update(settings)
    return environment


class ServiceProcess:
    """One `python -m service serve` under gunicorn on 127.0.0.1:<free port>."""

    def __init__(self, settings: Mapping[str, str], workdir: Path, log_path: Path) -> None:
        self.port = free_port()
        self.settings = {**settings, "BANK_BIND": f"127.0.0.1:{self.port}"}
        self.workdir = workdir
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "service", "serve"]

    def environment(self) -> dict[str, str]:
        return service_environment(self.settings)

    def start(self) -> ServiceProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.command(),
                cwd=self.workdir,
                env=self.environment(),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, stopped as one
            )
        try:
            self.wait_until_ready()
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def workers(self) -> int:
        return int(self.settings.get("BANK_WORKERS", "2"))

    def ready_workers(self) -> int:
        """Workers that announced `bankrace: worker <pid> ready` in the log.

        /readyz answers as soon as one worker is up; a mode compared while the
        other worker still boots would be measured on one process only.
        """
        if not self.log_path.exists():
            return 0
        return self.log_path.read_text(errors="replace").count("bankrace: worker ")

    def wait_until_ready(self) -> None:
        client = BankClient(self.url, timeout_seconds=1.0)
        deadline = time.monotonic() + READY_DEADLINE_SECONDS
        try:
            while time.monotonic() < deadline:
                assert self.process is not None
                if self.process.poll() is not None:
                    raise RuntimeError(f"the service exited early; see {self.log_path}")
                if client.is_ready() and self.ready_workers() >= self.workers:
                    return
                time.sleep(POLL_INTERVAL_SECONDS)  # polling interval under a deadline
        finally:
            client.close()
        raise RuntimeError(f"the service was not ready in {READY_DEADLINE_SECONDS:.0f} s")

    def stop(self) -> None:
        """SIGTERM to the process group (gunicorn's graceful stop), SIGKILL if it hangs."""
        if self.process is not None:
            stop_process_group(self.process, signal.SIGTERM)

    def __enter__(self) -> ServiceProcess:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
