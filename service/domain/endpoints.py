"""The API endpoints this server announces to endpoint discovery (``ApiEndpointService``).

The official SDKs and the CLI are given one endpoint; they ask its ``ApiEndpointService.List``
for the address of each service by ID and dial that address. This server serves every API on
one port, so every ID it answers for has one address: the one clients should dial
(``PUBLIC_ENDPOINT``), which behind a load balancer or a container's port mapping differs from
the one the server binds (``GRPC_LISTEN``).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from service.domain.errors import FieldViolation, InvalidArgument, NotFound

# The service IDs answered, each with this server's address.
SERVICE_IDS = (
    # ImageService: the ID of the BareMetal API in the Go SDK (ycsdk.BaremetalServiceID) and so
    # in the CLI.
    "baremetal",
    # ApiEndpointService itself.
    "endpoint",
    # IamTokenService: an SDK given a service account's key (service_account_key=) exchanges
    # it here for IAM tokens. The Python SDK (yandexcloud) reads the `iam` entry to build the
    # credentials of every channel, even when it is given an IAM token that it never
    # exchanges: without it, `sdk.client(...)` fails with KeyError('iam').
    "iam",
    # OperationService: `sdk.client(OperationServiceStub)` and the SDK's operation waiter.
    "operation",
)
# What an unspecified listen host (0.0.0.0, [::]) is announced as when PUBLIC_ENDPOINT is
# unset: the one name that surely reaches the server, from the same machine. Anything else
# (a host name, an outside address) is a guess that can be wrong; set PUBLIC_ENDPOINT.
UNSPECIFIED_HOST_STANDIN = "localhost"


@dataclass(frozen=True)
class ApiEndpoint:
    """Where clients reach one API: its service ID and the host:port they dial."""

    id: str
    address: str


def split_host_port(text: str) -> tuple[str, int]:
    """``host:port`` (an IPv6 host in brackets) as (host, port); ``ValueError`` if it is not."""
    host, colon, port_text = text.rpartition(":")
    if not colon or not host:
        raise ValueError(f"{text!r} is not host:port")
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if ":" in bare and bare == host:
        raise ValueError(f"{text!r}: put an IPv6 address in brackets, e.g. [::1]:50051")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"{text!r}: the port must be a number from 0 to 65535")
    return host, int(port_text)


def is_unspecified(host: str) -> bool:
    """True for a host that means "every interface": empty, 0.0.0.0, [::]."""
    bare = host.strip("[]")
    if not bare:
        return True
    try:
        return ipaddress.ip_address(bare).is_unspecified
    except ValueError:
        return False  # a name


def check_public_endpoint(text: str) -> None:
    """Refuse a PUBLIC_ENDPOINT no client could dial (``ValueError`` says why)."""
    host, port = split_host_port(text)
    if port == 0:
        raise ValueError(f"{text!r}: a client cannot dial port 0")
    if is_unspecified(host):
        raise ValueError(f"{text!r}: a client cannot dial an unspecified address")


def public_address(public_endpoint: str, listen: str, bound_port: int) -> str:
    """The address clients should dial.

    ``public_endpoint`` when set; else ``listen``'s host with the port actually bound (the
    one chosen for ``:0``), an unspecified host announced as ``localhost``.
    """
    if public_endpoint:
        return public_endpoint
    host = listen.rpartition(":")[0]
    if is_unspecified(host):
        host = UNSPECIFIED_HOST_STANDIN
    return f"{host}:{bound_port}"


def announced_endpoints(address: str) -> tuple[ApiEndpoint, ...]:
    """Every service ID this server answers for, all at ``address``."""
    return tuple(ApiEndpoint(id=service_id, address=address) for service_id in SERVICE_IDS)


def find_endpoint(endpoints: Iterable[ApiEndpoint], endpoint_id: str) -> ApiEndpoint:
    """The endpoint of ``endpoint_id``; ``InvalidArgument`` if none is named, else ``NotFound``."""
    if not endpoint_id:
        raise InvalidArgument([FieldViolation("api_endpoint_id", "is required")])
    for endpoint in endpoints:
        if endpoint.id == endpoint_id:
            return endpoint
    raise NotFound(f"Api endpoint {endpoint_id} not found")
