"""The scale-out docs name only real profiles, services, files and variables.

Each `docker compose` command in the README's "Scale out" section is checked against
docker-compose.yml without an engine; test_compose_stack.py runs the marked blocks for real.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.project import CLIENT_VARIABLES, DESIGN_VARIABLES, PROJECT_ROOT, load_compose

DOCUMENTS = (PROJECT_ROOT / "README.md",)
# Options of `docker compose` and its subcommands that take a value.
OPTIONS_WITH_VALUE = {"--profile", "-f", "--file", "-p", "--project-name", "-e", "--env"}
SUBCOMMANDS_OF_SERVICES = {"up", "build", "logs", "ps", "pull", "stop", "start", "restart"}
SUBCOMMANDS_OF_ONE_SERVICE = {"run", "exec"}


def compose_commands(text: str) -> list[list[str]]:
    """Every `docker compose ...` command, continuation lines joined, env assignments and
    trailing comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", text)
    commands = []
    for match in re.finditer(r"(?:`|^)((?:[A-Z_]+=\S+\s+)*docker compose [^`\n]*)", joined, re.M):
        words = shlex.split(match.group(1), comments=True)
        while "=" in words[0]:
            words.pop(0)
        commands.append(words[2:])
    return commands


def documents() -> list[Path]:
    return [path for path in DOCUMENTS if path.exists() and "docker compose" in path.read_text()]


def check_command(words: list[str], compose: dict[str, Any]) -> None:
    profiles = {profile for s in compose["services"].values() for profile in s.get("profiles", [])}
    index = 0
    subcommand = None
    named: list[str] = []
    while index < len(words):
        word = words[index]
        if word in OPTIONS_WITH_VALUE:
            if word == "--profile":
                assert words[index + 1] in profiles, f"no profile {words[index + 1]}"
            index += 2
            continue
        if word.startswith("-"):
            index += 1
            continue
        if subcommand is None:
            subcommand = word
        else:
            named.append(word)
            if subcommand in SUBCOMMANDS_OF_ONE_SERVICE:
                break
        index += 1
    assert subcommand is not None
    if subcommand in SUBCOMMANDS_OF_SERVICES | SUBCOMMANDS_OF_ONE_SERVICE:
        for service in named:
            assert service in compose["services"], f"no service {service}"
    trailing = words[index + 1 :] if subcommand in SUBCOMMANDS_OF_ONE_SERVICE else []
    if "-f" in trailing:
        locustfile = trailing[trailing.index("-f") + 1]
        assert (PROJECT_ROOT / locustfile).is_file(), locustfile


def test_docs_exist_and_show_compose_commands() -> None:
    """The README's scale-out section is there and shows the compose commands."""
    assert DOCUMENTS[0] in documents()
    assert len(compose_commands(DOCUMENTS[0].read_text())) >= 5


@pytest.mark.parametrize("path", documents(), ids=lambda path: path.name)
def test_compose_commands_name_real_profiles_and_services(path: Path) -> None:
    """Each --profile is a profile, each named service a service, each locustfile a file."""
    compose = load_compose()
    for words in compose_commands(path.read_text()):
        check_command(words, compose)


@pytest.mark.parametrize("path", documents(), ids=lambda path: path.name)
def test_documented_variables_exist(path: Path) -> None:
    """Every BANK_* the docs mention is a service setting, or the load tools' or tests' own."""
    mentioned = set(re.findall(r"\bBANK_[A-Z_]+\b", path.read_text()))
    assert mentioned - CLIENT_VARIABLES <= DESIGN_VARIABLES


def test_checker_refuses_unknown_profiles_and_services() -> None:
    """The checker itself can fail."""
    compose = load_compose()
    with pytest.raises(AssertionError):
        check_command(["--profile", "scaled", "up"], compose)
    with pytest.raises(AssertionError):
        check_command(["--profile", "scale", "up", "api-3"], compose)
    with pytest.raises(AssertionError):
        check_command(["run", "--rm", "locust-master", "locust", "-f", "loadtest/nope.py"], compose)
