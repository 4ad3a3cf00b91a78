"""The `bankrace` command: configuration errors, the in-memory guard, db subcommands, serve."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from loadtest.service_process import free_port
from service.config import redacted_url
from tests.support.load import Call, audit_of, balance_of, fire, open_account
from tests.support.packet_loss import dropped_packets
from tests.support.servers import ServerProcess, clean_environment

pytestmark = pytest.mark.e2e

PASSWORD = "hunter2-Secret"


def bankrace(tmp_path: Path, *arguments: str, **settings: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service", *arguments],
        cwd=tmp_path,
        env=clean_environment(settings),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("BANK_LOCK_MODE", "sloppy"),
        ("BANK_RACE_WINDOW_MS", "5001"),
        ("BANK_RACE_WINDOW_MS", "-1"),
        ("BANK_LOCK_TIMEOUT_MS", "soon"),
        ("BANK_WORKERS", "0"),
        ("BANK_THREADS", "1.5"),
        ("BANK_BIND", "nowhere"),
        ("BANK_ALLOW_UNSAFE_MODES", "maybe"),
        ("BANK_TRANSFER_LOCK_ORDER", "random"),
        ("BANK_DATABASE_URL", "bank.db"),
        ("BANK_ADMIN_TOKEN", "short"),
    ],
)
def test_bad_setting_stops_start_up_with_one_line_naming_it(
    tmp_path: Path, variable: str, value: str
) -> None:
    """A bad value stops `serve` before anything starts, with one line naming the variable."""
    result = bankrace(tmp_path, "serve", **{variable: value})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and variable in lines[0], result.stderr
    assert not (tmp_path / "var").exists()


def test_unsafe_mode_needs_the_explicit_allowance(tmp_path: Path) -> None:
    """BANK_LOCK_MODE=unlocked without BANK_ALLOW_UNSAFE_MODES=1 is refused at start-up."""
    result = bankrace(tmp_path, "serve", BANK_LOCK_MODE="unlocked")
    assert result.returncode == 2 and "BANK_ALLOW_UNSAFE_MODES" in result.stderr


def test_memory_store_refuses_several_workers(tmp_path: Path) -> None:
    """The in-memory store lives in one process, so two workers are refused clearly."""
    result = bankrace(tmp_path, "serve", BANK_DATABASE_URL="memory://", BANK_WORKERS="2")
    assert result.returncode == 2
    assert "in-memory store lives in one process" in result.stderr


def test_db_upgrade_then_current(tmp_path: Path) -> None:
    """`db current` fails before `db upgrade` and succeeds after it."""
    url = f"sqlite:///{tmp_path / 'bank.db'}"
    before = bankrace(tmp_path, "db", "current", BANK_DATABASE_URL=url)
    assert before.returncode == 1 and "not migrated" in before.stderr
    assert bankrace(tmp_path, "db", "upgrade", BANK_DATABASE_URL=url).returncode == 0
    after = bankrace(tmp_path, "db", "current", BANK_DATABASE_URL=url)
    assert after.returncode == 0 and "head" in after.stdout


def test_config_prints_settings_and_hides_the_token(tmp_path: Path) -> None:
    """`bankrace config` shows the effective settings without revealing the admin token."""
    result = bankrace(tmp_path, "config", BANK_ADMIN_TOKEN="very-secret-token")
    assert result.returncode == 0
    assert "database_url: sqlite:///var/bank.db" in result.stdout
    assert "very-secret-token" not in result.stdout


def test_config_hides_the_database_password(tmp_path: Path) -> None:
    """`bankrace config` shows the database URL with its password masked, wherever it sits."""
    result = bankrace(
        tmp_path,
        "config",
        BANK_DATABASE_URL=f"postgresql://bank:{PASSWORD}@db:5433/bank?sslmode=require",
    )
    assert result.returncode == 0, result.stderr
    assert "database_url: postgresql+psycopg://bank:***@db:5433/bank?sslmode=require" in (
        result.stdout
    )
    assert PASSWORD not in result.stdout + result.stderr
    query = bankrace(
        tmp_path, "config", BANK_DATABASE_URL=f"postgresql://bank@db/bank?password={PASSWORD}"
    )
    assert query.returncode == 0 and PASSWORD not in query.stdout + query.stderr


def unreachable_postgresql() -> str:
    """A PostgreSQL URL with a password, on a loopback port nobody listens on."""
    return f"postgresql+psycopg://postgres:{PASSWORD}@127.0.0.1:{free_port()}/bank"


def unwritable_sqlite(tmp_path: Path) -> str:
    """An SQLite file under a regular file: no one, not even root, can create it."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the database folder should be")
    return f"sqlite:///{blocker / 'bank.db'}"


@pytest.mark.parametrize("command", [["serve"], ["db", "upgrade"], ["db", "current"]])
@pytest.mark.parametrize(
    ("where", "reasons"),
    [
        (lambda _: unreachable_postgresql(), ("connection refused",)),
        (unwritable_sqlite, ("not a folder", "not a directory", "unable to open")),
    ],
    ids=["postgresql-unreachable", "sqlite-unwritable"],
)
def test_a_database_that_cannot_be_used_is_one_line_without_traceback(
    tmp_path: Path, command: list[str], where: Callable[[Path], str], reasons: tuple[str, ...]
) -> None:
    """serve, db upgrade and db current fail with one line naming the database and the cause."""
    url = where(tmp_path)
    result = bankrace(tmp_path, *command, BANK_DATABASE_URL=url)
    output = result.stdout + result.stderr
    print(f"{' '.join(command)}: exit {result.returncode}: {result.stderr.strip()}")
    assert result.returncode == 1
    assert "Traceback" not in output and PASSWORD not in output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("bankrace: ")
    shown = f" {redacted_url(url)}: "
    assert shown in lines[0], lines[0]
    assert any(reason in lines[0].split(shown, 1)[1].lower() for reason in reasons), lines[0]


def test_db_upgrade_gives_up_on_a_silent_postgresql_host(tmp_path: Path) -> None:
    """`db upgrade` against a host that drops packets fails on the connect timeout, in one line.

    Without the 5 s connect timeout (migrations/env.py) the kernel retries the SYN for
    about two minutes, so the command outlives `bankrace`'s 60 s subprocess bound.
    """
    port = free_port()
    url = f"postgresql+psycopg://postgres:{PASSWORD}@127.0.0.1:{port}/bank"
    with dropped_packets(port):
        result = bankrace(tmp_path, "db", "upgrade", BANK_DATABASE_URL=url)
    print(f"db upgrade: exit {result.returncode}: {result.stderr.strip()}")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stdout + result.stderr, result.stderr
    assert lines[0].startswith(f"bankrace: cannot migrate the database at {redacted_url(url)}: ")
    assert "timeout expired" in lines[0] and PASSWORD not in lines[0]


def test_serve_creates_the_default_sqlite_database(tmp_path: Path) -> None:
    """With no settings at all, serve migrates var/bank.db under the working directory."""
    server = ServerProcess(workdir=tmp_path).start()
    try:
        account = open_account(server.url, 7)
        assert balance_of(server.url, account) == 7
    finally:
        server.stop()
    assert (tmp_path / "var" / "bank.db").exists()


@pytest.mark.parametrize(("mode", "loses"), [("locked", False), ("unlocked", True)])
def test_memory_store_under_one_worker(tmp_path: Path, mode: str, loses: bool) -> None:
    """The in-memory store with 8 threads: locked loses nothing, unlocked loses updates."""
    server = ServerProcess(
        workdir=tmp_path,
        settings={
            "BANK_DATABASE_URL": "memory://",
            "BANK_WORKERS": "1",
            "BANK_LOCK_MODE": mode,
            "BANK_ALLOW_UNSAFE_MODES": "1",
            "BANK_RACE_WINDOW_MS": "10",
        },
    ).start()
    try:
        account = open_account(server.url, 0)
        outcome = fire(
            server.url, [Call("POST", f"/accounts/{account}/deposit", {"amount": 1})] * 80
        )
        lost = outcome.acknowledged_count - balance_of(server.url, account)
        consistent = audit_of(server.url)["consistent"]
    finally:
        server.stop()
    print(f"memory, 1x8, {mode}, window 10 ms: lost {lost} of {outcome.acknowledged_count}")
    assert outcome.acknowledged_count == 80
    assert (lost > 0) is loses and consistent is (not loses)
