"""The API process: the gRPC server over the use cases that ``service.bootstrap`` builds."""

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

from service.bootstrap import Api, Infrastructure, build_api, start_infrastructure
from service.entrypoints.grpc.calls import CallHandling
from service.entrypoints.grpc.convert import encode_operation
from service.entrypoints.grpc.servicers import (
    ImageService,
    LongRunningOperations,
    OperationService,
)
from service.runtime import logs
from service.runtime.loop import run_loop
from service.runtime.settings import Settings
from service.usecases.health import dependencies_ok
from yandex.cloud.baremetal.v1alpha import image_service_pb2, image_service_pb2_grpc
from yandex.cloud.operation import operation_service_pb2, operation_service_pb2_grpc

log = structlog.get_logger(__name__)

SERVICE_NAMES = (
    image_service_pb2.DESCRIPTOR.services_by_name["ImageService"].full_name,
    operation_service_pb2.DESCRIPTOR.services_by_name["OperationService"].full_name,
    operations_pb2.DESCRIPTOR.services_by_name["Operations"].full_name,
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


def _grpc_server(settings: Settings, api: Api) -> grpc.aio.Server:
    server = grpc.aio.server(
        maximum_concurrent_rpcs=settings.grpc_max_concurrent_rpcs,
        options=[
            # Several API processes may listen on one port; the kernel spreads connections.
            ("grpc.so_reuseport", 1),
            ("grpc.max_receive_message_length", settings.grpc_max_message_bytes),
            ("grpc.max_send_message_length", settings.grpc_max_message_bytes),
        ],
    )
    CallHandling(api.authenticator, api.limiter).add_services(
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
        ),
    )
    return server


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


async def serve(settings: Settings, stop: asyncio.Event | None = None) -> None:
    """Run the API until SIGTERM/SIGINT (or ``stop``), then drain and return."""
    stop = stop or asyncio.Event()
    structlog.contextvars.bind_contextvars(pid=os.getpid())  # API_PROCESSES may run several
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    infra = await start_infrastructure(settings, broker_wait=BROKER_STARTUP_WAIT_SECONDS)
    api = build_api(infra, encode_operation)
    server = _grpc_server(settings, api)
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
    port = _listen(server, settings)
    if port == 0:
        raise SystemExit(f"cannot listen on {settings.grpc_listen}")
    await server.start()
    _report_health(health, infra, settings.health_interval_seconds)
    log.info(
        "api.started", listen=settings.grpc_listen, port=port, tls=bool(settings.tls_cert_file)
    )

    try:
        await stop.wait()
    finally:
        log.info("api.draining", grace_seconds=settings.grpc_grace_seconds)
        await health.enter_graceful_shutdown()
        await server.stop(settings.grpc_grace_seconds)
        await infra.supervisor.stop()
        await api.marks.flush()  # what the last calls published, marked before exit
        await infra.close()
        log.info("api.stopped")


def serve_api(settings: Settings) -> None:
    """One API process: its own event loop, pools and server."""
    logs.configure(settings.log_level, component="api")
    run_loop(serve(settings), settings.event_loop)
