"""Read the deployment files without Docker: compose, Dockerfile, .dockerignore.

Small, strict readers for what tests/deploy checks: a Dockerfile's instructions (line
continuations, comments, JSON and shell forms), .dockerignore's matching rules (Docker's: a
path is excluded when it or a parent matches, `**` spans directories, the last matching rule
wins, `!` re-includes) and the build context they leave.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

PROJECT_ROOT = Path(__file__).resolve().parents[2]
COMPOSE_PATH = PROJECT_ROOT / "docker-compose.yml"
DOCKERFILE_PATH = PROJECT_ROOT / "Dockerfile"
DOCKERIGNORE_PATH = PROJECT_ROOT / ".dockerignore"
COMPOSE_SCHEMA_PATH = Path(__file__).resolve().parent / "compose-spec.json"

# The configuration table of docs/configuration.md: the service's whole configuration surface
# (tests/unit/test_config.py checks that service/config.py reads exactly these).
DESIGN_VARIABLES = frozenset(
    {
        "BANK_DATABASE_URL",
        "BANK_LOCK_MODE",
        "BANK_RACE_WINDOW_MS",
        "BANK_ALLOW_UNSAFE_MODES",
        "BANK_ADMIN_TOKEN",
        "BANK_LOCK_TIMEOUT_MS",
        "BANK_TRANSFER_LOCK_ORDER",
        "BANK_BIND",
        "BANK_WORKERS",
        "BANK_THREADS",
        "BANK_IDEMPOTENCY_TTL_HOURS",
        "BANK_REDIS_URL",
        "BANK_REDIS_LOCK_TTL_MS",
        "BANK_REDIS_PREFIX",
        "BANK_API_TOKENS",
        "BANK_ADMIN_ONLY_READS",
        "BANK_CORS_ORIGINS",
        "BANK_QUEUE_MAX_REQUESTS",
        "BANK_QUEUE_WAIT_MAX_MS",
    }
)
# Read by the load tools and the test suite, never by the service.
CLIENT_VARIABLES = frozenset({"BANK_TEST_POSTGRES_URL", "BANK_TEST_REDIS_URL", "BANK_CLIENT_TOKEN"})
# The official postgres image's documented initialisation variables.
POSTGRES_IMAGE_VARIABLES = frozenset(
    {
        "POSTGRES_USER",
        "POSTGRES_PASSWORD",
        "POSTGRES_DB",
        "POSTGRES_INITDB_ARGS",
        "POSTGRES_INITDB_WALDIR",
        "POSTGRES_HOST_AUTH_METHOD",
        "PGDATA",
    }
)


def load_compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(COMPOSE_PATH.read_text())
    return document


# --------------------------------------------------------------------------- Dockerfile


@dataclass(frozen=True)
class Instruction:
    keyword: str
    arguments: str

    @property
    def json_form(self) -> list[str] | None:
        """The exec form (`["a", "b"]`) parsed, or None for the shell form."""
        if not self.arguments.startswith("["):
            return None
        parsed = json.loads(self.arguments)
        if not (isinstance(parsed, list) and all(isinstance(item, str) for item in parsed)):
            raise ValueError(f"{self.keyword} exec form must be a list of strings")
        return parsed


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions in order; comments dropped, continuation lines joined."""
    instructions: list[Instruction] = []
    pending = ""
    for raw_line in text.splitlines():
        line = raw_line.strip()
        if line.startswith("#") or (not line and not pending):
            continue  # comments (and parser directives) end nothing, even mid-continuation
        if line.endswith("\\"):
            pending += line[:-1].rstrip() + " "
            continue
        logical = (pending + line).strip()
        pending = ""
        keyword, _, arguments = logical.partition(" ")
        instructions.append(Instruction(keyword.upper(), arguments.strip()))
    if pending:
        raise ValueError("Dockerfile ends inside a line continuation")
    return instructions


def dockerfile_instructions(target: str | None = None) -> list[Instruction]:
    """What building `target` (by default the last stage, as `docker build .`) runs, in order."""
    return stage_chain(parse_dockerfile(DOCKERFILE_PATH.read_text()), target)


@dataclass(frozen=True)
class Stage:
    name: str | None  # `FROM image AS name`
    base: str  # the image or the earlier stage it starts from
    instructions: tuple[Instruction, ...]  # its FROM first


def dockerfile_stages(instructions: list[Instruction]) -> list[Stage]:
    """The build stages in order: each FROM starts one."""
    stages: list[Stage] = []
    for instruction in instructions:
        if instruction.keyword == "FROM":
            words = [word for word in instruction.arguments.split() if not word.startswith("--")]
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(name, words[0], (instruction,)))
        elif not stages:
            raise ValueError(f"{instruction.keyword} before the first FROM")
        else:
            last = stages[-1]
            stages[-1] = Stage(last.name, last.base, (*last.instructions, instruction))
    return stages


def stage_chain(instructions: list[Instruction], target: str | None = None) -> list[Instruction]:
    """The target stage with the stages it is built FROM: one image's instructions, one FROM."""
    stages = dockerfile_stages(instructions)
    by_name = {stage.name: stage for stage in stages if stage.name}
    if target is not None and target not in by_name:
        raise ValueError(f"no stage named {target!r}")
    stage = by_name[target] if target is not None else stages[-1]
    chain = list(stage.instructions[1:])
    while stage.base in by_name:
        stage = by_name[stage.base]
        chain = list(stage.instructions[1:]) + chain
    return [stage.instructions[0], *chain]


def only(instructions: list[Instruction], keyword: str) -> Instruction:
    found = [instruction for instruction in instructions if instruction.keyword == keyword]
    if len(found) != 1:
        raise AssertionError(f"expected one {keyword}, found {len(found)}")
    return found[0]


def dockerfile_environment(instructions: list[Instruction]) -> dict[str, str]:
    """ENV KEY=VALUE ... (the modern form only: the legacy `ENV KEY VALUE` is refused)."""
    environment: dict[str, str] = {}
    for instruction in instructions:
        if instruction.keyword != "ENV":
            continue
        for assignment in shlex.split(instruction.arguments):
            name, separator, value = assignment.partition("=")
            if not separator:
                raise ValueError(f"ENV {instruction.arguments!r}: use KEY=VALUE")
            environment[name] = value
    return environment


def healthcheck_command(instruction: Instruction) -> list[str]:
    """HEALTHCHECK [--option=value ...] CMD [exec form] -> the exec form."""
    words = instruction.arguments.split(" ", 1)
    rest = instruction.arguments
    while words[0].startswith("--"):
        rest = words[1].strip()
        words = rest.split(" ", 1)
    keyword, _, command = rest.partition(" ")
    if keyword.upper() != "CMD":
        raise ValueError(f"HEALTHCHECK without CMD: {instruction.arguments!r}")
    form = Instruction("CMD", command.strip()).json_form
    if form is None:
        raise ValueError("HEALTHCHECK CMD should use the exec form")
    return form


# --------------------------------------------------------------------------- .dockerignore


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    parts = []
    index = 0
    while index < len(pattern):
        if pattern.startswith("**/", index):
            parts.append("(?:.*/)?")
            index += 3
        elif pattern.startswith("**", index):
            parts.append(".*")
            index += 2
        elif pattern[index] == "*":
            parts.append("[^/]*")
            index += 1
        elif pattern[index] == "?":
            parts.append("[^/]")
            index += 1
        else:
            parts.append(re.escape(pattern[index]))
            index += 1
    return re.compile("".join(parts))


@dataclass(frozen=True)
class DockerIgnore:
    rules: tuple[tuple[bool, re.Pattern[str]], ...]  # (is_exception, pattern)

    @classmethod
    def parse(cls, text: str) -> DockerIgnore:
        rules = []
        for raw_line in text.splitlines():
            line = raw_line.strip()
            if not line or line.startswith("#"):
                continue
            exception = line.startswith("!")
            pattern = os.path.normpath(line.removeprefix("!").strip()).lstrip("/")
            rules.append((exception, _pattern_regex(pattern)))
        return cls(tuple(rules))

    @property
    def has_exceptions(self) -> bool:
        return any(exception for exception, _ in self.rules)

    def excludes(self, relative_path: str) -> bool:
        """Docker's rule: the path or any parent directory matching counts; last rule wins."""
        parts = Path(relative_path).parts
        candidates = ["/".join(parts[: length + 1]) for length in range(len(parts))]
        excluded = False
        for exception, pattern in self.rules:
            if any(pattern.fullmatch(candidate) for candidate in candidates):
                excluded = not exception
        return excluded


def dockerignore() -> DockerIgnore:
    return DockerIgnore.parse(DOCKERIGNORE_PATH.read_text())


def build_context_files(root: Path = PROJECT_ROOT) -> Iterator[str]:
    """Relative paths of the files `docker build .` would send (after .dockerignore)."""
    ignore = dockerignore()
    for directory, subdirectories, files in os.walk(root):
        relative_directory = Path(directory).relative_to(root)
        if not ignore.has_exceptions:  # prune excluded trees (.git, .venv) when nothing re-includes
            subdirectories[:] = [
                name
                for name in subdirectories
                if not ignore.excludes((relative_directory / name).as_posix())
            ]
        for name in files:
            relative = (relative_directory / name).as_posix()
            if not ignore.excludes(relative):
                yield relative
