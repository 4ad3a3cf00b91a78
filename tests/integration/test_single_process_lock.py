"""The one-process guards: one lock per gunicorn master, released when its holder dies.

`refuse_a_second_worker` refuses a second holder; `wait_for_the_previous_worker`
makes a new lone worker wait for the previous one (a HUP reload) to exit.

Child processes of this test play the workers of one master (the test
process is their parent, as a gunicorn master is its workers' parent).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import IO

import pytest

from service import single_process
from service.single_process import refuse_a_second_worker

CLAIM = (
    "import sys\n"
    "from service.single_process import refuse_a_second_worker\n"
    "try:\n"
    "    refuse_a_second_worker('test')\n"
    "except Exception as error:\n"
    "    print(error, flush=True)\n"
    "    sys.exit(4)\n"
    "print('held', flush=True)\n"
    "sys.stdin.read()  # hold the lock until the test closes stdin\n"
)
HANDOVER = (
    "import sys\n"
    "from service.single_process import wait_for_the_previous_worker\n"
    "print(wait_for_the_previous_worker(float(sys.argv[1])), flush=True)\n"
    "sys.stdin.read()  # hold the lock until the test closes stdin\n"
)
UNDER_GUNICORN = {"SERVER_SOFTWARE": "gunicorn/27.0.1"}


def worker(
    tmp_path: Path, script: str = CLAIM, arguments: tuple[str, ...] = (), **settings: str
) -> subprocess.Popen[str]:
    """A child of this process that claims the store (its lock file under tmp_path)."""
    environment = {key: value for key, value in os.environ.items() if key != "SERVER_SOFTWARE"}
    return subprocess.Popen(
        [sys.executable, "-c", script, *arguments],
        env={**environment, "TMPDIR": str(tmp_path), **settings},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def first_line(process: subprocess.Popen[str]) -> str:
    assert process.stdout is not None
    return process.stdout.readline().strip()


def release(process: subprocess.Popen[str]) -> None:
    """Let the worker end (closing its stdin), then close our ends of its pipes."""
    with process:
        if process.stdin is not None:
            process.stdin.close()
        process.wait(timeout=30)


def test_a_second_worker_is_refused_until_the_first_is_gone(tmp_path: Path) -> None:
    """While one worker holds the store, a second is refused; once it died, a new one boots."""
    first = worker(tmp_path, **UNDER_GUNICORN)
    try:
        assert first_line(first) == "held"
        second = worker(tmp_path, **UNDER_GUNICORN)
        refusal = first_line(second)
        release(second)
        assert second.returncode == 4
        assert f"gunicorn (master pid {os.getpid()}) started a second worker" in refusal
        assert "\n" not in refusal
    finally:
        release(first)
    restarted = worker(tmp_path, **UNDER_GUNICORN)  # the kernel released the dead holder's lock
    try:
        assert first_line(restarted) == "held"
    finally:
        release(restarted)


def test_a_new_lone_worker_waits_until_the_previous_one_is_gone(tmp_path: Path) -> None:
    """While a worker holds the handover lock the next waits (None at its timeout), then gets it."""
    first = worker(tmp_path, HANDOVER, ("5",), **UNDER_GUNICORN)
    try:
        assert first_line(first) == "0.0"  # nobody before it: no wait
        impatient = worker(tmp_path, HANDOVER, ("0.3",), **UNDER_GUNICORN)
        assert first_line(impatient) == "None"
        release(impatient)
        successor = worker(tmp_path, HANDOVER, ("30",), **UNDER_GUNICORN)
    finally:
        release(first)
    try:
        waited = first_line(successor)
        assert waited != "None" and 0 <= float(waited) < 30
    finally:
        release(successor)


def test_outside_gunicorn_nothing_is_locked(tmp_path: Path) -> None:
    """Without gunicorn's SERVER_SOFTWARE, two processes may each build a store."""
    first, second = worker(tmp_path), worker(tmp_path)
    try:
        assert (first_line(first), first_line(second)) == ("held", "held")
    finally:
        release(first)
        release(second)


def test_the_same_process_may_build_the_store_again(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A worker that re-creates its app keeps its lock instead of refusing itself."""
    held: dict[tuple[int, str], IO[bytes]] = {}
    monkeypatch.setattr(single_process, "_held", held)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setenv("SERVER_SOFTWARE", "gunicorn/27.0.1")
    try:
        refuse_a_second_worker("same-process-test")
        refuse_a_second_worker("same-process-test")
        assert list(held) == [(os.getpid(), "same-process-test")]
    finally:
        for lock_file in held.values():
            lock_file.close()
