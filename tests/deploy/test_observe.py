"""The compose `observe` profile kept honest without Docker: Prometheus, Grafana, the dashboard.

Prometheus must scrape exactly the compose services that run `bankrace serve`,
on the port they serve, at the path the API documents; Grafana's mounts must
meet its provisioning paths; every query of the dashboard must name metrics
the service really exports (read from a live app's GET /metrics); and
docs/operate.md must name every metric and only real profiles and services.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from service import create_app
from tests.conftest import make_config
from tests.deploy.project import (
    COMPOSE_PATH,
    PROJECT_ROOT,
    dockerfile_environment,
    dockerfile_instructions,
    load_compose,
    only,
)
from tests.deploy.test_docs import check_command, compose_commands

PROMETHEUS_CONFIG = PROJECT_ROOT / "deploy" / "prometheus" / "prometheus.yml"
GRAFANA = PROJECT_ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "bankrace.json"
DATASOURCES = GRAFANA / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARD_PROVIDERS = GRAFANA / "provisioning" / "dashboards" / "bankrace.yml"
OPERATE_DOC = PROJECT_ROOT / "docs" / "operate.md"
METRIC_NAME = re.compile(r"\bbankrace_[a-z_]+\b")
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose()


def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]  # type: ignore[no-any-return]


def mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Container path -> host path of each bind mount."""
    found = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        found[target] = (COMPOSE_PATH.parent / source).resolve()
    return found


@pytest.fixture(scope="module")
def exported() -> dict[str, str]:
    """Metric family -> type, from GET /metrics of a live app (one request of each kind)."""
    app = create_app(make_config("memory://"))
    try:
        client = app.test_client()
        account = client.post("/accounts", json={"owner": "o", "opening_balance": 5}).get_json()
        client.post(f"/accounts/{account['id']}/withdraw", json={"amount": 1})
        client.get("/audit")
        text = client.get("/metrics").get_data(as_text=True)
    finally:
        app.extensions["bankrace"].store.close()
    types = re.findall(r"^# TYPE (bankrace_\w+) (\w+)$", text, re.M)
    # A counter's family is named with or without `_total`, depending on the format version.
    return {
        (name.removesuffix("_total") if kind == "counter" else name): kind for name, kind in types
    }


def sample_names(exported: dict[str, str]) -> set[str]:
    return {family + suffix for family, kind in exported.items() for suffix in SUFFIXES[kind]}


def test_observe_profile_is_prometheus_and_grafana(compose: dict[str, Any]) -> None:
    """`--profile observe` adds exactly prometheus and grafana, on loopback ports of their own."""
    members = {
        name
        for name, service in services(compose).items()
        if "observe" in service.get("profiles", [])
    }
    assert members == {"prometheus", "grafana"}
    assert services(compose)["prometheus"]["ports"] == ["127.0.0.1:9090:9090"]
    assert services(compose)["grafana"]["ports"] == ["127.0.0.1:3000:3000"]


def serving_services(compose: dict[str, Any]) -> set[str]:
    image_command = only(dockerfile_instructions(), "CMD").json_form
    return {
        name
        for name, service in services(compose).items()
        if service.get("image") == "bankrace:local"
        and service.get("command", image_command) == ["bankrace", "serve"]
    }


def test_prometheus_scrapes_every_replica_on_its_serving_port(compose: dict[str, Any]) -> None:
    """Targets are exactly the compose services running `bankrace serve`, at /metrics."""
    prometheus = services(compose)["prometheus"]
    config_path = next(
        argument.split("=", 1)[1]
        for argument in prometheus["command"]
        if argument.startswith("--config.file=")
    )
    assert mounts(prometheus)[config_path] == PROMETHEUS_CONFIG
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    port = dockerfile_environment(dockerfile_instructions())["BANK_BIND"].rpartition(":")[2]
    targets = [target for group in job["static_configs"] for target in group["targets"]]
    assert len(targets) == len(set(targets))
    assert {target.rpartition(":")[0] for target in targets} == serving_services(compose)
    assert {target.rpartition(":")[2] for target in targets} == {port}


def test_grafana_mounts_meet_its_provisioning(compose: dict[str, Any]) -> None:
    """grafana.ini, the provisioning and the dashboards land where each names the other."""
    grafana = mounts(services(compose)["grafana"])
    assert grafana["/etc/grafana/grafana.ini"] == GRAFANA / "grafana.ini"
    assert grafana["/etc/grafana/provisioning"] == GRAFANA / "provisioning"
    (provider,) = yaml.safe_load(DASHBOARD_PROVIDERS.read_text())["providers"]
    dashboards_in_container = provider["options"]["path"]
    assert grafana[dashboards_in_container] == DASHBOARD.parent
    home = re.search(
        r"^default_home_dashboard_path = (.+)$", (GRAFANA / "grafana.ini").read_text(), re.M
    )
    assert home is not None
    assert Path(home.group(1)).parent == Path(dashboards_in_container)
    assert (DASHBOARD.parent / Path(home.group(1)).name).is_file()


def test_the_data_source_is_the_compose_prometheus(compose: dict[str, Any]) -> None:
    """The provisioned data source points at the prometheus service, under the dashboard's uid."""
    (source,) = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    container_port = services(compose)["prometheus"]["ports"][0].split(":")[1]
    assert source["url"].endswith(f":{container_port}")
    uids = {
        target["datasource"]["uid"]
        for panel in json.loads(DASHBOARD.read_text())["panels"]
        for target in panel.get("targets", [])
    }
    assert uids == {source["uid"]}


def dashboard_queries() -> Iterator[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"]
    for variable in dashboard["templating"]["list"]:
        yield variable["name"], variable["definition"]


def test_every_dashboard_query_names_exported_metrics(exported: dict[str, str]) -> None:
    """No panel queries a metric the service does not export (a typo would be an empty panel)."""
    names = sample_names(exported)
    queried = set()
    for title, expression in dashboard_queries():
        used = set(METRIC_NAME.findall(expression))
        assert used, title
        assert used <= names, (title, used - names)
        assert expression.count("(") == expression.count(")"), title
        queried |= used
    families = {name for name in queried for family in exported if name.startswith(family)}
    assert len(families) >= 15


def test_every_dashboard_panel_is_placed_and_unique() -> None:
    """Panel ids are unique and every panel has a position inside the 24-column grid."""
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        position = panel["gridPos"]
        assert position["x"] + position["w"] <= 24, panel["title"]
    assert dashboard["uid"] == "bankrace"


def test_operate_doc_names_every_metric_and_only_real_compose_things(
    exported: dict[str, str],
) -> None:
    """docs/operate.md documents each exported metric; its compose commands name real things."""
    text = OPERATE_DOC.read_text()
    for family, kind in exported.items():
        documented = family + ("_total" if kind == "counter" else "")
        assert f"`{documented}`" in text, documented
    commands = compose_commands(text)
    assert len(commands) >= 2
    for words in commands:
        check_command(words, load_compose())
