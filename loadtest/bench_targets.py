"""What the benchmark loads: the echo app, and the service on each store.

The service runs as `python -m service serve` (loadtest/service_process.py)
with unsafe modes allowed and a generated admin token, so that the benchmark
switches modes with `PUT /mode` instead of restarting. A PostgreSQL store is
a fresh database created for the run, migrated with `python -m service db
upgrade`, and dropped afterwards; an SQLite store is a file in a temporary
directory, which `serve` migrates itself. Nothing here imports `service`.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from loadtest.service_process import ServiceProcess, service_environment

UPGRADE_DEADLINE_SECONDS = 120
LOCK_TIMEOUT_MS = 5000  # the service's default bound on every lock wait, stated explicitly


class EchoProcess(ServiceProcess):
    """`python -m loadtest.echo_app` on a free loopback port, same gunicorn settings."""

    def start(self) -> EchoProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        command = [
            sys.executable, "-m", "loadtest.echo_app", "--bind", self.settings["BANK_BIND"],
            "--workers", self.settings["BANK_WORKERS"], "--threads", self.settings["BANK_THREADS"],
        ]  # fmt: skip
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command,
                cwd=self.workdir,
                env=service_environment({}),
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

    def ready_workers(self) -> int:
        if not self.log_path.exists():
            return 0
        return self.log_path.read_text(errors="replace").count("echo: worker ")


def gunicorn_settings(workers: int, threads: int) -> dict[str, str]:
    return {"BANK_WORKERS": str(workers), "BANK_THREADS": str(threads)}


def service_settings(
    database_url: str, workers: int, threads: int, race_window_ms: int, admin_token: str
) -> dict[str, str]:
    return {
        **gunicorn_settings(workers, threads),
        "BANK_DATABASE_URL": database_url,
        "BANK_LOCK_MODE": "locked",
        "BANK_RACE_WINDOW_MS": str(race_window_ms),
        "BANK_ALLOW_UNSAFE_MODES": "1",
        "BANK_ADMIN_TOKEN": admin_token,
        "BANK_LOCK_TIMEOUT_MS": str(LOCK_TIMEOUT_MS),
    }


def new_admin_token() -> str:
    return secrets.token_urlsafe(24)


def hide_password(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


@contextmanager
def sqlite_database(workdir: Path) -> Iterator[str]:
    yield f"sqlite:///{workdir / 'bench.db'}"


@contextmanager
def postgres_database(server_url: str, workdir: Path) -> Iterator[str]:
    """A fresh, migrated database on the server at `server_url`; dropped afterwards."""
    base = make_url(server_url)
    name = f"bankrace_bench_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        url = base.set(database=name).render_as_string(hide_password=False)
        try:
            migrate(url, workdir)
            yield url
        finally:
            with admin.connect() as connection:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


def migrate(database_url: str, workdir: Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "service", "db", "upgrade"],
        cwd=workdir,
        env=service_environment({"BANK_DATABASE_URL": database_url}),
        capture_output=True,
        text=True,
        timeout=UPGRADE_DEADLINE_SECONDS,
        check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"bankrace db upgrade failed: {completed.stderr[-1000:]}")
