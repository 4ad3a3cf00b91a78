"""deploy/healthcheck.py, the image's HEALTHCHECK, run the way Docker runs it.

A subprocess with BANK_BIND in its environment, against a stub that answers /healthz with a
chosen status: healthy only on 200, unhealthy on any other answer or no answer at all. (The
scale-out test also runs it against real replicas.)
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import ModuleType

import pytest

from tests.deploy.project import PROJECT_ROOT
from tests.support.servers import clean_environment, free_port

PROBE_PATH = PROJECT_ROOT / "deploy" / "healthcheck.py"
PROBE_RUN_TIMEOUT_SECONDS = 30


def load_probe() -> ModuleType:
    spec = importlib.util.spec_from_file_location("healthcheck", PROBE_PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def stub(request: pytest.FixtureRequest) -> Iterator[tuple[int, list[str]]]:
    """A server answering every GET with the parametrized status; yields (port, paths seen)."""
    status: int = request.param
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.path)
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield int(server.server_address[1]), seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def run_probe(bind: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(PROBE_PATH)],
        env=clean_environment({"BANK_BIND": bind}),
        capture_output=True,
        text=True,
        timeout=PROBE_RUN_TIMEOUT_SECONDS,
    )


@pytest.mark.parametrize(
    ("bind", "url"),
    [
        ("0.0.0.0:8000", "http://127.0.0.1:8000/healthz"),
        ("[::]:8000", "http://127.0.0.1:8000/healthz"),
        ("127.0.0.1:9001", "http://127.0.0.1:9001/healthz"),
        ("api-1:8000", "http://api-1:8000/healthz"),
    ],
)
def test_probe_targets_the_bound_port(bind: str, url: str) -> None:
    """A wildcard bind is probed on loopback; a named host as named."""
    assert load_probe().health_url(bind) == url


def test_probe_refuses_an_address_it_cannot_probe() -> None:
    """A unix-socket bind has no port: unhealthy with a reason, not a traceback."""
    result = run_probe("unix:/run/bank.sock")
    assert result.returncode == 1
    assert "cannot probe" in result.stderr


@pytest.mark.parametrize("stub", [200], indirect=True)
def test_healthy_when_healthz_answers_200(stub: tuple[int, list[str]]) -> None:
    """Exit 0, having asked /healthz on the port BANK_BIND names."""
    port, seen = stub
    result = run_probe(f"0.0.0.0:{port}")
    assert result.returncode == 0, result.stderr
    assert seen == ["/healthz"]


@pytest.mark.parametrize("stub", [503, 500, 404], indirect=True)
def test_unhealthy_on_any_other_status(stub: tuple[int, list[str]]) -> None:
    """Exit 1 with the status in the reason."""
    port, seen = stub
    result = run_probe(f"0.0.0.0:{port}")
    assert result.returncode == 1
    assert "answered" in result.stderr
    assert seen == ["/healthz"]


def test_unhealthy_when_nothing_listens() -> None:
    """Exit 1 when the port is closed (the server is down)."""
    result = run_probe(f"127.0.0.1:{free_port()}")
    assert result.returncode == 1
    assert "unreachable" in result.stderr
