"""The compose file announces, through endpoint discovery, the address a client on the host
dials: the API's port as published, not the address the container binds."""

from __future__ import annotations

import re
from typing import Any

import yaml

from service.domain.endpoints import check_public_endpoint, split_host_port
from tests.support import ROOT

# ${NAME:-default} and ${NAME-default}: what compose substitutes when NAME is unset.
_DEFAULTED = re.compile(r"\$\{(?P<name>\w+):?-(?P<default>[^}]*)\}")


def as_run_without_overrides(value: str) -> str:
    """A compose value as it is when the environment sets none of its variables."""
    return _DEFAULTED.sub(lambda m: m["default"], value)


def api_service() -> dict[str, Any]:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    service: dict[str, Any] = compose["services"]["api"]
    return service


def published_ports(service: dict[str, Any]) -> dict[int, int]:
    """Host port -> container port, from short-syntax ``[ip:]host:container`` entries."""
    ports = {}
    for entry in service.get("ports", []):
        *_, host, container = as_run_without_overrides(str(entry)).split(":")
        ports[int(host)] = int(container)
    return ports


def test_compose_announces_the_address_a_client_on_the_host_dials():
    api = api_service()
    environment = {k: as_run_without_overrides(str(v)) for k, v in api["environment"].items()}
    public = environment["PUBLIC_ENDPOINT"]
    assert public == "localhost:50051"
    check_public_endpoint(public)  # the API would accept it at start

    # The host port announced is published, and leads to the port the API binds.
    _, public_port = split_host_port(public)
    _, listen_port = split_host_port(environment["GRPC_LISTEN"])
    assert published_ports(api)[public_port] == listen_port


def test_a_compose_default_is_read_as_compose_reads_it():
    assert as_run_without_overrides("${PUBLIC_ENDPOINT:-localhost:50051}") == "localhost:50051"
    assert as_run_without_overrides("a-${X-b}-c") == "a-b-c"
    assert as_run_without_overrides("plain:1") == "plain:1"
