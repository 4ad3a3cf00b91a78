"""Every component a test may lack goes through one rule: a skip here, a failure under CI.

For each component the test takes it away (an unset or dead address, a
missing executable, no root), then asks for it the way the tests that need
it do: with CI=1, true or yes (any case) that is a failure, with CI unset,
empty, 0, false or no a skip naming what is missing.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.deploy import balancer
from tests.support import browser, filesystems, packet_loss, postgres, redis_service
from tests.support.components import require_executable

Demand = Callable[[], object]
FAILING_CI_VALUES = ["1", "true", "yes", "TRUE", "Yes"]
SKIPPING_CI_VALUES = [None, "", "0", "false", "no"]


def closed_port() -> int:
    """A loopback port nothing listens on (a connection is refused at once)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def without_postgres_variable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Demand:
    monkeypatch.delenv(postgres.POSTGRES_URL_VARIABLE, raising=False)
    return postgres.server_url


def with_postgres_unreachable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Demand:
    url = f"postgresql+psycopg://postgres@127.0.0.1:{closed_port()}/test"
    monkeypatch.setenv(postgres.POSTGRES_URL_VARIABLE, url)

    def demand() -> None:
        with postgres.fresh_database():
            pytest.fail("a database was made on a server that does not exist")

    return demand


def with_redis_unreachable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Demand:
    monkeypatch.setenv(redis_service.REDIS_URL_VARIABLE, f"redis://127.0.0.1:{closed_port()}/0")
    return redis_service.redis_url


def without_chromium(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Demand:
    monkeypatch.setattr(browser, "CHROMIUM", tmp_path / "chromium")
    return lambda: browser.launch_chromium(playwright=None)


def without_nginx(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Demand:
    monkeypatch.setattr(balancer, "nginx_executable", lambda: None)
    return balancer.require_nginx


def without_wrk(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Demand:
    monkeypatch.setenv("PATH", str(tmp_path))
    return lambda: require_executable("wrk", "apt-get install wrk")


def without_iptables(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Demand:
    monkeypatch.setenv("PATH", str(tmp_path))

    def demand() -> None:
        with packet_loss.dropped_packets(closed_port()):
            pytest.fail("packets were dropped without iptables")

    return demand


def without_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Demand:
    monkeypatch.setattr(filesystems.os, "geteuid", lambda: 1000)

    def demand() -> None:
        with filesystems.small_file_system(tmp_path, size_mebibytes=4):
            pytest.fail("a file system was mounted without root")

    return demand


# component -> (take it away and return how a test asks for it, what the reason says)
COMPONENTS: dict[str, tuple[Callable[[pytest.MonkeyPatch, Path], Demand], str]] = {
    "postgresql-unset": (without_postgres_variable, "BANK_TEST_POSTGRES_URL is not set"),
    "postgresql-unreachable": (with_postgres_unreachable, "PostgreSQL at .* unusable"),
    "redis": (with_redis_unreachable, "Redis at .* unusable"),
    "chromium": (without_chromium, "chromium is missing"),
    "nginx": (without_nginx, "nginx is not installed"),
    "wrk": (without_wrk, "wrk is not installed"),
    "iptables": (without_iptables, "needs the iptables command"),
    "mount": (without_root, "needs root"),
}


def outcome_of(demand: Demand) -> BaseException:
    """The skip or failure `demand` ended in, caught here so that a wrong skip fails this test."""
    try:
        demand()
    except (pytest.fail.Exception, pytest.skip.Exception) as outcome:
        return outcome
    raise AssertionError("the missing component was neither a skip nor a failure")


def set_ci(monkeypatch: pytest.MonkeyPatch, value: str | None) -> None:
    if value is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", value)


@pytest.mark.parametrize("ci", FAILING_CI_VALUES)
@pytest.mark.parametrize("component", COMPONENTS)
def test_a_missing_component_fails_under_ci(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, component: str, ci: str
) -> None:
    """Under CI a missing component fails the test, naming what is missing."""
    take_away, reason = COMPONENTS[component]
    demand = take_away(monkeypatch, tmp_path)
    set_ci(monkeypatch, ci)
    outcome = outcome_of(demand)
    assert isinstance(outcome, pytest.fail.Exception), (
        f"CI={ci}: {type(outcome).__name__} {outcome}"
    )
    assert re.search(reason, str(outcome)), outcome


@pytest.mark.parametrize("ci", SKIPPING_CI_VALUES)
@pytest.mark.parametrize("component", COMPONENTS)
def test_a_missing_component_skips_outside_ci(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, component: str, ci: str | None
) -> None:
    """Outside CI the same gap is a skip with the same reason."""
    take_away, reason = COMPONENTS[component]
    demand = take_away(monkeypatch, tmp_path)
    set_ci(monkeypatch, ci)
    outcome = outcome_of(demand)
    assert isinstance(outcome, pytest.skip.Exception), (
        f"CI={ci}: {type(outcome).__name__} {outcome}"
    )
    assert re.search(reason, str(outcome)), outcome
