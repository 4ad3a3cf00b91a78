"""The image's lock files (requirements/*.txt) agree with pyproject.toml.

The Dockerfile installs only what requirements/ pins, hash-checked (`pip install
--require-hashes`); requirements/lock.sh makes those files from pyproject.toml with uv. A
dependency added to, removed from or narrowed in pyproject.toml without re-running lock.sh is
caught here, without a network: each direct requirement is pinned at a version it admits, and
every pin is there because pyproject (directly or through another pin) asks for it.
"""

from __future__ import annotations

import copy
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.deploy.project import PROJECT_ROOT

LOCK_DIRECTORY = PROJECT_ROOT / "requirements"
PROJECT_SOURCE = "bankrace (pyproject.toml)"  # uv's name for pyproject in `# via` lines
# service.txt is made with load.txt as constraints (one version of each package in both
# images), so uv names that file on every pin: a reason for the version, not for the pin.
CONSTRAINT_SOURCE = "-c requirements/load.txt"
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")
HASH = re.compile(r"--hash=sha256:([0-9a-f]{64})")
NOT_AT_RUN_TIME = re.compile(r"(locust|gevent|matplotlib|pytest|hypothesis|mypy|ruff|uv)\b")


@dataclass
class Pin:
    version: str
    hashes: set[str] = field(default_factory=set)
    via: set[str] = field(default_factory=set)


def read_lock(text: str) -> dict[str, Pin]:
    """name -> Pin, from uv's output: `name==version ; marker \\`, hash lines, `# via` lines."""
    pins: dict[str, Pin] = {}
    current: Pin | None = None
    in_via = False
    for line in text.splitlines():
        match = PIN.match(line)
        if match:
            current = pins[canonicalize_name(match.group(1))] = Pin(match.group(2))
            in_via = False
        if current is None:
            continue
        current.hashes.update(HASH.findall(line))
        comment = line.strip().removeprefix("#").strip()
        if not line.lstrip().startswith("#"):
            continue
        if comment.startswith("via"):
            in_via = True
            comment = comment.removeprefix("via").strip()
        if in_via and comment:
            current.via.add(comment)
    return pins


def lock(name: str) -> dict[str, Pin]:
    return read_lock((LOCK_DIRECTORY / name).read_text())


def pyproject() -> dict[str, Any]:
    document: dict[str, Any] = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())
    return document


def disagreements(requirements: list[str], pins: dict[str, Pin]) -> list[str]:
    """What keeps `pins` from being the lock of `requirements` (empty when it is).

    Each requirement is pinned at a version its specifier admits; each pin named as coming
    from pyproject is a requirement; every other pin is required by another pin.
    """
    problems = []
    direct = {canonicalize_name(Requirement(text).name): Requirement(text) for text in requirements}
    for name, requirement in direct.items():
        if name not in pins:
            problems.append(f"{requirement} is not in the lock")
        elif not requirement.specifier.contains(pins[name].version, prereleases=True):
            problems.append(f"{requirement} does not admit the locked {pins[name].version}")
    for name, pin in pins.items():
        via = pin.via - {CONSTRAINT_SOURCE}
        if PROJECT_SOURCE in via and name not in direct:
            problems.append(f"{name} is locked as a project dependency but pyproject has none")
        parents = {canonicalize_name(parent) for parent in via - {PROJECT_SOURCE}}
        if name not in direct and not parents & set(pins):
            problems.append(f"{name} is locked but nothing requires it (via {sorted(via)})")
    return problems


def service_requirements(project: dict[str, Any]) -> list[str]:
    return list(project["project"]["dependencies"])


def load_requirements(project: dict[str, Any]) -> list[str]:
    return [
        *project["project"]["dependencies"],
        *project["project"]["optional-dependencies"]["load"],
    ]


def test_service_lock_pins_exactly_pyprojects_dependencies() -> None:
    """service.txt (the service image) locks [project] dependencies and what they need."""
    assert disagreements(service_requirements(pyproject()), lock("service.txt")) == []


def test_load_lock_pins_the_dependencies_and_the_load_extra() -> None:
    """load.txt (the loadtest image) locks the dependencies plus the `load` extra (Locust)."""
    assert disagreements(load_requirements(pyproject()), lock("load.txt")) == []


def test_build_lock_pins_the_build_backend() -> None:
    """build.txt locks [build-system] requires, used by the image's editable install."""
    requires = pyproject()["build-system"]["requires"]
    assert disagreements(requires, lock("build.txt")) == []


@pytest.mark.parametrize("name", ["service.txt", "load.txt", "build.txt"])
def test_every_pin_is_exact_and_hash_checked(name: str) -> None:
    """Every line pins one version and lists the sha256 of its files (pip --require-hashes)."""
    text = (LOCK_DIRECTORY / name).read_text()
    requirement_lines = [line for line in text.splitlines() if line and line[0].isalnum()]
    pins = lock(name)
    assert len(requirement_lines) == len(pins) > 0
    assert all(pin.hashes for pin in pins.values()), [n for n, p in pins.items() if not p.hashes]


def test_service_image_locks_the_load_images_versions_and_no_load_tool() -> None:
    """One version of each package in both images; none of Locust's, gevent's or the dev tools."""
    service, load = lock("service.txt"), lock("load.txt")
    assert set(service) < set(load)
    for name, pin in service.items():
        assert (pin.version, pin.hashes) == (load[name].version, load[name].hashes), name
    assert not [name for name in service if NOT_AT_RUN_TIME.match(name)]
    assert "locust" in load


@pytest.mark.parametrize("change", ["narrowed", "added", "removed", "orphan"])
def test_checker_catches_a_pyproject_the_lock_no_longer_matches(change: str) -> None:
    """The check can fail: a narrowed, an added and a removed dependency are each caught."""
    project = copy.deepcopy(pyproject())
    dependencies: list[str] = project["project"]["dependencies"]
    if change == "narrowed":
        dependencies[0] = "flask>=99"
    elif change == "added":
        dependencies.append("numpy>=1.0")
    elif change == "removed":
        dependencies.remove(next(d for d in dependencies if d.startswith("apispec")))
    else:  # a package the lock keeps although no pin or requirement needs it any more
        dependencies.remove(next(d for d in dependencies if d.startswith("python-json-logger")))
        pins = lock("service.txt")
        pins["python-json-logger"].via = set()
        assert disagreements(service_requirements(project), pins) != []
        return
    assert disagreements(service_requirements(project), lock("service.txt")) != []


def test_lock_files_name_the_command_that_made_them() -> None:
    """Each file says it was made by requirements/lock.sh, which the Dockerfile's files are."""
    for name in ("service.txt", "load.txt", "build.txt"):
        assert "requirements/lock.sh" in (LOCK_DIRECTORY / name).read_text().splitlines()[1]
    dockerfile = (PROJECT_ROOT / "Dockerfile").read_text()
    assert re.findall(r"--require-hashes -r (requirements/\S+)", dockerfile) == [
        "requirements/build.txt",
        "requirements/service.txt",
        "requirements/load.txt",
    ]
    assert Path(LOCK_DIRECTORY / "lock.sh").stat().st_mode & 0o111
