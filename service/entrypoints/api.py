"""The API process: the gRPC server, and the REST/JSON server beside it when ``HTTP_LISTEN`` is
set (``service.entrypoints.http``), over the use cases that ``service.bootstrap`` builds.
``api_processes`` runs several of them on one port; ``cli.service`` is its command line."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import grpc
import structlog
from google.longrunning import operations_pb2, operations_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from service.bootstrap import (
    ApiUseCases,
    Infrastructure,
    build_api,
    start_infrastructure,
    start_metrics,
)
from service.domain.accounts import audience_for
from service.domain.endpoints import announced_endpoints, is_unspecified, public_address
from service.entrypoints.grpc.calls import CallHandling
from service.entrypoints.grpc.convert import EncodedOperation, encode_operation
from service.entrypoints.grpc.endpoints import ApiEndpointService
from service.entrypoints.grpc.iam import IamTokenService
from service.entrypoints.grpc.servicers import (
    ImageService,
    LongRunningOperations,
    OperationService,
)
from service.entrypoints.http.server import start_http
from service.runtime import logs, tracing
from service.runtime.loop import run_loop
from service.runtime.settings import Settings
from service.usecases.health import dependencies_ok
from yandex.cloud.baremetal.v1alpha import image_service_pb2, image_service_pb2_grpc
from yandex.cloud.endpoint import api_endpoint_service_pb2, api_endpoint_service_pb2_grpc
from yandex.cloud.iam.v1 import iam_token_service_pb2, iam_token_service_pb2_grpc
from yandex.cloud.operation import operation_service_pb2, operation_service_pb2_grpc

log = structlog.get_logger(__name__)

SERVICE_NAMES = (
    image_service_pb2.DESCRIPTOR.services_by_name["ImageService"].full_name,
    operation_service_pb2.DESCRIPTOR.services_by_name["OperationService"].full_name,
    operations_pb2.DESCRIPTOR.services_by_name["Operations"].full_name,
    api_endpoint_service_pb2.DESCRIPTOR.services_by_name["ApiEndpointService"].full_name,
    iam_token_service_pb2.DESCRIPTOR.services_by_name["IamTokenService"].full_name,
)
# Serving before the broker is reached is safe (the outbox holds what cannot be sent), but a
# normal start should publish directly: give the connection a moment.
BROKER_STARTUP_WAIT_SECONDS = 5.0


def _listen(server: grpc.aio.Server, settings: Settings) -> int:
    """Bind the port: TLS only when a certificate is configured, else plaintext."""
    if settings.tls_cert_file:
        credentials = grpc.ssl_server_credentials(
            [
                (
                    Path(settings.tls_key_file).read_bytes(),
                    Path(settings.tls_cert_file).read_bytes(),
                )
            ]
        )
        return server.add_secure_port(settings.grpc_listen, credentials)
    return server.add_insecure_port(settings.grpc_listen)


def _grpc_server(
    settings: Settings, api: ApiUseCases[EncodedOperation]
) -> tuple[grpc.aio.Server, int]:
    """The server with every API service, its port bound (returned: ``:0`` picks one)."""
    server = grpc.aio.server(
        maximum_concurrent_rpcs=settings.grpc_max_concurrent_rpcs,
        options=[
            # Several API processes (API_PROCESSES) listen on one port; the kernel spreads
            # connections. Only then: a lone API must not share its port with a stale one.
            ("grpc.so_reuseport", int(settings.api_processes > 1)),
            ("grpc.max_receive_message_length", settings.grpc_max_message_bytes),
            ("grpc.max_send_message_length", settings.grpc_max_message_bytes),
        ],
    )
    # Bound before the services are added: endpoint discovery announces the bound port.
    port = _listen(server, settings)
    if port == 0:
        raise SystemExit(f"cannot listen on {settings.grpc_listen}")
    address = public_address(settings.public_endpoint, settings.grpc_listen, port)
    if not settings.iam_token_audiences.strip():
        api.exchange.accept_audience(audience_for(address))
    calls = CallHandling(api.authenticator, api.limiter, metered=bool(settings.metrics_listen))
    calls.add_services(
        server,
        (
            (image_service_pb2_grpc.add_ImageServiceServicer_to_server, ImageService(api.images)),
            (
                operation_service_pb2_grpc.add_OperationServiceServicer_to_server,
                OperationService(api.operations),
            ),
            (
                operations_pb2_grpc.add_OperationsServicer_to_server,
                LongRunningOperations(api.operations),
            ),
            (
                api_endpoint_service_pb2_grpc.add_ApiEndpointServiceServicer_to_server,
                ApiEndpointService(announced_endpoints(address)),
            ),
            (
                iam_token_service_pb2_grpc.add_IamTokenServiceServicer_to_server,
                IamTokenService(api.exchange),
            ),
        ),
    )
    return server, port


def _report_health(health: HealthServicer, infra: Infrastructure, interval: float) -> None:
    """SERVING while PostgreSQL and RabbitMQ are reachable, NOT_SERVING while one is not.

    Accepted operations are safe either way (the outbox waits for the broker); the status
    tells load balancers and operators that this instance cannot do its whole job.
    """
    last: list[bool] = []

    async def check() -> None:
        ok = await dependencies_ok(infra.postgres.db, infra.broker, timeout=interval)
        if last and last[0] == ok:
            return
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if ok
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", *SERVICE_NAMES):
            await health.set(name, status)
        log.log(20 if ok else 30, "health.changed", serving=ok)
        last[:] = [ok]

    infra.supervisor.every("health", interval, check)


async def serve(
    settings: Settings, stop: asyncio.Event | None = None, *, serve_metrics: bool = True
) -> None:
    """Run the API until SIGTERM/SIGINT (or ``stop``), then drain and return.

    ``serve_metrics`` False: the metrics are recorded but served by the parent process.
    """
    stop = stop or asyncio.Event()
    structlog.contextvars.bind_contextvars(pid=os.getpid())  # API_PROCESSES may run several
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    # The API's statements look rows up by key: planned once per connection (the group
    # commit's was planned anew on about half its runs, 200 µs of PostgreSQL CPU per Update).
    infra = await start_infrastructure(
        settings, broker_wait=BROKER_STARTUP_WAIT_SECONDS, stop=stop, generic_plans=True
    )
    if infra is None:
        log.info("api.stopped", before_start=True)
        return
    api = build_api(infra, encode_operation)
    server, port = _grpc_server(settings, api)
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection(
        (
            *SERVICE_NAMES,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ),
        server,
    )
    http = await start_http(settings, api) if settings.http_listen else None
    await server.start()
    _report_health(health, infra, settings.health_interval_seconds)
    metrics_server = start_metrics(infra, serve=serve_metrics)
    public = public_address(settings.public_endpoint, settings.grpc_listen, port)
    if not settings.public_endpoint and is_unspecified(settings.grpc_listen.rpartition(":")[0]):
        log.warning(
            "api.public_endpoint_guessed",
            announced=public,
            hint="set PUBLIC_ENDPOINT to the host:port clients dial",
        )
    log.info(
        "api.started",
        listen=settings.grpc_listen,
        port=port,
        tls=bool(settings.tls_cert_file),
        public_endpoint=public,
    )

    try:
        await stop.wait()
    finally:
        log.info("api.draining", grace_seconds=settings.grpc_grace_seconds)
        await health.enter_graceful_shutdown()
        # Both drain at once: REST requests in flight get the same grace as gRPC calls.
        http_stopped = http.stop() if http is not None else asyncio.sleep(0)
        await asyncio.gather(server.stop(settings.grpc_grace_seconds), http_stopped)
        await infra.supervisor.stop()
        await api.marks.flush()  # what the last calls published, marked before exit
        await infra.close()
        if metrics_server is not None:
            metrics_server.stop()
        log.info("api.stopped")


def serve_api(settings: Settings, *, metrics_served_by_parent: bool = False) -> None:
    """One API process: its own event loop, pools and server."""
    logs.configure(settings.log_level, component="api")
    tracing.configure(settings, component="api")
    try:
        run_loop(serve(settings, serve_metrics=not metrics_served_by_parent), settings.event_loop)
    finally:
        tracing.shutdown()
