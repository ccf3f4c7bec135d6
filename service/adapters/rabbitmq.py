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
from service.runtime.retry import retrying

log = structlog.get_logger(__name__)

CLOSE_TIMEOUT_SECONDS = 5.0


@dataclass(frozen=True)
class ConsumerWatch:
    """A consumer with room, while ready messages wait ``stall_seconds``, is taken for lost;
    checked every ``interval_seconds``."""

    interval_seconds: float = 5.0
    stall_seconds: float = 15.0


@dataclass(frozen=True)
class Delivery:
    """One received message, reduced to what a handler needs."""

    operation_id: str
    delivery_count: int


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
    """A connection to RabbitMQ, established by ``connect`` in the background."""

    def __init__(self, url: str, queue_name: str, delivery_limit: int) -> None:
        self._url = url
        self._queue_name = queue_name
        self._delivery_limit = delivery_limit
        self._connection: aio_pika.abc.AbstractRobustConnection | None = None
        self._channel: aio_pika.abc.AbstractChannel | None = None
        self._connected = asyncio.Event()

    async def wait_connected(self, timeout: float | None = None) -> None:
        await asyncio.wait_for(self._connected.wait(), timeout)

    def is_healthy(self) -> bool:
        return (
            self._connection is not None
            and not self._connection.is_closed
            and self._channel is not None
            and not self._channel.is_closed
        )

    async def connect(self) -> None:
        """Connect, retrying until the broker answers; run it as a background task.

        Until it returns, ``publish`` raises ``Unavailable`` and the outbox relay sends the
        operation later. After it, aio-pika's robust connection reconnects by itself.
        """
        async for attempt in retrying(
            "broker.connect", on=(OSError, aiormq.exceptions.AMQPError, TimeoutError)
        ):
            with attempt:
                connection = await aio_pika.connect_robust(self._url, timeout=10)
                channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
                await self._declare(channel)
        self._connection, self._channel = connection, channel
        self._connected.set()
        log.info("broker.connected", queue=self._queue_name)

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

    async def consume(
        self,
        queue_name: str,
        handler: Handler,
        prefetch: int,
        watch: ConsumerWatch | None = None,
    ) -> Consumer:
        """Start consuming ``queue_name`` on a channel of its own with ``prefetch`` unacked."""
        await self.wait_connected()
        connection = self._connection
        assert connection is not None

        async def open_channel() -> aio_pika.abc.AbstractChannel:
            return await connection.channel()

        consumer = Consumer(open_channel, queue_name, handler, prefetch, watch or ConsumerWatch())
        await consumer.start()
        return consumer

    async def close(self) -> None:
        """Close the connection; bounded in time even while the broker is unreachable."""
        if self._connection is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._connection.close(), CLOSE_TIMEOUT_SECONDS)


ChannelFactory = Callable[[], Awaitable[aio_pika.abc.AbstractChannel]]


def consumer_is_lost(
    *, ready: int, in_flight: int, prefetch: int, idle_seconds: float, stall_seconds: float
) -> bool:
    """Messages wait, this consumer has room, and yet nothing arrived for a while."""
    return ready > 0 and in_flight < prefetch and idle_seconds > stall_seconds


class Consumer:
    """Runs a handler per message; acks after it returns True, requeues otherwise.

    It owns its channel. A robust channel restores its consumer after a reconnect, but a
    consumer can still be lost on a live connection (cancelled by the broker, its channel
    closed by a failed operation, or restored in a state that receives nothing). A watchdog
    notices and subscribes again on a fresh channel.
    """

    def __init__(
        self,
        open_channel: ChannelFactory,
        queue_name: str,
        handler: Handler,
        prefetch: int,
        watch: ConsumerWatch,
    ) -> None:
        self._open_channel = open_channel
        self._queue_name = queue_name
        self._handler = handler
        self._prefetch = prefetch
        self._watch_settings = watch
        self._channel: aio_pika.abc.AbstractChannel | None = None
        self._queue: aio_pika.abc.AbstractQueue | None = None
        self._tag: str | None = None
        self._in_flight: set[asyncio.Task[Any]] = set()
        self._last_delivery = 0.0
        self._watchdog: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._subscribe()
        self._watchdog = asyncio.create_task(self._watch(), name=f"watch-{self._queue_name}")

    async def _subscribe(self) -> None:
        channel = await self._open_channel()
        await channel.set_qos(prefetch_count=self._prefetch)
        queue = await channel.get_queue(self._queue_name, ensure=True)
        self._channel, self._queue = channel, queue
        self._tag = await queue.consume(self._on_message, no_ack=False)
        self._last_delivery = asyncio.get_running_loop().time()

    async def _resubscribe(self, reason: str) -> None:
        log.warning("consumer.lost", queue=self._queue_name, reason=reason)
        old = self._channel
        if old is not None and not old.is_closed:
            # Unacked messages of the old channel go back to the queue when it closes.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(old.close(), CLOSE_TIMEOUT_SECONDS)
        await self._subscribe()
        log.info("consumer.resubscribed", queue=self._queue_name)

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        closed_since: float | None = None
        while True:
            await asyncio.sleep(self._watch_settings.interval_seconds)
            stall = self._watch_settings.stall_seconds
            try:
                if self._channel is None or self._channel.is_closed:
                    # Closed while its connection lives on (a reconnect reopens it sooner).
                    closed_since = closed_since or loop.time()
                    if loop.time() - closed_since > stall:
                        await self._resubscribe("channel closed")
                        closed_since = None
                    continue
                closed_since = None
                assert self._queue is not None
                declared = await self._queue.declare(timeout=CLOSE_TIMEOUT_SECONDS)
                if consumer_is_lost(
                    ready=declared.message_count or 0,
                    in_flight=len(self._in_flight),
                    prefetch=self._prefetch,
                    idle_seconds=loop.time() - self._last_delivery,
                    stall_seconds=stall,
                ):
                    await self._resubscribe("messages wait but none arrive")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("consumer.watch_failed", queue=self._queue_name, error=repr(exc))

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    async def _on_message(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._in_flight.add(task)
        self._last_delivery = asyncio.get_running_loop().time()
        try:
            delivery = Delivery(
                operation_id=message.body.decode(errors="replace"),
                delivery_count=int(str((message.headers or {}).get("x-delivery-count") or 0)),
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
        if self._watchdog is not None:
            self._watchdog.cancel()
        channel, queue = self._channel, self._queue
        if channel is None or queue is None:
            return
        if self._tag is not None and not channel.is_closed:
            # A cancel waits for the broker's answer: bounded, in case it just went away.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(queue.cancel(self._tag), CLOSE_TIMEOUT_SECONDS)
        pending = set(self._in_flight)
        if pending:
            _, still = await asyncio.wait(pending, timeout=grace)
            for task in still:
                task.cancel()
            if still:
                await asyncio.wait(still, timeout=5)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(channel.close(), CLOSE_TIMEOUT_SECONDS)
