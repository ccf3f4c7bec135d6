"""The compose stack works end to end: one image built once for migrate, api and workers; a
demo file server the workers are allowed to download from; healthchecks and start order kept.
Checked statically (no Docker engine here); ``docker-compose config`` when it is installed."""

from __future__ import annotations

import ipaddress
import json
import re
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from tests.support import ROOT
from tests.unit.test_compose_endpoint import as_run_without_overrides

APP_SERVICES = ("migrate", "api", "workers")


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return loaded


def test_one_image_is_built_once_and_run_by_migrate_api_and_workers():
    services = compose()["services"]
    builders = sorted(name for name, service in services.items() if "build" in service)
    assert builders == ["migrate", "pg0"]  # the app's image, and the `ha` profile's node
    images = {as_run_without_overrides(services[name]["image"]) for name in APP_SERVICES}
    assert len(images) == 1
    for name in ("api", "workers"):
        assert services[name]["pull_policy"] == "never"  # built locally, never pulled
        assert services[name]["depends_on"]["migrate"] == {
            "condition": "service_completed_successfully"
        }


def test_the_demo_file_server_is_reachable_by_the_workers_download_policy():
    services = compose()["services"]
    files = services["files"]
    assert "http.server 8000" in " ".join(files["command"])
    assert "healthcheck" in files
    allowed = as_run_without_overrides(
        services["workers"]["environment"]["DOWNLOAD_ALLOWED_NETWORKS"]
    )
    networks = [ipaddress.ip_network(cidr) for cidr in allowed.split(",")]
    # Docker gives compose networks addresses from 172.17.0.0/16 upwards (then 192.168/16).
    for sample in ("172.18.0.5", "172.30.0.5", "192.168.16.5"):
        assert any(ipaddress.ip_address(sample) in net for net in networks), sample


def test_the_readme_creates_from_the_demo_file_server():
    readme = (ROOT / "README.md").read_text()
    assert "http://files:8000/demo.img" in readme
    host = urlsplit("http://files:8000/demo.img").hostname
    assert host in compose()["services"]


@pytest.mark.parametrize("name", ["postgres", "rabbitmq", "api", "workers", "files"])
def test_every_long_running_service_has_a_healthcheck(name):
    assert "test" in compose()["services"][name]["healthcheck"]


def test_the_ha_profile_runs_three_patroni_nodes_as_the_fault_run_tested_them():
    """The compose profile ``ha`` runs what tests/faults/test_patroni_faults.py exercises:
    three nodes of one locally built image, etcd with its v2 API, and the Patroni settings
    the fault run reads (timings, strict synchronous mode, pg_rewind)."""
    from tests.faults import patroni as tested

    services = compose()["services"]
    nodes = ["pg0", "pg1", "pg2"]
    for name in [*nodes, "etcd"]:
        assert services[name]["profiles"] == ["ha"], name
    assert len({services[name]["image"] for name in nodes}) == 1
    for name in nodes[1:]:
        assert services[name]["pull_policy"] == "never"  # built by pg0
    for name in nodes:
        assert services[name]["environment"]["PATRONI_NAME"] == name
        assert services[name]["depends_on"]["etcd"] == {"condition": "service_healthy"}
    assert "--enable-v2=true" in services["etcd"]["command"]
    for name in ["etcd", *nodes]:
        assert "healthcheck" in services[name], name

    config = yaml.safe_load((ROOT / "deploy" / "patroni" / "patroni.yml").read_text())
    dcs = config["bootstrap"]["dcs"]
    assert dcs == tested.DCS  # the fault run bootstraps its cluster with these
    assert dcs["loop_wait"] + 2 * dcs["retry_timeout"] <= dcs["ttl"]  # Patroni's rule
    assert dcs["synchronous_mode"] is True
    assert dcs["synchronous_mode_strict"] is True
    assert dcs["primary_start_timeout"] == 0
    assert dcs["postgresql"]["use_pg_rewind"] is True
    # A standby that missed its slot on a new primary streams again within a loop_wait.
    retry = dcs["postgresql"]["parameters"]["wal_retrieve_retry_interval"]
    assert int(retry.removesuffix("s")) <= dcs["loop_wait"]
    assert "etcd" in config  # the v2 API (see patroni.yml)
    assert "etcd3" not in config


def compose_variables() -> dict[str, str]:
    """Every ``${NAME:-default}`` docker-compose.yml reads, with its default."""
    text = (ROOT / "docker-compose.yml").read_text()
    return dict(re.findall(r"\$\{([A-Z_][A-Z0-9_]*):-([^}]*)\}", text))


def test_every_image_is_a_variable_whose_default_is_pinned_to_an_exact_version():
    variables = compose_variables()
    for name, service in compose()["services"].items():
        image = service["image"]
        match = re.fullmatch(r"\$\{([A-Z_]+):-([^}]+)\}", image)
        assert match, f"{name}: image {image!r} is not read from a variable"
        default = match.group(2)
        if default.endswith(":local"):  # built here, never pulled
            assert service.get("pull_policy") == "never" or "build" in service, name
            continue
        tag = default.rsplit(":", 1)[1]
        assert re.match(r"v?\d+\.\d+(\.\d+)?", tag), f"{name}: {default} is not pinned"
        assert variables[match.group(1)] == default
    for dockerfile in (ROOT / "Dockerfile", ROOT / "deploy" / "patroni" / "Dockerfile"):
        base = re.search(r"^ARG [A-Z_]+_IMAGE=(\S+)$", dockerfile.read_text(), re.MULTILINE)
        assert base, f"{dockerfile}: its base image is not a build argument"
        assert re.search(r":\d+\.\d+\.?\d*-", base.group(1)), base.group(1)


def test_every_variable_compose_reads_is_documented_in_env_example():
    documented = set(
        re.findall(r"^# ([A-Z_][A-Z0-9_]*)=", (ROOT / ".env.example").read_text(), re.M)
    )
    assert set(compose_variables()) <= documented, set(compose_variables()) - documented


def test_urls_and_credentials_are_overridable():
    environment = compose()["services"]["api"]["environment"]
    for name in ("DATABASE_URL", "AMQP_URL"):
        assert environment[name].startswith(f"${{{name}:-"), name
    rabbitmq = compose()["services"]["rabbitmq"]["environment"]
    assert rabbitmq["RABBITMQ_DEFAULT_PASS"].startswith("${RABBITMQ_PASSWORD:-")


def test_the_metrics_profile_provisions_grafana_with_the_dashboard_on_its_prometheus():
    grafana = compose()["services"]["grafana"]
    assert grafana["profiles"] == ["metrics"]
    mounts = {v.split(":")[0]: v.split(":")[1] for v in grafana["volumes"]}
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    assert mounts["./deploy/grafana/dashboards"] == "/var/lib/grafana/dashboards"
    provisioning = ROOT / "deploy" / "grafana" / "provisioning"
    [source] = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())[
        "datasources"
    ]
    assert source["url"] == "http://prometheus:9090"
    assert "prometheus" in compose()["services"]
    [provider] = yaml.safe_load((provisioning / "dashboards" / "image-service.yml").read_text())[
        "providers"
    ]
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"
    dashboard = json.loads((ROOT / "deploy/grafana/dashboards/image-service.json").read_text())
    used = {t["datasource"]["uid"] for p in dashboard["panels"] for t in p["targets"]}
    assert used == {source["uid"]}
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
