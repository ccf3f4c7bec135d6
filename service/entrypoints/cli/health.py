"""``python -m service health``: is the API on this machine serving? The gRPC health service
of the whole server, dialled where GRPC_LISTEN binds, over TLS when TLS_CERT_FILE is set: the
container healthcheck, whatever the port and with TLS on or off."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from service.domain.endpoints import is_unspecified, split_host_port
from service.entrypoints.cli.failures import explained, fail, load_settings
from service.entrypoints.cli.helptext import SettingsCommand

HEALTH_SETTINGS = ("grpc_listen", "tls_cert_file", "public_endpoint")


def health_target(listen: str) -> str:
    """Where to dial the API that binds ``listen``: its host, or the loopback address for an
    unspecified one (``0.0.0.0``, ``[::]``)."""
    host, port = split_host_port(listen)
    if port == 0:
        raise ValueError(f"GRPC_LISTEN={listen}: the port is chosen at start; set one to check")
    if is_unspecified(host):
        host = "[::1]" if host.startswith("[") else "127.0.0.1"
    return f"{host}:{port}"


@click.command(cls=SettingsCommand, settings=HEALTH_SETTINGS)
@click.option(
    "--timeout", type=click.FloatRange(min=0.1), default=3.0, show_default=True, help="Seconds."
)
def health(timeout: float) -> None:
    """Exit 0 if the API this machine runs answers its gRPC health check SERVING, else 1 with
    the reason. With TLS_CERT_FILE, over TLS, the certificate trusted and checked for the
    host of PUBLIC_ENDPOINT (localhost when unset)."""
    with explained():
        settings = load_settings()
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        try:
            target = health_target(settings.grpc_listen)
        except ValueError as exc:
            fail(str(exc))
        if settings.tls_cert_file:
            name = split_host_port(settings.public_endpoint)[0] if settings.public_endpoint else ""
            credentials = grpc.ssl_channel_credentials(Path(settings.tls_cert_file).read_bytes())
            options = [("grpc.ssl_target_name_override", name.strip("[]") or "localhost")]
            channel = grpc.secure_channel(target, credentials, options=options)
        else:
            channel = grpc.insecure_channel(target)
        with channel:
            try:
                stub: Any = health_pb2_grpc.HealthStub(channel)  # the stubs' types miss Check
                answer = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
            except grpc.RpcError as exc:
                code = exc.code().name if hasattr(exc, "code") else "UNKNOWN"
                fail(f"the API at {target} did not answer its health check: {code}")
        status = health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)
        if answer.status != health_pb2.HealthCheckResponse.SERVING:
            fail(f"the API at {target} is {status}")
        click.echo(f"{target}: {status}")
