"""The worker process: consumers of the operation and dead-letter queues, plus side loops.

Side loops (outbox relay, sweeper) run as named tasks; a loop that fails is logged and run
again after a pause, so one bad iteration never stops the pool. SIGTERM stops consumption,
lets in-flight operations finish within the grace period, then exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

import structlog

from service.adapters.queue import Broker, ConsumerWatch, Delivery, dead_letter_queue
from service.adapters.store import Store, wait_for_database
from service.domain.errors import ServiceError
from service.settings import Settings
from workers.executor import Executor
from workers.relay import publish_pending

log = structlog.get_logger(__name__)

STARTUP_DEADLINE_SECONDS = 60.0
RETENTION_BATCH = 1000


class WorkerPool:
    def __init__(self, settings: Settings, store: Store, broker: Broker) -> None:
        self._settings = settings
        self._store = store
        self._broker = broker
        self._executor = Executor(store, settings)

    async def execute_operation(self, delivery: Delivery) -> bool:
        """Consumer handler: True (ack) once the operation is done or not ours to do."""
        with structlog.contextvars.bound_contextvars(
            operation_id=delivery.operation_id, delivery_count=delivery.delivery_count
        ):
            return await self._retrying(lambda: self._executor.execute(delivery.operation_id))

    async def abandon_dead_letter(self, delivery: Delivery) -> bool:
        """Dead-letter handler: the message failed too often; finish its operation."""
        with structlog.contextvars.bound_contextvars(operation_id=delivery.operation_id):
            reason = (
                f"Operation failed after {self._settings.amqp_delivery_limit} delivery attempts"
            )
            return await self._retrying(
                lambda: self._executor.abandon(delivery.operation_id, reason)
            )

    async def _retrying(self, step: Callable[[], Awaitable[None]]) -> bool:
        """Run ``step``, retrying transient errors with backoff and jitter for a while."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self._settings.retry_max_seconds
        delay = 0.1
        while True:
            try:
                await step()
                return True
            except ServiceError as exc:
                if not exc.retryable or loop.time() + delay > give_up:
                    log.warning("operation.requeued", error=exc.message)
                    return False
                log.warning("operation.retry", error=exc.message, retry_in=round(delay, 2))
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 5.0)

    async def relay_outbox(self) -> None:
        s = self._settings
        await publish_pending(
            self._store,
            self._broker,
            older_than=s.outbox_grace_seconds,
            publish_timeout=s.publish_timeout_seconds,
        )

    async def purge_expired(self) -> None:
        """Retention: finished operations and idempotency keys past their age are removed."""
        s = self._settings
        removed = 0
        while True:
            batch = await self._store.delete_finished_operations(
                s.operation_retention_seconds, RETENTION_BATCH
            )
            removed += batch
            if batch < RETENTION_BATCH:
                break
        keys = await self._store.delete_expired_idempotency_keys(s.idempotency_ttl_seconds)
        if removed or keys:
            log.info("retention.purged", operations=removed, idempotency_keys=keys)

    async def report_health(self) -> None:
        """Touch the health file while the database and broker work; remove it otherwise."""
        path = Path(self._settings.worker_health_file)
        try:
            await asyncio.wait_for(self._store.ping(), self._settings.health_interval_seconds)
            ok = self._broker.is_healthy()
        except (ServiceError, TimeoutError):
            ok = False
        if ok:
            await asyncio.to_thread(path.touch)
        else:
            await asyncio.to_thread(path.unlink, missing_ok=True)

    async def sweep(self) -> None:
        requeued = await self._store.requeue_abandoned(self._settings.republish_after_seconds)
        if requeued:
            log.warning("sweeper.requeued", count=len(requeued), operation_ids=requeued[:20])


async def _every(interval: float, name: str, step: Callable[[], Awaitable[None]]) -> None:
    while True:
        try:
            await step()
        except ServiceError as exc:
            log.warning("loop.failed", loop=name, error=exc.message)
        except Exception:
            log.exception("loop.crashed", loop=name)
        await asyncio.sleep(interval)


async def run(settings: Settings, stop: asyncio.Event | None = None) -> None:
    """Run the worker pool until SIGTERM/SIGINT (or ``stop``)."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    store = await wait_for_database(settings, deadline=STARTUP_DEADLINE_SECONDS)
    broker = Broker(settings.amqp_url, settings.amqp_queue, settings.amqp_delivery_limit)
    broker.start()
    await broker.wait_connected(STARTUP_DEADLINE_SECONDS)
    pool = WorkerPool(settings, store, broker)
    watch = ConsumerWatch(settings.consumer_watch_interval_seconds, settings.consumer_stall_seconds)
    consumer = await broker.consume(
        settings.amqp_queue, pool.execute_operation, settings.worker_concurrency, watch
    )
    dead = await broker.consume(
        dead_letter_queue(settings.amqp_queue), pool.abandon_dead_letter, 4, watch
    )
    side_loops = [
        asyncio.create_task(
            _every(settings.outbox_interval_seconds, "outbox", pool.relay_outbox), name="outbox"
        ),
        asyncio.create_task(
            _every(settings.sweep_interval_seconds, "sweeper", pool.sweep), name="sweeper"
        ),
        asyncio.create_task(
            _every(settings.retention_interval_seconds, "retention", pool.purge_expired),
            name="retention",
        ),
    ]
    if settings.worker_health_file:
        side_loops.append(
            asyncio.create_task(
                _every(settings.health_interval_seconds, "health", pool.report_health),
                name="health",
            )
        )
    log.info("workers.started", queue=settings.amqp_queue, concurrency=settings.worker_concurrency)
    try:
        await stop.wait()
    finally:
        log.info("workers.draining", in_flight=consumer.in_flight)
        await consumer.stop(settings.worker_grace_seconds)
        await dead.stop(settings.worker_grace_seconds)
        for task in side_loops:
            task.cancel()
        for task in side_loops:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await broker.close()
        await store.close()
        log.info("workers.stopped")
