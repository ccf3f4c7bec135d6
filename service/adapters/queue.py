"""RabbitMQ access: the only module that imports aio-pika.

Topology (declared idempotently by the API and the workers at start-up):

- ``<queue>``: a durable quorum queue of operation IDs with a delivery limit; a message
  delivered that many times without an ack is dead-lettered (at-least-once) to
- ``<queue>.dead``: a durable quorum queue whose consumer finishes those operations with an
  error.

Publishing waits for the broker's confirm, so a returned publish is durable in the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aio_pika
import aio_pika.abc
import aiormq
import structlog

from service.domain.errors import Unavailable

log = structlog.get_logger(__name__)

CLOSE_TIMEOUT_SECONDS = 5.0


@dataclass(frozen=True)
class Delivery:
    """One received message, reduced to what a handler needs."""

    operation_id: str
    delivery_count: int
    redelivered: bool


# Returns True to acknowledge the message, False to hand it back for redelivery.
Handler = Callable[[Delivery], Awaitable[bool]]


def dead_letter_queue(queue_name: str) -> str:
    return f"{queue_name}.dead"


def queue_arguments(queue_name: str, delivery_limit: int) -> dict[str, Any]:
    return {
        "x-queue-type": "quorum",
        "x-delivery-limit": delivery_limit,
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": dead_letter_queue(queue_name),
        "x-dead-letter-strategy": "at-least-once",
        # at-least-once dead-lettering requires reject-publish overflow
        "x-overflow": "reject-publish",
    }


class Broker:
    """A connection to RabbitMQ that is (re)established in the background.

    ``start`` returns at once; until the first connection succeeds, ``publish`` raises
    ``Unavailable`` and the outbox relay sends the operation later.
    """

    def __init__(self, url: str, queue_name: str, delivery_limit: int) -> None:
        self._url = url
        self._queue_name = queue_name
        self._delivery_limit = delivery_limit
        self._connection: aio_pika.abc.AbstractRobustConnection | None = None
        self._channel: aio_pika.abc.AbstractChannel | None = None
        self._connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def queue_name(self) -> str:
        return self._queue_name

    def start(self) -> None:
        self._task = asyncio.create_task(self._connect_forever(), name="broker-connect")

    async def wait_connected(self, timeout: float | None = None) -> None:
        await asyncio.wait_for(self._connected.wait(), timeout)

    def is_healthy(self) -> bool:
        return (
            self._connection is not None
            and not self._connection.is_closed
            and self._channel is not None
            and not self._channel.is_closed
        )

    async def _connect_forever(self) -> None:
        delay = 0.2
        while True:
            try:
                connection = await aio_pika.connect_robust(self._url, timeout=10)
                channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
                await self._declare(channel)
            except (OSError, aiormq.exceptions.AMQPError, TimeoutError) as exc:
                log.warning("broker.unreachable", error=type(exc).__name__, retry_in=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            self._connection, self._channel = connection, channel
            self._connected.set()
            log.info("broker.connected", queue=self._queue_name)
            return

    async def _declare(self, channel: aio_pika.abc.AbstractChannel) -> None:
        await channel.declare_queue(
            dead_letter_queue(self._queue_name),
            durable=True,
            arguments={"x-queue-type": "quorum"},
        )
        await channel.declare_queue(
            self._queue_name,
            durable=True,
            arguments=queue_arguments(self._queue_name, self._delivery_limit),
        )

    async def publish(self, operation_id: str, timeout: float) -> None:
        """Send one operation ID and wait for the broker's confirm."""
        channel = self._channel
        if channel is None or channel.is_closed:
            raise Unavailable("message broker unavailable")
        message = aio_pika.Message(
            body=operation_id.encode(),
            message_id=operation_id,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            content_type="text/plain",
        )
        try:
            await channel.default_exchange.publish(
                message, routing_key=self._queue_name, mandatory=True, timeout=timeout
            )
        except (
            OSError,
            TimeoutError,
            aiormq.exceptions.AMQPError,
            aio_pika.exceptions.DeliveryError,
            RuntimeError,
        ) as exc:
            raise Unavailable(f"publish failed: {type(exc).__name__}") from exc

    async def consume(self, queue_name: str, handler: Handler, prefetch: int) -> Consumer:
        """Start consuming ``queue_name`` on a channel of its own with ``prefetch`` unacked."""
        await self.wait_connected()
        assert self._connection is not None
        channel = await self._connection.channel()
        await channel.set_qos(prefetch_count=prefetch)
        queue = await channel.get_queue(queue_name, ensure=True)
        consumer = Consumer(channel, queue, handler)
        await consumer.start()
        return consumer

    async def close(self) -> None:
        """Close the connection; bounded in time even while the broker is unreachable."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._connection is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._connection.close(), CLOSE_TIMEOUT_SECONDS)


class Consumer:
    """Runs a handler per message; acks after it returns True, requeues otherwise."""

    def __init__(
        self,
        channel: aio_pika.abc.AbstractChannel,
        queue: aio_pika.abc.AbstractQueue,
        handler: Handler,
    ) -> None:
        self._channel = channel
        self._queue = queue
        self._handler = handler
        self._tag: str | None = None
        self._in_flight: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        self._tag = await self._queue.consume(self._on_message, no_ack=False)

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    async def _on_message(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._in_flight.add(task)
        try:
            delivery = Delivery(
                operation_id=message.body.decode(errors="replace"),
                delivery_count=int(str((message.headers or {}).get("x-delivery-count") or 0)),
                redelivered=bool(message.redelivered),
            )
            try:
                ok = await self._handler(delivery)
            except asyncio.CancelledError:
                # Shutting down: the message goes back for another worker.
                with contextlib.suppress(Exception):
                    await message.nack(requeue=True)
                raise
            except Exception:
                log.exception("consumer.handler_failed", operation_id=delivery.operation_id)
                ok = False
            if ok:
                await message.ack()
            else:
                await message.nack(requeue=True)
        finally:
            self._in_flight.discard(task)

    async def stop(self, grace: float) -> None:
        """Stop taking messages, let in-flight ones finish for ``grace`` seconds, then cancel."""
        if self._tag is not None and not self._channel.is_closed:
            # A cancel waits for the broker's answer: bounded, in case it just went away.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._queue.cancel(self._tag), CLOSE_TIMEOUT_SECONDS)
        pending = set(self._in_flight)
        if pending:
            _, still = await asyncio.wait(pending, timeout=grace)
            for task in still:
                task.cancel()
            if still:
                await asyncio.wait(still, timeout=5)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._channel.close(), CLOSE_TIMEOUT_SECONDS)
