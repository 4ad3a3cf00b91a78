"""The composed stack, driven from the tests: docker compose commands, waits and a bounded load.

A project of its own name (COMPOSE_PROJECT_NAME), so that a user's `bankrace` project, its
containers and volumes are never touched; every published port is on 127.0.0.1. The load
is a few client threads depositing 1 through a published port, bounded in count and time,
recording each answer so that a test can check what was acknowledged against the books.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import requests

from tests.deploy.project import PROJECT_ROOT

PROJECT_NAME = "bankrace-compose-test"
ADMIN_TOKEN = "change-me-please"  # the README's compose blocks use this one
# Profiles whose images this machine can build or pull (observe: see observe_images_missing).
BUILDABLE_PROFILES = ("postgres", "scale", "redis", "loadtest")
OBSERVE_IMAGES = ("prom/prometheus:v3.1.0", "grafana/grafana:11.4.0")
COMMAND_TIMEOUT_SECONDS = 600.0  # a first build on a slow machine
WAIT_TIMEOUT_SECONDS = 180  # `up --wait`: every service healthy by then
REQUEST_TIMEOUT_SECONDS = 15.0  # above the service's lock wait (5 s) plus a race window
POLL_INTERVAL_SECONDS = 0.2
# The environment docker compose sees: this machine's docker settings, the test's own BANK_*
# (a user's BANK_LOCK_MODE, say, must not change what the stack runs).
PASSED_THROUGH = ("PATH", "HOME", "DOCKER_HOST", "DOCKER_CONFIG", "DOCKER_BUILDKIT", "TMPDIR")


def engine_problem() -> str | None:
    """Why no Docker engine with Compose v2 can be used here, or None when one can."""
    if shutil.which("docker") is None:
        return "no docker command (deploy/offline/compose-tests.sh installs and starts one)"
    for command in (["docker", "info"], ["docker", "compose", "version"]):
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=30)
        except subprocess.TimeoutExpired:
            return f"`{' '.join(command)}` did not answer in 30 s"
        if result.returncode != 0:
            last_line = (result.stderr.strip().splitlines() or ["no output"])[-1]
            return f"`{' '.join(command)}` failed: {last_line}"
    return None


def compose_environment(**settings: str) -> dict[str, str]:
    environment = {name: os.environ[name] for name in PASSED_THROUGH if name in os.environ}
    environment.update(
        COMPOSE_PROJECT_NAME=PROJECT_NAME,
        # One build at a time: in parallel compose builds the one image once per service.
        COMPOSE_PARALLEL_LIMIT="1",
        BANK_ADMIN_TOKEN=ADMIN_TOKEN,
        BANK_ALLOW_UNSAFE_MODES="1",
        **settings,
    )
    return environment


def compose(
    *arguments: str, profiles: Sequence[str] = (), check: bool = True, timeout: float | None = None
) -> subprocess.CompletedProcess[str]:
    """`docker compose [--profile P]... ARGUMENTS` in the repository, output captured."""
    command = ["docker", "compose"]
    for profile in profiles:
        command += ["--profile", profile]
    result = subprocess.run(
        [*command, *arguments],
        cwd=PROJECT_ROOT,
        env=compose_environment(),
        capture_output=True,
        text=True,
        timeout=timeout or COMMAND_TIMEOUT_SECONDS,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(command + list(arguments))}: {result.returncode}\n"
                             f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")  # fmt: skip
    return result


def up_wait(profiles: Sequence[str] = ()) -> float:
    """`up --wait` (detached, every service healthy or exited 0); seconds it took."""
    started = time.monotonic()
    compose("up", "--wait", "--wait-timeout", str(WAIT_TIMEOUT_SECONDS), profiles=profiles)
    return time.monotonic() - started


def down(profiles: Sequence[str] = (), *, volumes: bool) -> None:
    arguments = ["down", "--remove-orphans", "--timeout", "10"]
    compose(*arguments, *(["--volumes"] if volumes else []), profiles=profiles)


def containers(profiles: Sequence[str] = ()) -> list[dict[str, Any]]:
    """`docker compose ps --all` as dicts (Service, State, Health, ExitCode, ...)."""
    output = compose("ps", "--all", "--format", "json", profiles=profiles).stdout
    rows = [json.loads(line) for line in output.splitlines() if line.strip()]
    return [row for item in rows for row in (item if isinstance(item, list) else [item])]


def container_id(service: str) -> str:
    return compose("ps", "--quiet", service).stdout.strip()


def inspect(container: str) -> dict[str, Any]:
    output = subprocess.run(
        ["docker", "inspect", container], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    document: list[dict[str, Any]] = json.loads(output)
    return document[0]


def leftovers() -> dict[str, list[str]]:
    """Containers, networks and volumes of the test project still on the engine."""
    label = f"label=com.docker.compose.project={PROJECT_NAME}"
    found = {}
    for kind, command in {
        "containers": ["docker", "ps", "--all", "--quiet", "--filter", label],
        "networks": ["docker", "network", "ls", "--quiet", "--filter", label],
        "volumes": ["docker", "volume", "ls", "--quiet", "--filter", label],
    }.items():
        output = subprocess.run(command, capture_output=True, text=True, timeout=30).stdout
        found[kind] = output.split()
    return found


def observe_images_missing() -> list[str]:
    missing = []
    for image in OBSERVE_IMAGES:
        result = subprocess.run(
            ["docker", "image", "inspect", image], capture_output=True, timeout=30
        )
        if result.returncode != 0:
            missing.append(image)
    return missing


# Run inside an api container: each gunicorn worker's CPU seconds (utime + stime). A worker is a
# process forked by the `bankrace serve` master: the master's command line, the master its parent.
WORKER_CPU_SCRIPT = """
import json, os
ticks = os.sysconf("SC_CLK_TCK")
processes = {}
for entry in os.listdir("/proc"):
    if not entry.isdigit():
        continue
    try:
        with open(f"/proc/{entry}/cmdline", "rb") as file:
            command = file.read()
        with open(f"/proc/{entry}/stat") as file:
            fields = file.read().rsplit(")", 1)[1].split()
    except OSError:
        continue
    processes[int(entry)] = (command, int(fields[1]), (int(fields[11]) + int(fields[12])) / ticks)
print(json.dumps({
    pid: cpu
    for pid, (command, parent, cpu) in processes.items()
    if b"serve" in command and parent in processes and processes[parent][0] == command
}))
"""


def worker_cpu_seconds(service: str) -> dict[str, float]:
    """Each gunicorn worker's CPU seconds in the service's container, by pid."""
    result = subprocess.run(
        ["docker", "exec", container_id(service), "python", "-c", WORKER_CPU_SCRIPT],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    workers: dict[str, float] = json.loads(result.stdout)
    return workers


def wait_until(predicate: Any, deadline_seconds: float, what: str) -> None:
    deadline = time.monotonic() + deadline_seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {deadline_seconds} s: {what}")
        time.sleep(POLL_INTERVAL_SECONDS)


# ---------------------------------------------------------------------------------- load


@dataclass(frozen=True)
class Answer:
    status: int  # 0: no answer (connection error or timeout)
    sent_at: float  # time.monotonic() when sent
    transaction_id: int | None = None
    code: str | None = None
    retry_after: str | None = None


@dataclass
class DepositLoad:
    """Client threads depositing 1 into one account through `base_url`, until stopped."""

    base_url: str
    account_id: int
    threads: int = 6
    max_requests: int = 6000
    answers: list[Answer] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _run(self) -> None:
        session = requests.Session()
        url = f"{self.base_url}/accounts/{self.account_id}/deposit"
        while not self._stop.is_set():
            with self._lock:
                if len(self.answers) >= self.max_requests:
                    return
            sent_at = time.monotonic()
            try:
                response = session.post(url, json={"amount": 1}, timeout=REQUEST_TIMEOUT_SECONDS)
            except requests.RequestException:
                answer = Answer(0, sent_at)
            else:
                try:
                    body = response.json()
                except ValueError:  # not JSON: counted by its status, which a test judges
                    body = {}
                answer = Answer(
                    response.status_code,
                    sent_at,
                    body.get("id") if response.status_code == 201 else None,
                    body.get("code"),
                    response.headers.get("Retry-After"),
                )
            with self._lock:
                self.answers.append(answer)

    @contextmanager
    def running(self) -> Iterator[DepositLoad]:
        workers = [threading.Thread(target=self._run, daemon=True) for _ in range(self.threads)]
        for worker in workers:
            worker.start()
        try:
            yield self
        finally:
            self._stop.set()
            for worker in workers:
                worker.join(REQUEST_TIMEOUT_SECONDS + 5)

    def count(self) -> int:
        with self._lock:
            return len(self.answers)

    def acknowledged(self) -> list[Answer]:
        return [answer for answer in self.answers if answer.status == 201]


def wait_for_answers(load: DepositLoad, more: int, deadline_seconds: float) -> None:
    """Until `more` further answers arrived (the load is really running), bounded."""
    target = load.count() + more
    wait_until(lambda: load.count() >= target, deadline_seconds, f"{more} more answers")
