"""Run the project's nginx load balancer on loopback for tests.

The http-context configuration is deploy/nginx/bankrace.conf.template, the very file
docker-compose.yml mounts into the nginx image. It is rendered here the way the image renders
it (envsubst of the given variables only, so nginx's own `$variables` survive) and wrapped in a
minimal main configuration that keeps pid, logs and temp files in the test's directory. nginx
runs in the foreground as its own process group and is stopped by its PID.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from loadtest.service_process import free_port, stop_process_group
from tests.support.postgres import missing

PROJECT_ROOT = Path(__file__).resolve().parents[2]
NGINX_TEMPLATE_PATH = PROJECT_ROOT / "deploy" / "nginx" / "bankrace.conf.template"
TEMPLATE_VARIABLES = ("BALANCER_LISTEN_PORT", "BALANCER_UPSTREAM_SERVERS")
STARTUP_DEADLINE_SECONDS = 10.0
STOP_DEADLINE_SECONDS = 10.0
POLL_INTERVAL_SECONDS = 0.05

MAIN_CONFIGURATION = """\
# Test-only main configuration: what the nginx image's own nginx.conf provides in compose.
{user_line}
worker_processes 2;
pid {directory}/nginx.pid;
error_log {directory}/error.log info;

events {{
    worker_connections 1024;
}}

http {{
    client_body_temp_path {directory}/client_body;
    proxy_temp_path {directory}/proxy;
    fastcgi_temp_path {directory}/fastcgi;
    uwsgi_temp_path {directory}/uwsgi;
    scgi_temp_path {directory}/scgi;
    include {directory}/bankrace.conf;
}}
"""


def placeholders(template: str) -> set[str]:
    """The environment-style placeholders ($NAME or ${NAME}, upper case) a template uses."""
    return set(re.findall(r"\$\{?([A-Z][A-Z0-9_]*)\}?", template))


def render(template: str, values: Mapping[str, str]) -> str:
    """envsubst restricted to `values`, as the nginx image's 20-envsubst-on-templates.sh does."""
    rendered = template
    for name, value in values.items():
        rendered = re.sub(
            r"\$(?:\{" + re.escape(name) + r"\}|" + re.escape(name) + r"(?![A-Za-z0-9_]))",
            lambda _match, value=value: value,
            rendered,
        )
    return rendered


def loopback_values(listen_port: int, upstream_servers: Sequence[str]) -> dict[str, str]:
    """Template values for replicas given as `server ...;` parameters, e.g. '127.0.0.1:8001'."""
    return {
        "BALANCER_LISTEN_PORT": f"127.0.0.1:{listen_port}",
        "BALANCER_UPSTREAM_SERVERS": " ".join(f"server {server};" for server in upstream_servers),
    }


def nginx_executable() -> str | None:
    return shutil.which("nginx") or next(
        (path for path in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(path, os.X_OK)),
        None,
    )


def require_nginx() -> str:
    """nginx's path; skips without it, except under CI where a missing nginx is a failure."""
    executable = nginx_executable()
    if executable is None:
        missing("nginx is not installed (apt-get install -y nginx)")
        raise AssertionError("unreachable: missing() skips or fails")
    return executable


@dataclass
class Balancer:
    """One nginx master (foreground) running the project's template on a loopback port."""

    workdir: Path
    upstream_servers: Sequence[str]
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def directory(self) -> Path:
        return self.workdir / f"nginx-{self.port}"

    def write_configuration(self) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        template = NGINX_TEMPLATE_PATH.read_text()
        values = loopback_values(self.port, self.upstream_servers)
        (self.directory / "bankrace.conf").write_text(render(template, values))
        # As root, nginx would run its workers as `nobody`, who cannot enter pytest's 0700 tmp.
        user_line = "user root;" if os.geteuid() == 0 else ""
        main = MAIN_CONFIGURATION.format(directory=self.directory, user_line=user_line)
        main_path = self.directory / "nginx.conf"
        main_path.write_text(main)
        return main_path

    def command(self, executable: str, main_path: Path) -> list[str]:
        return [
            executable,
            "-p",
            str(self.directory),
            "-e",
            str(self.directory / "error.log"),
            "-c",
            str(main_path),
            "-g",
            "daemon off;",
        ]

    def check(self) -> None:
        """`nginx -t` on the rendered configuration: raises with nginx's words when invalid."""
        executable = require_nginx()
        main_path = self.write_configuration()
        command = self.command(executable, main_path)
        result = subprocess.run([*command, "-t"], capture_output=True, text=True, timeout=30)
        if result.returncode != 0:
            raise RuntimeError(f"nginx -t failed:\n{result.stderr}")

    def start(self) -> Balancer:
        executable = require_nginx()
        main_path = self.write_configuration()
        with (self.directory / "stdout.log").open("ab") as log:
            self.process = subprocess.Popen(
                self.command(executable, main_path),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.wait_until_listening()
        return self

    def wait_until_listening(self) -> None:
        deadline = time.monotonic() + STARTUP_DEADLINE_SECONDS
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"nginx exited early:\n{self.read_logs()}")
            # A bare TCP connect: an HTTP probe would reach (and disturb) the upstreams.
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                pass
            time.sleep(POLL_INTERVAL_SECONDS)  # polling interval, not synchronisation
        self.stop()
        raise RuntimeError(f"nginx not listening within {STARTUP_DEADLINE_SECONDS}s")

    def read_logs(self) -> str:
        parts = []
        for name in ("stdout.log", "error.log"):
            path = self.directory / name
            if path.exists():
                parts.append(f"--- {name}\n{path.read_text(errors='replace')}")
        return "\n".join(parts)

    def stop(self) -> None:
        """SIGQUIT (nginx's graceful shutdown) to its group; SIGKILL if it hangs."""
        if self.process is not None:
            stop_process_group(self.process, signal.SIGQUIT, STOP_DEADLINE_SECONDS)

    def __enter__(self) -> Balancer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
