"""The composition root of the API process: wires store, broker, app, servicers and server."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path

import grpc
import structlog
from google.longrunning import operations_pb2, operations_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from service.adapters.queue import Broker
from service.adapters.store import DoneListener, Store, wait_for_database
from service.api.calls import CallHandling
from service.api.servicers import ImageService, LongRunningOperations, OperationService
from service.app import ImageApp
from service.authn import Authenticator
from service.domain.errors import ServiceError
from service.domain.network import NetworkPolicy, parse_networks
from service.domain.ratelimit import RateLimiter
from service.published import PublishedMarks
from service.settings import Settings
from service.waiters import OperationWaiters
from yandex.cloud.baremetal.v1alpha import image_service_pb2, image_service_pb2_grpc
from yandex.cloud.operation import operation_service_pb2, operation_service_pb2_grpc

log = structlog.get_logger(__name__)

SERVICE_NAMES = (
    image_service_pb2.DESCRIPTOR.services_by_name["ImageService"].full_name,
    operation_service_pb2.DESCRIPTOR.services_by_name["OperationService"].full_name,
    operations_pb2.DESCRIPTOR.services_by_name["Operations"].full_name,
)
STARTUP_DEADLINE_SECONDS = 60.0
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


async def dependencies_ok(store: Store, broker: Broker, timeout: float) -> bool:
    """Whether the database answers and the broker connection is up."""
    try:
        await asyncio.wait_for(store.ping(), timeout)
    except (ServiceError, TimeoutError):
        return False
    return broker.is_healthy()


async def _report_health(
    health: HealthServicer, store: Store, broker: Broker, interval: float
) -> None:
    """SERVING while PostgreSQL and RabbitMQ are reachable, NOT_SERVING while one is not.

    Accepted operations are safe either way (the outbox waits for the broker); the status
    tells load balancers and operators that this instance cannot do its whole job.
    """
    last: bool | None = None
    while True:
        ok = await dependencies_ok(store, broker, timeout=interval)
        if ok != last:
            status = (
                health_pb2.HealthCheckResponse.SERVING
                if ok
                else health_pb2.HealthCheckResponse.NOT_SERVING
            )
            for name in ("", *SERVICE_NAMES):
                await health.set(name, status)
            log.log(20 if ok else 30, "health.changed", serving=ok)
            last = ok
        await asyncio.sleep(interval)


async def serve(settings: Settings, stop: asyncio.Event | None = None) -> None:
    """Run the API until SIGTERM/SIGINT (or ``stop``), then drain and return."""
    stop = stop or asyncio.Event()
    structlog.contextvars.bind_contextvars(pid=os.getpid())  # API_PROCESSES may run several
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    store = await wait_for_database(settings, deadline=STARTUP_DEADLINE_SECONDS)
    broker = Broker(settings.amqp_url, settings.amqp_queue, settings.amqp_delivery_limit)
    broker.start()
    # Serving before the broker is reached is safe (the outbox holds what cannot be sent),
    # but a normal start should publish directly: give the connection a moment.
    with contextlib.suppress(TimeoutError):
        await broker.wait_connected(BROKER_STARTUP_WAIT_SECONDS)
    waiters = OperationWaiters()
    marks = PublishedMarks(store)
    marks.start()
    app = ImageApp(
        store,
        broker,
        publish_timeout=settings.publish_timeout_seconds,
        cache_size=settings.operation_cache_size,
        retention_seconds=settings.operation_retention_seconds,
        network_policy=NetworkPolicy(parse_networks(settings.download_allowed_networks)),
        waiters=waiters,
        marks=marks,
        page_bytes=settings.grpc_max_message_bytes // 2,
    )
    listener = asyncio.create_task(
        DoneListener(str(settings.database_url), app.operation_finished, waiters.wake_all).run(),
        name="done-listener",
    )

    calls = CallHandling(
        Authenticator(store, settings.auth_cache_seconds),
        RateLimiter(settings.rate_limit_per_second, settings.rate_limit_burst),
    )
    server = grpc.aio.server(
        maximum_concurrent_rpcs=settings.grpc_max_concurrent_rpcs,
        options=[
            # Several API processes may listen on one port; the kernel spreads connections.
            ("grpc.so_reuseport", 1),
            ("grpc.max_receive_message_length", settings.grpc_max_message_bytes),
            ("grpc.max_send_message_length", settings.grpc_max_message_bytes),
        ],
    )
    calls.add_services(
        server,
        (
            (image_service_pb2_grpc.add_ImageServiceServicer_to_server, ImageService(app)),
            (
                operation_service_pb2_grpc.add_OperationServiceServicer_to_server,
                OperationService(app, settings.operation_cache_size),
            ),
            (operations_pb2_grpc.add_OperationsServicer_to_server, LongRunningOperations(app)),
        ),
    )
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
    monitor = asyncio.create_task(
        _report_health(health, store, broker, settings.health_interval_seconds),
        name="health",
    )
    log.info(
        "api.started", listen=settings.grpc_listen, port=port, tls=bool(settings.tls_cert_file)
    )

    try:
        await stop.wait()
    finally:
        log.info("api.draining", grace_seconds=settings.grpc_grace_seconds)
        for task in (monitor, listener):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await health.enter_graceful_shutdown()
        await server.stop(settings.grpc_grace_seconds)
        await marks.close()
        await broker.close()
        with contextlib.suppress(Exception):
            await store.close()
        log.info("api.stopped")
