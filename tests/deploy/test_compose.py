"""docker-compose.yml kept honest without a Docker engine.

The file must validate against the Compose Specification's JSON schema (vendored, see
README.md here), and every command, path, port and variable it names must exist in this
project: a compose file that only breaks on `docker compose up` is caught here instead.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
from sqlalchemy.engine import make_url

from service.config import Config
from tests.deploy.balancer import NGINX_TEMPLATE_PATH, TEMPLATE_VARIABLES, placeholders, render
from tests.deploy.project import (
    COMPOSE_PATH,
    COMPOSE_SCHEMA_PATH,
    DESIGN_VARIABLES,
    DOCKERFILE_PATH,
    POSTGRES_IMAGE_VARIABLES,
    PROJECT_ROOT,
    build_context_files,
    dockerfile_environment,
    dockerfile_instructions,
    dockerfile_stages,
    load_compose,
    only,
    parse_dockerfile,
)
from tests.support.servers import clean_environment

# The vendored schema's digest, as published next to it by check-jsonschema 0.39.0.
COMPOSE_SCHEMA_SHA256 = "d549057ebc2925f39f62799eab0db7b9e2c18b35b6c00595199116da3ed10e64"
BANKRACE_IMAGE = "bankrace:local"
POSTGRES_URL_DRIVER = "postgresql+psycopg"
LOCUST_WEB_PORT = 8089
LOADTEST_STAGE = "loadtest"
LOCUST_SERVICES = ("locust-master", "locust-worker")
PROFILES = {
    "postgres": {"postgres", "migrate", "api-postgres"},
    "scale": {"postgres", "migrate", "api-1", "api-2", "nginx", "redis"},
    "redis": {"redis"},
    "loadtest": {"locust-master", "locust-worker"},
    "observe": {"prometheus", "grafana"},
}
POSTGRES_REPLICAS = ("api-postgres", "api-1", "api-2")
SCALE_REPLICAS = ("api-1", "api-2")
REDIS_PORT = 6379
LOOPBACK = "127.0.0.1"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose()


@pytest.fixture(scope="module")
def validator() -> jsonschema.protocols.Validator:
    schema = json.loads(COMPOSE_SCHEMA_PATH.read_text())
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    return validator_class(schema)


def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]  # type: ignore[no-any-return]


def bankrace_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: service
        for name, service in services(compose).items()
        if service.get("image") == BANKRACE_IMAGE
    }


def environment_of(service: dict[str, Any]) -> dict[str, Any]:
    environment = service.get("environment", {})
    if isinstance(environment, list):  # KEY=VALUE list form
        return dict(entry.partition("=")[::2] for entry in environment)
    return dict(environment)


def image_port() -> int:
    """The port the image's gunicorn binds (Dockerfile ENV BANK_BIND)."""
    return int(dockerfile_environment(dockerfile_instructions())["BANK_BIND"].rpartition(":")[2])


def published_ports(service: dict[str, Any]) -> list[tuple[int, int]]:
    """(host, container) pairs of the short `127.0.0.1:HOST:CONTAINER` syntax this file uses."""
    pairs = []
    for entry in service.get("ports", []):
        address, host, container = str(entry).split(":")
        assert address == LOOPBACK, f"{entry}: published beyond this machine"
        pairs.append((int(host), int(container)))
    return pairs


def command_of(service: dict[str, Any]) -> list[str]:
    """The service's command, or the image's CMD when it sets none."""
    command = service.get("command")
    if command is None:
        form = only(dockerfile_instructions(), "CMD").json_form
        assert form is not None
        return form
    assert isinstance(command, list), "use the exec (list) form: no shell in between"
    return command


def option(command: list[str], name: str) -> str:
    assert name in command, f"{name} missing from {command}"
    return command[command.index(name) + 1]


def test_vendored_schema_is_the_published_compose_specification() -> None:
    """The schema file is byte-for-byte the vendored one (no local edits to make tests pass)."""
    digest = hashlib.sha256(COMPOSE_SCHEMA_PATH.read_bytes()).hexdigest()
    assert digest == COMPOSE_SCHEMA_SHA256


def test_compose_file_validates_against_the_specification(
    compose: dict[str, Any], validator: jsonschema.protocols.Validator
) -> None:
    """docker-compose.yml is a valid Compose Specification document."""
    errors = [
        f"{list(error.absolute_path)}: {error.message}" for error in validator.iter_errors(compose)
    ]
    assert errors == []


@pytest.mark.parametrize(
    ("path", "bad_value"),
    [
        (("services", "api-1", "depends_on", "migrate", "condition"), "service_finished"),
        (("services", "api", "restart"), ["always"]),
        (("services", "postgres", "healthcheck", "interval"), 2),
        (("services", "nginx", "volumes"), "./deploy/nginx"),
    ],
)
def test_schema_validation_rejects_broken_files(
    compose: dict[str, Any],
    validator: jsonschema.protocols.Validator,
    path: tuple[str, ...],
    bad_value: object,
) -> None:
    """The validator really validates: typical mistakes in this file are refused."""
    broken = copy.deepcopy(compose)
    target = broken
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = bad_value
    assert list(validator.iter_errors(broken)) != []


def test_profiles_hold_the_documented_deployments(compose: dict[str, Any]) -> None:
    """No profile: the SQLite api alone; each profile adds exactly its services."""
    always = {name for name, service in services(compose).items() if "profiles" not in service}
    assert always == {"api"}
    for profile, expected in PROFILES.items():
        members = {
            name
            for name, service in services(compose).items()
            if profile in service.get("profiles", [])
        }
        assert members == expected, profile


def test_sqlite_api_keeps_its_database_on_a_named_volume(compose: dict[str, Any]) -> None:
    """The default api writes the image's SQLite path, which lies on a declared named volume."""
    api = services(compose)["api"]
    database_url = dockerfile_environment(dockerfile_instructions())["BANK_DATABASE_URL"]
    assert "BANK_DATABASE_URL" not in environment_of(api)  # the image's default stands
    database_directory = str(Path(make_url(database_url).database or "").parent)
    mounts = {volume.split(":")[1]: volume.split(":")[0] for volume in api["volumes"]}
    assert database_directory in mounts
    assert mounts[database_directory] in compose["volumes"]


def test_postgres_replicas_wait_for_a_healthy_migrated_database(compose: dict[str, Any]) -> None:
    """Replicas start after `migrate` exited 0, which starts after pg_isready succeeds."""
    postgres = services(compose)["postgres"]
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    migrate = services(compose)["migrate"]
    assert migrate["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    for name in POSTGRES_REPLICAS:
        dependencies = dict(services(compose)[name]["depends_on"])
        dependencies.pop("redis")  # see test_redis_is_waited_for_where_it_is_needed
        assert dependencies == {
            "postgres": {"condition": "service_healthy"},
            "migrate": {"condition": "service_completed_successfully"},
        }, name


def test_database_url_points_at_the_postgres_service(compose: dict[str, Any]) -> None:
    """User, password, database, host and port in BANK_DATABASE_URL match the postgres service."""
    postgres_environment = environment_of(services(compose)["postgres"])
    for name in ("migrate", *POSTGRES_REPLICAS):
        url = make_url(environment_of(services(compose)[name])["BANK_DATABASE_URL"])
        assert url.drivername == POSTGRES_URL_DRIVER
        assert url.host in services(compose) and services(compose)[url.host]["image"].startswith(
            "postgres:"
        )
        assert url.port == 5432
        assert url.username == postgres_environment["POSTGRES_USER"]
        assert url.password == postgres_environment["POSTGRES_PASSWORD"]
        assert url.database == postgres_environment["POSTGRES_DB"]


def test_environment_names_only_known_variables(compose: dict[str, Any]) -> None:
    """BANK_* from DESIGN §4 (read by service/config.py), the postgres image's, nginx's template."""
    config_source = (PROJECT_ROOT / "service" / "config.py").read_text()
    for name, service in services(compose).items():
        names = set(environment_of(service))
        image = str(service.get("image", ""))
        if image.startswith("postgres:"):
            assert names <= POSTGRES_IMAGE_VARIABLES, name
        elif image.startswith("nginx:"):
            assert names == set(TEMPLATE_VARIABLES), name
        else:
            assert names <= DESIGN_VARIABLES, (name, names - DESIGN_VARIABLES)
            for variable in names:
                assert f'"{variable}"' in config_source, f"{variable} is not read by the service"
    interpolated = set(re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", COMPOSE_PATH.read_text()))
    assert interpolated <= DESIGN_VARIABLES


def test_every_design_variable_is_configurable(compose: dict[str, Any]) -> None:
    """Between the image's ENV and compose, every DESIGN §4 variable can be set, no others."""
    image_names = set(dockerfile_environment(dockerfile_instructions())) & DESIGN_VARIABLES
    compose_names = set().union(
        *(environment_of(service) for service in bankrace_services(compose).values())
    )
    assert image_names | compose_names == DESIGN_VARIABLES


def test_bankrace_commands_are_real_subcommands(compose: dict[str, Any]) -> None:
    """`bankrace serve` / `bankrace db upgrade`: the console script and its subcommands exist."""
    scripts = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["bankrace"] == "service.cli:main"
    commands = {
        tuple(command_of(service))
        for service in bankrace_services(compose).values()
        if command_of(service)[0] == "bankrace"
    }
    assert commands == {("bankrace", "serve"), ("bankrace", "db", "upgrade")}
    for command in commands:
        result = subprocess.run(
            [sys.executable, "-m", "service", *command[1:], "--help"],
            cwd=PROJECT_ROOT,
            env=clean_environment({}),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, (command, result.stderr)


def test_locust_services_run_the_project_locustfile(compose: dict[str, Any]) -> None:
    """Master and workers run loadtest/locustfile.py at real services, from the loadtest image.

    Locust is the `load` extra, not a dependency of the service: the service image has none,
    the Dockerfile's `loadtest` stage installs it (tests/deploy/test_dockerfile.py).
    """
    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]
    assert not any(re.match(r"locust\b", dependency) for dependency in project["dependencies"])
    load = project["optional-dependencies"]["load"]
    assert any(re.match(r"locust\b", dependency) for dependency in load)
    for name in LOCUST_SERVICES:
        assert services(compose)[name]["build"]["target"] == LOADTEST_STAGE, name
    context = set(build_context_files())
    master = command_of(services(compose)["locust-master"])
    worker = command_of(services(compose)["locust-worker"])
    for command in (master, worker):
        assert command[0] == "locust"
        locustfile = option(command, "-f")
        assert (PROJECT_ROOT / locustfile).is_file(), f"{locustfile} does not exist"
        assert locustfile in context, f"{locustfile} is left out of the image by .dockerignore"
    assert "--master" in master and "--worker" in worker
    assert option(worker, "--master-host") == "locust-master"
    target = urlsplit(option(master, "--host"))
    assert target.hostname in services(compose)
    assert target.port in {
        container for _host, container in published_ports(services(compose)[target.hostname])
    }
    assert published_ports(services(compose)["locust-master"]) == [
        (LOCUST_WEB_PORT, LOCUST_WEB_PORT)
    ]


def test_ports_are_unique_and_reach_the_listening_process(compose: dict[str, Any]) -> None:
    """Host ports never collide (profiles may run together); container ports are real listeners."""
    host_ports = [
        host
        for service in services(compose).values()
        for host, _container in published_ports(service)
    ]
    assert len(host_ports) == len(set(host_ports))
    for name, service in bankrace_services(compose).items():
        if command_of(service) == ["bankrace", "serve"]:
            assert all(container == image_port() for _h, container in published_ports(service)), (
                name
            )
    nginx = services(compose)["nginx"]
    listen_port = int(environment_of(nginx)["BALANCER_LISTEN_PORT"])
    assert [container for _host, container in published_ports(nginx)] == [listen_port]


def test_files_named_by_compose_exist(compose: dict[str, Any]) -> None:
    """Build contexts hold a Dockerfile and its target stage; mounts and volumes exist."""
    stage_names = [
        stage.name for stage in dockerfile_stages(parse_dockerfile(DOCKERFILE_PATH.read_text()))
    ]
    for name, service in services(compose).items():
        if "build" in service:
            build = service["build"]
            context = PROJECT_ROOT / build["context"]
            assert (context / build.get("dockerfile", "Dockerfile")).is_file(), name
            if "target" in build:  # a stage of that Dockerfile; the service image is its last
                assert build["target"] in stage_names, (name, build["target"])
                assert (build["target"] == stage_names[-1]) == (name not in LOCUST_SERVICES)
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (COMPOSE_PATH.parent / source).exists(), (name, source)
            else:
                assert source in compose["volumes"], (name, source)


def test_nginx_mounts_the_template_the_scale_out_test_renders(compose: dict[str, Any]) -> None:
    """One nginx configuration: compose mounts the very file test_scale_out.py renders."""
    nginx = services(compose)["nginx"]
    (volume,) = nginx["volumes"]
    source, target, mode = volume.split(":")
    assert (COMPOSE_PATH.parent / source).resolve() == NGINX_TEMPLATE_PATH
    assert mode == "ro"
    # The nginx image renders /etc/nginx/templates/*.template into conf.d/*.conf; naming it
    # default.conf replaces the image's stock server on port 80.
    assert target == "/etc/nginx/templates/default.conf.template"
    rendered = render(NGINX_TEMPLATE_PATH.read_text(), environment_of(nginx))
    assert placeholders(rendered) == set()


def test_nginx_balances_over_the_scale_replicas(compose: dict[str, Any]) -> None:
    """The upstream lists api-1 and api-2 on their serving port, and waits for them healthy."""
    nginx = services(compose)["nginx"]
    upstreams = re.findall(
        r"server\s+([\w.-]+):(\d+)\s*;", environment_of(nginx)["BALANCER_UPSTREAM_SERVERS"]
    )
    assert upstreams == [("api-1", str(image_port())), ("api-2", str(image_port()))]
    for host, _port in upstreams:
        replica = services(compose)[host]
        assert "scale" in replica["profiles"]
        assert command_of(replica) == ["bankrace", "serve"]
        assert environment_of(replica)["BANK_DATABASE_URL"].startswith(POSTGRES_URL_DRIVER)
    assert nginx["depends_on"] == {
        host: {"condition": "service_healthy"} for host, _port in upstreams
    }


def profiles_of(service: dict[str, Any]) -> set[str] | None:
    """The profiles a service runs in; None: always."""
    return set(service["profiles"]) if "profiles" in service else None


def test_required_dependencies_run_in_every_profile_of_their_dependents(
    compose: dict[str, Any],
) -> None:
    """`docker compose --profile X up` never needs a disabled service; optional ones may be."""
    for name, service in services(compose).items():
        dependencies = service.get("depends_on", {})
        if isinstance(dependencies, list):
            dependencies = {dependency: {} for dependency in dependencies}
        for dependency, condition in dependencies.items():
            assert dependency in services(compose), (name, dependency)
            if condition.get("required", True) is False:
                continue
            needed = profiles_of(services(compose)[dependency])
            running = profiles_of(service)
            assert needed is None or (running is not None and running <= needed), (
                name,
                dependency,
            )


def test_redis_is_a_healthchecked_lock_service_without_persistence(
    compose: dict[str, Any],
) -> None:
    """The official image, redis-cli ping as healthcheck, no RDB or AOF, no host port."""
    redis = services(compose)["redis"]
    assert redis["image"].startswith("redis:")
    assert redis["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    assert redis["healthcheck"]["retries"] > 1
    command = command_of(redis)
    assert command[0] == "redis-server"
    assert option(command, "--save") == "" and option(command, "--appendonly") == "no"
    assert "volumes" not in redis and "ports" not in redis  # nothing kept, nothing exposed
    assert set(redis["profiles"]) == {"redis", "scale"}


def test_redis_is_waited_for_where_it_is_needed(compose: dict[str, Any]) -> None:
    """The scale replicas need Redis healthy (fenced across replicas); the others only if up."""
    healthy = {"condition": "service_healthy"}
    for name in SCALE_REPLICAS:
        assert services(compose)[name]["depends_on"]["redis"] == healthy, name
    for name in ("api", "api-postgres"):
        assert services(compose)[name]["depends_on"]["redis"] == {**healthy, "required": False}
    for name, service in services(compose).items():
        if name not in {"api", "api-postgres", *SCALE_REPLICAS}:
            assert "redis" not in service.get("depends_on", {}), name


def test_every_replica_finds_redis_at_a_url_the_service_accepts(compose: dict[str, Any]) -> None:
    """BANK_REDIS_URL names the redis service and its port, in a form config.py validates."""
    servers = [
        name
        for name, service in bankrace_services(compose).items()
        if command_of(service) == ["bankrace", "serve"]
    ]
    assert set(servers) == {"api", "api-postgres", *SCALE_REPLICAS}
    for name in servers:
        environment = environment_of(services(compose)[name])
        url = urlsplit(environment["BANK_REDIS_URL"])
        assert (url.scheme, url.hostname, url.port) == ("redis", "redis", REDIS_PORT), name
        assert services(compose)[url.hostname]["image"].startswith("redis:")
        config = Config.from_env({"BANK_REDIS_URL": environment["BANK_REDIS_URL"]})
        assert config.redis_url == environment["BANK_REDIS_URL"]
        assert environment["BANK_REDIS_LOCK_TTL_MS"] is None, name  # passed through from the host


def test_every_port_is_published_on_loopback_only(compose: dict[str, Any]) -> None:
    """Demo credentials and no token by default: nothing is reachable from another host."""
    ports = [
        str(entry) for service in services(compose).values() for entry in service.get("ports", [])
    ]
    assert ports and all(entry.startswith(f"{LOOPBACK}:") for entry in ports)


def test_up_wait_can_judge_every_long_running_service(compose: dict[str, Any]) -> None:
    """`up --wait` fails on a disabled healthcheck: only the one-shot migrate may disable its own.

    (migrate exits 0 and the replicas wait for that; the service image's probe of /healthz
    would never pass for it.)
    """
    disabled = {
        name
        for name, service in services(compose).items()
        if service.get("healthcheck", {}).get("disable") is True
    }
    assert disabled == {"migrate"}
    assert services(compose)["migrate"]["restart"] == "no"
