"""The Dockerfile and .dockerignore kept honest without a Docker engine.

Every command, path and variable the image names must exist in the build context that
.dockerignore leaves, and the image must run as a non-root user with its data on a volume.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from service.schema import MIGRATIONS_DIRECTORY
from tests.deploy.project import (
    DESIGN_VARIABLES,
    DOCKERFILE_PATH,
    PROJECT_ROOT,
    DockerIgnore,
    Instruction,
    build_context_files,
    dockerfile_environment,
    dockerfile_instructions,
    dockerfile_stages,
    healthcheck_command,
    only,
    parse_dockerfile,
)
from tests.support.servers import ServerProcess, clean_environment

BASE_IMAGE = "python:3.11-slim"
# Distributions the service never needs at run time: the `load` extra (Locust, its gevent and
# zmq), the charts, and the dev tools.
NOT_AT_RUN_TIME = re.compile(
    r"(locust|gevent|geventhttpclient|zope[._-]event|pyzmq|matplotlib|pytest|hypothesis|mypy"
    r"|ruff|bandit|schemathesis|playwright|pre[._-]commit)\b",
    re.IGNORECASE,
)
REQUIRED_IN_CONTEXT = (
    "pyproject.toml",
    "service/__init__.py",
    "service/__main__.py",
    "service/cli.py",
    "migrations/env.py",
    "loadtest/locustfile.py",
    "deploy/healthcheck.py",
)


@pytest.fixture(scope="module")
def instructions() -> list[Instruction]:
    return dockerfile_instructions()


@pytest.fixture(scope="module")
def context() -> set[str]:
    return set(build_context_files())


def canonical(name: str) -> str:
    """PEP 503 normalised distribution name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def workdir(instructions: list[Instruction]) -> PurePosixPath:
    return PurePosixPath(only(instructions, "WORKDIR").arguments)


def test_parser_reads_continuations_comments_and_forms() -> None:
    """The Dockerfile reader itself: joined continuations, dropped comments, both forms."""
    parsed = parse_dockerfile(
        '# syntax=docker/dockerfile:1\nFROM x\nRUN a \\\n    # note\n    && b\nCMD ["c", "d"]\n'
    )
    assert [instruction.keyword for instruction in parsed] == ["FROM", "RUN", "CMD"]
    assert parsed[1].arguments == "a && b"
    assert parsed[1].json_form is None
    assert parsed[2].json_form == ["c", "d"]
    with pytest.raises(ValueError):
        parse_dockerfile("RUN a \\\n")


@pytest.mark.parametrize(
    ("patterns", "path", "excluded"),
    [
        (".venv", ".venv/lib/site.py", True),
        ("**/__pycache__", "service/stores/__pycache__/sql.pyc", True),
        ("*.db", "var/bank.db", False),  # `*` does not cross directories
        ("**/*.db", "var/bank.db", True),
        ("tests", "tests/deploy/test_dockerfile.py", True),
        ("tests\n!tests/keep.py", "tests/keep.py", False),
        ("docs", "docsite/index.md", False),
    ],
)
def test_dockerignore_matching_follows_docker(patterns: str, path: str, excluded: bool) -> None:
    """The .dockerignore reader applies Docker's rules (parents, `**`, last match, `!`)."""
    assert DockerIgnore.parse(patterns).excludes(path) is excluded


def test_base_image_is_slim_python_311(instructions: list[Instruction]) -> None:
    """The image starts from the slim Python 3.11 image, matching pyproject's requires-python."""
    assert only(instructions, "FROM").arguments.startswith(BASE_IMAGE)
    requires = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"][
        "requires-python"
    ]
    assert requires == ">=3.11"


def test_runs_as_a_created_non_root_user(instructions: list[Instruction]) -> None:
    """USER is not root, and a RUN creates that user before it is used."""
    user = only(instructions, "USER").arguments.split(":")[0]
    assert user not in ("root", "0")
    creates_user = re.compile(rf"useradd\b[^&]*\s{re.escape(user)}\s*(?:&&|$)")
    created_at = [
        index
        for index, instruction in enumerate(instructions)
        if instruction.keyword == "RUN" and creates_user.search(instruction.arguments)
    ]
    user_at = [instruction.keyword for instruction in instructions].index("USER")
    assert created_at and created_at[0] < user_at


def test_environment_binds_all_interfaces_and_keeps_sqlite_on_the_volume(
    instructions: list[Instruction],
) -> None:
    """BANK_BIND is reachable from outside the container; the SQLite file lies in VOLUME /data."""
    environment = dockerfile_environment(instructions)
    assert set(environment) & DESIGN_VARIABLES == {"BANK_BIND", "BANK_DATABASE_URL"}
    assert environment["BANK_BIND"] == "0.0.0.0:8000"
    assert environment["BANK_DATABASE_URL"] == "sqlite:////data/bank.db"
    volume = only(instructions, "VOLUME").json_form
    assert volume == ["/data"]
    assert only(instructions, "EXPOSE").arguments == environment["BANK_BIND"].rpartition(":")[2]
    created_and_owned = any(
        "mkdir -p /data" in instruction.arguments and "chown" in instruction.arguments
        for instruction in instructions
        if instruction.keyword == "RUN"
    )
    assert created_and_owned, "/data must exist and belong to the service user"


def test_cmd_is_bankrace_serve_from_the_console_script(instructions: list[Instruction]) -> None:
    """CMD runs the `bankrace` console script (service.cli:main) with `serve`."""
    assert only(instructions, "CMD").json_form == ["bankrace", "serve"]
    scripts = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["bankrace"] == "service.cli:main"


def test_healthcheck_runs_the_shipped_probe(
    instructions: list[Instruction], context: set[str]
) -> None:
    """HEALTHCHECK runs deploy/healthcheck.py with the image's python, from the copied repo."""
    interpreter, script = healthcheck_command(only(instructions, "HEALTHCHECK"))
    assert interpreter == "python"
    relative = PurePosixPath(script).relative_to(workdir(instructions)).as_posix()
    assert (PROJECT_ROOT / relative).is_file()
    assert relative in context


def test_copy_sources_exist_and_survive_dockerignore(
    instructions: list[Instruction], context: set[str]
) -> None:
    """Each COPY source is in the build context; `COPY . .` lands the repository at WORKDIR."""
    copies = [instruction for instruction in instructions if instruction.keyword == "COPY"]
    assert copies, "nothing is copied into the image"
    for instruction in copies:
        *sources, _destination = instruction.arguments.split()
        for source in sources:
            if source == ".":
                continue
            assert source in context, f"COPY {source}: not in the build context"
    assert any(instruction.arguments == ". ." for instruction in copies)


def test_build_context_holds_what_the_image_runs(context: set[str]) -> None:
    """Service, migrations, locustfile, probe and the readme pip needs; no venv, git or tests."""
    readme = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]["readme"]
    missing = [path for path in (*REQUIRED_IN_CONTEXT, readme) if path not in context]
    assert missing == []
    assert any(path.startswith("migrations/versions/") for path in context)
    for leaked in (".venv/", ".git/", "tests/", "__pycache__/"):
        assert not any(path.startswith(leaked) or f"/{leaked}" in path for path in context), leaked


def test_editable_install_finds_the_migrations_beside_the_package() -> None:
    """The reason for `pip install -e .`: migrations/ is found next to service/, in the repo."""
    assert MIGRATIONS_DIRECTORY == PROJECT_ROOT / "migrations"
    assert (MIGRATIONS_DIRECTORY / "env.py").is_file()


def requirement_steps(instructions: list[Instruction]) -> list[Instruction]:
    """The RUNs that install lock files (requirements/*.txt), hash-checked."""
    return [
        instruction
        for instruction in instructions
        if instruction.keyword == "RUN" and "--require-hashes" in instruction.arguments
    ]


def installed_locks(step: Instruction) -> list[str]:
    """The lock files a step installs, in order; each `pip install` must check hashes."""
    installs = re.findall(r"pip install ([^&]*)", step.arguments)
    assert installs and all("--require-hashes" in install for install in installs), installs
    return [re.search(r"-r (\S+)", install).group(1) for install in installs]  # type: ignore[union-attr]


def pyproject() -> dict[str, Any]:
    project: dict[str, Any] = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())[
        "project"
    ]
    return project


def test_dependency_step_installs_the_locked_service_dependencies(
    instructions: list[Instruction],
) -> None:
    """Before the code: the build backend, then the service's lock (tests/deploy/test_lock.py
    checks that it locks exactly pyproject's dependencies), both copied alone so that a code
    change reuses the layer."""
    (step,) = requirement_steps(instructions)
    assert installed_locks(step) == ["requirements/build.txt", "requirements/service.txt"]
    copies = [
        instruction.arguments for instruction in instructions if instruction.keyword == "COPY"
    ]
    assert copies[0] == (
        "requirements/build.txt requirements/service.txt requirements/load.txt requirements/"
    )
    assert instructions.index(step) < [i.arguments for i in instructions].index(". .")


def test_stages_build_the_service_by_default_and_locust_only_in_loadtest() -> None:
    """Dependencies (and Locust's) before the code: a code change reuses every install layer.

    `dependencies` -> `service` (the last stage, `docker build .`); `dependencies` ->
    `load-dependencies` (the load lock) -> `loadtest`. Both copy the code and install it alone.
    """
    stages = dockerfile_stages(parse_dockerfile(DOCKERFILE_PATH.read_text()))
    assert [(stage.name, stage.base) for stage in stages] == [
        ("dependencies", BASE_IMAGE),
        ("load-dependencies", "dependencies"),
        ("loadtest", "load-dependencies"),
        ("service", "dependencies"),
    ]
    assert dockerfile_instructions() == dockerfile_instructions("service")
    (step,) = requirement_steps(list(stages[1].instructions))
    assert installed_locks(step) == ["requirements/load.txt"]
    load = pyproject()["optional-dependencies"]["load"]
    assert any(re.match(r"locust\b", requirement) for requirement in load)
    assert re.search(r"^locust==", (PROJECT_ROOT / "requirements/load.txt").read_text(), re.M)
    for stage in (stages[2], stages[3]):
        keywords = [instruction.keyword for instruction in stage.instructions]
        assert keywords[1:3] == ["COPY", "RUN"], stage.name
        assert stage.instructions[1].arguments == ". ."
        assert stage.instructions[2].arguments == "pip install --no-deps --no-build-isolation -e ."
    assert only(list(stages[2].instructions), "USER").arguments == "bank"


def test_service_image_installs_nothing_but_the_service_and_its_dependencies(
    instructions: list[Instruction],
) -> None:
    """The service image's pip installs: two hash-checked locks, then the project alone."""
    installs = [
        install
        for instruction in instructions
        if instruction.keyword == "RUN"
        for install in re.findall(r"pip install ([^&]*)", instruction.arguments)
    ]
    assert len(installs) == 3
    assert installs[2].split() == ["--no-deps", "--no-build-isolation", "-e", "."]
    assert not any(".[" in install or "locust" in install for install in installs)  # no extra
    dependencies = pyproject()["dependencies"]
    assert not any(re.match(NOT_AT_RUN_TIME, requirement) for requirement in dependencies)


def test_service_requirements_resolve_without_locust_gevent_or_dev_tools(
    instructions: list[Instruction], tmp_path: Path
) -> None:
    """pip resolves the image's lock, as the image would: complete, and no load or dev package.

    `pip install --dry-run --ignore-installed --require-hashes --report` lists every
    distribution the image's install would take (resolved from the index the project installs
    from), without installing anything; --require-hashes refuses a lock that misses a
    dependency or a hash.
    """
    (step,) = requirement_steps(instructions)
    report = tmp_path / "report.json"
    locks = [argument for lock in installed_locks(step) for argument in ("-r", lock)]
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
         "--require-hashes", "--report", str(report), *locks],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=240, check=True,
    )  # fmt: skip
    names = {
        canonical(item["metadata"]["name"]) for item in json.loads(report.read_text())["install"]
    }
    assert {"flask", "gunicorn", "sqlalchemy", "psycopg"} <= names  # the report is the real tree
    assert not {name for name in names if re.match(NOT_AT_RUN_TIME, name)}, names


@pytest.mark.e2e
def test_build_context_serves_like_the_image(
    instructions: list[Instruction], context: set[str], tmp_path: Path
) -> None:
    """Only the files `docker build` would send, run as the image runs them: serve, then probe.

    The context is copied to an `/app` of its own; `python -m service serve` from there (the
    CMD; `-m` puts the copy first on sys.path) migrates SQLite on the image's database path,
    moved under a stand-in for the /data volume, and the HEALTHCHECK command passes.
    """
    app = tmp_path / "app"
    for relative in context:
        (app / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(PROJECT_ROOT / relative, app / relative)
    imported = subprocess.run(
        [sys.executable, "-c", "import service; print(service.__file__)"],
        cwd=app,
        env=clean_environment({}),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert Path(imported.stdout.strip()).is_relative_to(app)
    (volume,) = only(instructions, "VOLUME").json_form or []
    image_database = dockerfile_environment(instructions)["BANK_DATABASE_URL"]
    database_path = PurePosixPath(make_url(image_database).database or "")
    local_database = tmp_path / "volume" / database_path.relative_to(volume)
    (local_database.parent).mkdir(parents=True)
    settings = {"BANK_DATABASE_URL": f"sqlite:///{local_database}"}
    with ServerProcess(workdir=app, settings=settings) as server:
        _python, script = healthcheck_command(only(instructions, "HEALTHCHECK"))
        script_in_copy = app / PurePosixPath(script).relative_to(workdir(instructions))
        probe = subprocess.run(
            [sys.executable, str(script_in_copy)],
            env=clean_environment({"BANK_BIND": f"0.0.0.0:{server.port}"}),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert probe.returncode == 0, probe.stderr
    assert local_database.is_file()
