"""The in-memory store refuses several workers even under plain gunicorn, not only `bankrace serve`.

`gunicorn 'service:create_app()' -w 2` with BANK_DATABASE_URL=memory://
would give each worker its own bank: a deposit acknowledged by one worker
is missing from the other. The app itself refuses the second worker, and
gunicorn stops.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

from loadtest.service_process import free_port, stop_process_group
from tests.support.servers import clean_environment

pytestmark = pytest.mark.e2e

EXIT_DEADLINE_SECONDS = 30.0
READY_DEADLINE_SECONDS = 30.0
POLL_INTERVAL_SECONDS = 0.1
REFUSAL = "the in-memory store lives in one process"


@contextmanager
def plain_gunicorn(tmp_path: Path, workers: int) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """`gunicorn 'service:create_app()' -w N` on a free port, in its own process group."""
    port = free_port()
    log = (tmp_path / f"gunicorn-{port}.log").open("w+")
    command = [sys.executable, "-m", "gunicorn", "service:create_app()", "-w", str(workers)]
    command += ["-b", f"127.0.0.1:{port}", "--no-control-socket"]
    process = subprocess.Popen(
        command,
        cwd=tmp_path,
        env=clean_environment({"BANK_DATABASE_URL": "memory://", "TMPDIR": str(tmp_path)}),
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        yield process, port
    finally:
        stop_process_group(process, signal.SIGTERM)
        log.close()


def output_of(tmp_path: Path) -> str:
    return "".join(path.read_text() for path in tmp_path.glob("gunicorn-*.log"))


def test_two_workers_are_refused(tmp_path: Path) -> None:
    """-w 2 with the in-memory store: gunicorn stops with the one-line refusal, serving nothing."""
    with plain_gunicorn(tmp_path, workers=2) as (process, port):
        deadline = time.monotonic() + EXIT_DEADLINE_SECONDS
        while process.poll() is None:
            if time.monotonic() > deadline:
                pytest.fail(f"gunicorn -w 2 still running after {EXIT_DEADLINE_SECONDS} s")
            time.sleep(POLL_INTERVAL_SECONDS)  # polling interval under a deadline
        exit_code = process.returncode
        with pytest.raises(requests.ConnectionError):
            requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
    output = output_of(tmp_path)
    refusals = [line for line in output.splitlines() if REFUSAL in line]
    print(f"gunicorn -w 2 exited {exit_code}: {refusals[:1]}")
    assert exit_code != 0, output
    assert refusals, output
    assert "Traceback" not in output, output


def test_one_worker_serves(tmp_path: Path) -> None:
    """-w 1 with the in-memory store boots and serves."""
    with plain_gunicorn(tmp_path, workers=1) as (process, port):
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + READY_DEADLINE_SECONDS
        while True:
            assert process.poll() is None, output_of(tmp_path)
            assert time.monotonic() < deadline, f"not ready:\n{output_of(tmp_path)}"
            try:
                if requests.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except (requests.ConnectionError, requests.Timeout):  # still booting
                pass
            time.sleep(POLL_INTERVAL_SECONDS)  # polling interval under a deadline
        created = requests.post(
            f"{url}/accounts", json={"owner": "one", "opening_balance": 3}, timeout=10
        )
        assert created.status_code == 201, created.text
        account = created.json()["id"]
        assert requests.get(f"{url}/accounts/{account}", timeout=10).json()["balance"] == 3
