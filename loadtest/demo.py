"""`make demo` (`python -m loadtest.demo`): watch money disappear, then switch the mode.

One command starts, each in its own process group:
- `python -m service serve` on a free loopback port: mode `unlocked`, unsafe
  modes allowed, a race window, a fresh SQLite database and a generated admin
  token (`secrets.token_urlsafe`); for `redis-lock` and `fenced`, the Redis of
  BANK_REDIS_URL (default redis://127.0.0.1:6379/0) and a lease shorter than
  the race window, so that every lock holder outlives its lease;
- Locust with its web UI on 127.0.0.1 (8089 when free) and the locustfile's
  Race tab, its users already hammering a few hot accounts; the admin token
  reaches it through its environment (`BANK_ADMIN_TOKEN`), never a command
  line, a URL or the page.
It prints the one address to open, and Ctrl-C (or SIGTERM) stops Locust (which
prints its race report) and then the service, by process group id.

Black-box: it runs the service as a program and never imports `service`.
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import requests

from loadtest.redis_target import (
    REDIS_LOCK_TTL_VARIABLE,
    REDIS_URL_VARIABLE,
    hide_password,
    redis_problem,
    redis_url_from,
)
from loadtest.scenarios import SCENARIOS
from loadtest.service_process import (
    REPOSITORY_ROOT,
    ServiceProcess,
    free_port,
    stop_process_group,
)

LOCUSTFILE = REPOSITORY_ROOT / "loadtest" / "locustfile.py"
DEFAULT_WORKDIR = REPOSITORY_ROOT / "var" / "demo"
DEFAULT_WEB_PORT = 8089
DEFAULT_USERS = 10  # enough to lose hundreds a second; locked still lets PUT /mode in
DEFAULT_RACE_WINDOW_MS = 20
# Half the default window: a holder of the Redis lock outlives its lease, as one paused by a GC
# would; redis-lock then loses money and fenced refuses the stale writes (409 stale_lock).
DEFAULT_REDIS_LOCK_TTL_MS = 10
REDIS_LOCK_TTL_LIMITS_MS = (10, 600_000)  # the service's bounds
# Deposits only: every lost update is money that vanished, so the loss only grows.
DEFAULT_SCENARIO = "deposits"
LOCUST_READY_DEADLINE_SECONDS = 60.0
LOCUST_STOP_DEADLINE_SECONDS = 60.0  # it drains its requests and reconciles first
POLL_INTERVAL_SECONDS = 0.2
WATCH_INTERVAL_SECONDS = 1.0


@dataclass(frozen=True)
class DemoSettings:
    users: int = DEFAULT_USERS
    race_window_ms: int = DEFAULT_RACE_WINDOW_MS
    scenario: str = DEFAULT_SCENARIO
    web_port: int = DEFAULT_WEB_PORT
    workdir: Path = DEFAULT_WORKDIR
    workers: int = 2  # gunicorn workers: process-lock loses money across them
    threads: int = 8
    locust_processes: int = 0  # 0: one Locust process; N: a master and N workers
    redis_url: str = field(default_factory=redis_url_from)
    redis_lock_ttl_ms: int = DEFAULT_REDIS_LOCK_TTL_MS


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class Demo:
    """The service and Locust's web UI, started together and stopped together."""

    def __init__(self, settings: DemoSettings, locust_output: IO[Any] | None = None) -> None:
        self.settings = settings
        self.admin_token = secrets.token_urlsafe(24)
        self.locust_output = locust_output  # None: this terminal
        self.web_port = settings.web_port if port_is_free(settings.web_port) else free_port()
        settings.workdir.mkdir(parents=True, exist_ok=True)
        self.database_path = settings.workdir / "bank.db"
        self.service = ServiceProcess(
            {
                "BANK_DATABASE_URL": f"sqlite:///{self.database_path}",
                "BANK_LOCK_MODE": "unlocked",
                "BANK_ALLOW_UNSAFE_MODES": "1",
                "BANK_RACE_WINDOW_MS": str(settings.race_window_ms),
                "BANK_ADMIN_TOKEN": self.admin_token,
                "BANK_WORKERS": str(settings.workers),
                "BANK_THREADS": str(settings.threads),
                REDIS_URL_VARIABLE: settings.redis_url,
                REDIS_LOCK_TTL_VARIABLE: str(settings.redis_lock_ttl_ms),
            },
            workdir=REPOSITORY_ROOT,
            log_path=settings.workdir / "service.log",
        )
        self.locust: subprocess.Popen[bytes] | None = None

    @property
    def web_url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    @property
    def race_url(self) -> str:
        return f"{self.web_url}/race"

    def start(self) -> Demo:
        # A fresh database and log each time: the demo's numbers are this run's only.
        for stale in self.settings.workdir.glob("bank.db*"):
            stale.unlink()
        self.service.log_path.unlink(missing_ok=True)
        self.service.start()
        try:
            self.locust = subprocess.Popen(
                self.locust_command(),
                cwd=REPOSITORY_ROOT,
                env={**os.environ, "BANK_ADMIN_TOKEN": self.admin_token},
                stdin=subprocess.DEVNULL,  # no keyboard control of the user count
                stdout=self.locust_output,
                stderr=subprocess.STDOUT if self.locust_output else None,
                start_new_session=True,  # its own process group, stopped as one
            )
            self.wait_for_race_page()
        except BaseException:
            self.stop()
            raise
        return self

    def locust_command(self) -> list[str]:
        users = str(self.settings.users)
        command = [
            sys.executable, "-m", "locust", "-f", str(LOCUSTFILE),
            "--host", self.service.url,
            "--web-host", "127.0.0.1", "--web-port", str(self.web_port),
            "--autostart", "-u", users, "-r", users,
            "--bank-scenario", self.settings.scenario,
        ]  # fmt: skip
        if self.settings.locust_processes:
            master_port = str(free_port())  # Locust's default 5557 may be taken
            command += ["--processes", str(self.settings.locust_processes)]
            command += ["--master-bind-host", "127.0.0.1", "--master-bind-port", master_port]
            command += ["--master-host", "127.0.0.1", "--master-port", master_port]
        return command

    def wait_for_race_page(self) -> None:
        deadline = time.monotonic() + LOCUST_READY_DEADLINE_SECONDS
        while time.monotonic() < deadline:
            assert self.locust is not None
            if self.locust.poll() is not None:
                raise RuntimeError(f"Locust exited early with code {self.locust.returncode}")
            try:
                if requests.get(f"{self.race_url}/data", timeout=1.0).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(POLL_INTERVAL_SECONDS)  # polling interval under a deadline
        raise RuntimeError(f"Locust's web UI did not answer in {LOCUST_READY_DEADLINE_SECONDS} s")

    def running(self) -> bool:
        service = self.service.process
        return (
            self.locust is not None
            and self.locust.poll() is None
            and service is not None
            and service.poll() is None
        )

    def stop(self) -> None:
        """Locust first (SIGTERM: it drains, reconciles and prints its report), then the service."""
        try:
            if self.locust is not None:
                stop_process_group(self.locust, signal.SIGTERM, LOCUST_STOP_DEADLINE_SECONDS)
        finally:
            self.service.stop()

    def kill(self) -> None:
        """A second Ctrl-C: no more waiting."""
        for process in (self.locust, self.service.process):
            if process is not None:
                stop_process_group(process, signal.SIGKILL, 5.0)


def redis_line(settings: DemoSettings) -> str:
    """Where redis-lock and fenced find their Redis, and whether it answers now."""
    where = f"Redis {hide_password(settings.redis_url)}, lease {settings.redis_lock_ttl_ms} ms"
    problem = redis_problem(settings.redis_url)
    if problem:
        return f"{where}: {problem}; until it does, redis-lock and fenced answer 503"
    if settings.redis_lock_ttl_ms >= settings.race_window_ms:
        return f"{where}: not below the race window, so redis-lock will hardly lose money"
    return f"{where}, below the race window: redis-lock loses money, fenced does not"


def banner(demo: Demo) -> str:
    settings = demo.settings
    return f"""
bankrace demo: the race, live
  service  {demo.service.url}  mode unlocked, race window {settings.race_window_ms} ms, \
{settings.workers} workers x {settings.threads} threads
           database {demo.database_path}, log {demo.service.log_path}
           {redis_line(settings)}
  Locust   {settings.users} users, scenario {settings.scenario}; its own pages at {demo.web_url}

  Open  {demo.race_url}

Money vanishes in mode unlocked; press "locked" on the page and the losses stop.
Press "redis-lock": the window outlives the lock's lease and money vanishes again;
"fenced" refuses the stale writes (409 stale_lock) and loses nothing.
Ctrl-C stops everything (Locust prints its race report first).
"""


def parse_arguments(argv: list[str] | None) -> DemoSettings:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.demo",
        description="The race, live: the service and Locust's Race tab.",
    )
    parser.add_argument("--users", type=int, default=DEFAULT_USERS, help="Locust users")
    parser.add_argument(
        "--race-window-ms", type=int, default=DEFAULT_RACE_WINDOW_MS, help="pause read-write"
    )
    parser.add_argument("--scenario", choices=SCENARIOS, default=DEFAULT_SCENARIO)
    parser.add_argument(
        "--web-port", type=int, default=DEFAULT_WEB_PORT, help="Locust's port (another if taken)"
    )
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR, help="database and log")
    parser.add_argument(
        "--locust-processes", type=int, default=0, help="Locust worker processes (0: one process)"
    )
    parser.add_argument(
        "--redis-url",
        default=redis_url_from(),
        help=f"{REDIS_URL_VARIABLE} (default: ${REDIS_URL_VARIABLE} or redis://127.0.0.1:6379/0)",
    )
    parser.add_argument(
        "--redis-lock-ttl-ms",
        type=int,
        default=DEFAULT_REDIS_LOCK_TTL_MS,
        help=f"{REDIS_LOCK_TTL_VARIABLE}: the Redis lock's lease (default "
        f"{DEFAULT_REDIS_LOCK_TTL_MS}, shorter than the race window)",
    )
    arguments = parser.parse_args(argv)
    if arguments.users < 1:
        parser.error("--users must be at least 1")
    if not 0 <= arguments.race_window_ms <= 5000:
        parser.error("--race-window-ms must be 0 to 5000")
    if arguments.locust_processes < 0:
        parser.error("--locust-processes must be 0 or more")
    low, high = REDIS_LOCK_TTL_LIMITS_MS
    if not low <= arguments.redis_lock_ttl_ms <= high:
        parser.error(f"--redis-lock-ttl-ms must be {low} to {high}")
    return DemoSettings(
        users=arguments.users,
        race_window_ms=arguments.race_window_ms,
        scenario=arguments.scenario,
        web_port=arguments.web_port,
        workdir=arguments.workdir.resolve(),
        locust_processes=arguments.locust_processes,
        redis_url=arguments.redis_url,
        redis_lock_ttl_ms=arguments.redis_lock_ttl_ms,
    )


def raise_keyboard_interrupt(_signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    settings = parse_arguments(argv)
    # Stop on SIGTERM like on Ctrl-C; SIGINT too when a shell started us with it ignored.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, raise_keyboard_interrupt)
    demo = Demo(settings)
    try:
        demo.start()
        print(banner(demo), flush=True)
        while demo.running():
            time.sleep(WATCH_INTERVAL_SECONDS)  # supervision, not synchronisation
        print("demo: Locust or the service exited; stopping the other", file=sys.stderr)
        demo.stop()
        return 1
    except KeyboardInterrupt:
        print("\ndemo: stopping Locust (it prints its race report), then the service…", flush=True)
        try:
            demo.stop()
        except KeyboardInterrupt:
            demo.kill()
        return 0
    except RuntimeError as error:
        print(f"demo: {error}; logs in {settings.workdir}", file=sys.stderr)
        demo.stop()
        return 1


if __name__ == "__main__":
    sys.exit(main())
