"""The Locust variant of the bank test, headless against a real server: exit 1 unlocked, 0 locked.

Locust runs only as a subprocess (tests/support/locust_runs.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import requests

from loadtest.jepsen_checker import check
from loadtest.jepsen_history import load
from tests.support.locust_runs import LOADTEST_DIRECTORY, run_headless
from tests.support.servers import ServerProcess

pytestmark = pytest.mark.e2e

LOCUSTFILE = LOADTEST_DIRECTORY / "jepsen_locustfile.py"
LOCUST_DEADLINE_SECONDS = 90


def run_locust(url: str, workdir: Path, name: str) -> tuple[int, str, Path]:
    """Locust headless for 3 s (6 transfer users, 3 readers); exit code, output, history."""
    history = workdir / f"{name}.json"
    run = run_headless(
        LOCUSTFILE,
        ["-u", "9", "-r", "9", "-t", "3s", "--host", url, "--jepsen-history", str(history)],
        workdir=workdir,
        deadline_seconds=LOCUST_DEADLINE_SECONDS,
    )
    assert history.exists(), f"no history written:\n{run.output[-3000:]}"
    return run.exit_code, run.output, history


def test_the_locust_scenario_catches_unlocked_and_passes_locked(tmp_path: Path) -> None:
    """Same server, same scenario: unlocked (20 ms) exits 1 with wrong totals; locked exits 0."""
    server = ServerProcess(
        workdir=tmp_path,
        settings={
            "BANK_DATABASE_URL": f"sqlite:///{tmp_path / 'bank.db'}",
            "BANK_LOCK_MODE": "unlocked",
            "BANK_RACE_WINDOW_MS": "20",
            "BANK_ALLOW_UNSAFE_MODES": "1",
            "BANK_WORKERS": "2",
            "BANK_THREADS": "4",
        },
    )
    with server:
        code, output, history = run_locust(server.url, tmp_path, "unlocked")
        print(output[output.find("jepsen bank:") :][:600])
        assert code == 1, output[-3000:]
        assert "jepsen bank: INVALID" in output
        assert "CHECK    snapshot check" in output  # wrong reads are Locust failures too
        unlocked = check(load(history))
        assert unlocked.wrong_totals > 0 and not unlocked.valid

        # Restarted rather than switched by PUT /mode: no worker may serve a
        # request of the locked run from a stale cache of the old mode.
        server.stop()
        server.settings["BANK_LOCK_MODE"] = "locked"
        server.start()
        assert requests.get(f"{server.url}/mode", timeout=10).json()["lock_mode"] == "locked"
        code, output, history = run_locust(server.url, tmp_path, "locked")
        print(output[output.find("jepsen bank:") :][:600])
        assert code == 0, output[-3000:]
        locked = check(load(history))
        assert locked.valid and locked.reads_checked > 0
        assert locked.outcomes["transfer"].get("ok", 0) > 0
        assert "jepsen bank: VALID" in output
