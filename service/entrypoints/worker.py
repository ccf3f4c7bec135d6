"""The worker process: consumers of the operation and dead-letter queues, plus the
supervised side loops (outbox relay, sweeper, retention, health file).

SIGTERM stops consumption, lets in-flight operations finish within the grace period, then
exits.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import structlog

from service.adapters.rabbitmq import ConsumerWatch, Delivery, dead_letter_queue
from service.bootstrap import (
    STARTUP_DEADLINE_SECONDS,
    Infrastructure,
    build_executor,
    start_infrastructure,
    start_metrics,
)
from service.domain.errors import ServiceError
from service.runtime import logs, metrics, tracing
from service.runtime.loop import run_loop
from service.runtime.retry import retrying
from service.runtime.settings import Settings
from service.runtime.startup import unless_stopped
from service.usecases.execute import Executor
from service.usecases.health import dependencies_ok
from service.usecases.outbox import publish_pending, requeue_abandoned
from service.usecases.ports import Unpublished
from service.usecases.retention import purge_expired

log = structlog.get_logger(__name__)


def _retryable(exc: Exception) -> bool:
    return isinstance(exc, ServiceError) and exc.retryable


async def _all_of(steps: list[Coroutine[Any, Any, bool]]) -> bool:
    """Run the steps of a message's operations together; True if every one succeeded. A
    message of one operation (most, at low load) runs it in place, with no task of its own."""
    if len(steps) == 1:
        return await steps[0]
    return all(await asyncio.gather(*steps))


class WorkerPool:
    """The handlers of the two queues and the steps of the side loops."""

    def __init__(self, infra: Infrastructure, executor: Executor) -> None:
        self._infra = infra
        self._settings = infra.settings
        self._executor = executor

    async def execute_operation(self, delivery: Delivery) -> bool:
        """Consumer handler: True (ack) once every operation of the message is done or not
        ours to do. They run together (the Updates among them in one statement); if one
        cannot be done now, the message goes back, and those done already are skipped when
        it comes again."""
        return await _all_of(
            [self._execute(operation, delivery) for operation in delivery.operations]
        )

    async def _execute(self, operation: Unpublished, delivery: Delivery) -> bool:
        operation_id = operation.operation_id
        with (
            structlog.contextvars.bound_contextvars(
                operation_id=operation_id, delivery_count=delivery.delivery_count
            ),
            tracing.consuming(self._settings.amqp_queue, operation_id, operation.trace_context),
        ):
            return await self._retrying(lambda: self._executor.execute(operation_id))

    async def abandon_dead_letter(self, delivery: Delivery) -> bool:
        """Dead-letter handler: the message failed too often; finish its operations (those
        done meanwhile are left as they are)."""
        done = await _all_of([self._abandon(operation) for operation in delivery.operations])
        if done:  # counted once, not once per redelivery of a message that failed
            metrics.DEAD_LETTERED.inc()
        return done

    async def _abandon(self, operation: Unpublished) -> bool:
        queue = dead_letter_queue(self._settings.amqp_queue)
        operation_id = operation.operation_id
        with (
            structlog.contextvars.bound_contextvars(operation_id=operation_id),
            # Dead-lettering keeps the headers: still the trace of the call that asked.
            tracing.consuming(queue, operation_id, operation.trace_context),
        ):
            limit = self._settings.amqp_delivery_limit
            return await self._retrying(
                lambda: self._executor.end_dead_lettered(operation_id, limit)
            )

    async def _retrying(self, step: Callable[[], Awaitable[None]]) -> bool:
        """Run ``step``, retrying transient errors for a while; False hands the message back."""
        try:
            async for attempt in retrying(
                "operation.execute", on=_retryable, timeout=self._settings.retry_max_seconds
            ):
                with attempt:
                    await step()
        except ServiceError as exc:
            log.warning("operation.requeued", error=exc.message)
            return False
        return True

    async def relay_outbox(self) -> None:
        s = self._settings
        await publish_pending(
            self._infra.postgres.outbox,
            self._infra.broker,
            older_than=s.outbox_grace_seconds,
            publish_timeout=s.publish_timeout_seconds,
        )

    async def sweep(self) -> None:
        await requeue_abandoned(
            self._infra.postgres.outbox,
            self._infra.broker,
            republish_after_seconds=self._settings.republish_after_seconds,
            # Every worker process is taken to run with this process's prefetch.
            prefetch=self._settings.worker_concurrency,
        )

    async def purge_expired(self) -> None:
        await purge_expired(
            self._infra.postgres.retention,
            operation_retention_seconds=self._settings.operation_retention_seconds,
            idempotency_ttl_seconds=self._settings.idempotency_ttl_seconds,
        )

    async def report_health(self) -> None:
        """Touch the health file while the database and broker work; remove it otherwise."""
        path = Path(self._settings.worker_health_file)
        ok = await dependencies_ok(
            self._infra.postgres.db, self._infra.broker, self._settings.health_interval_seconds
        )
        if ok:
            await asyncio.to_thread(path.touch)
        else:
            await asyncio.to_thread(path.unlink, missing_ok=True)


async def serve(settings: Settings, stop: asyncio.Event | None = None) -> None:
    """Run the worker pool until SIGTERM/SIGINT (or ``stop``)."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    infra = await start_infrastructure(settings, broker_wait=STARTUP_DEADLINE_SECONDS, stop=stop)
    if infra is None:
        log.info("workers.stopped", before_start=True)
        return
    metrics_server = start_metrics(infra, count_operations=True)
    pool = WorkerPool(infra, build_executor(infra))
    watch = ConsumerWatch(settings.consumer_watch_interval_seconds, settings.consumer_stall_seconds)
    broker = infra.broker
    # Consuming waits for the broker: a SIGTERM meanwhile ends the start-up.
    consumers = await unless_stopped(
        stop,
        asyncio.gather(
            broker.consume(
                settings.amqp_queue, pool.execute_operation, settings.worker_concurrency, watch
            ),
            broker.consume(
                dead_letter_queue(settings.amqp_queue), pool.abandon_dead_letter, 4, watch
            ),
        ),
    )
    if consumers is None:
        await infra.close()
        if metrics_server is not None:
            metrics_server.stop()
        log.info("workers.stopped", before_start=True)
        return
    consumer, dead = consumers
    supervisor = infra.supervisor
    supervisor.every("outbox", settings.outbox_interval_seconds, pool.relay_outbox)
    supervisor.every("sweeper", settings.sweep_interval_seconds, pool.sweep)
    supervisor.every("retention", settings.retention_interval_seconds, pool.purge_expired)
    if settings.worker_health_file:
        supervisor.every("health", settings.health_interval_seconds, pool.report_health)
    log.info("workers.started", queue=settings.amqp_queue, concurrency=settings.worker_concurrency)
    try:
        await stop.wait()
    finally:
        log.info("workers.draining", in_flight=consumer.in_flight)
        await consumer.stop(settings.worker_grace_seconds)
        await dead.stop(settings.worker_grace_seconds)
        await infra.close()
        if metrics_server is not None:
            metrics_server.stop()
        log.info("workers.stopped")


def main(settings: Settings | None = None) -> None:
    """Run the worker process (``python -m workers``, via ``service.entrypoints.cli.workers``)."""
    settings = settings or Settings()
    logs.configure(settings.log_level, component="workers")
    tracing.configure(settings, component="workers")
    try:
        run_loop(serve(settings), settings.event_loop)
    finally:
        tracing.shutdown()
