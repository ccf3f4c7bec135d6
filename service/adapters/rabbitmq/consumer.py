"""Consuming a queue: a handler per message, ack after it, and a watchdog that subscribes
again when the subscription is lost (a supervised task: a crash in it is logged and it runs
again, never a consumer silently left unwatched)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aio_pika.abc
import aiormq
import structlog

from service.adapters.rabbitmq.messages import decode
from service.runtime import metrics
from service.runtime.supervisor import Supervisor
from service.usecases.ports import Unpublished

log = structlog.get_logger(__name__)

# Closing a channel or cancelling a subscription waits for the broker: bounded, in case it
# just went away.
CLOSE_TIMEOUT_SECONDS = 5.0
SUBSCRIBE_TIMEOUT_SECONDS = 10.0
# What a look at the broker may meet while it restarts or a channel goes: the watchdog logs
# these and looks again at its next turn. Anything else is a bug, a crash of the watchdog,
# which its supervisor logs with the traceback and restarts.
BROKER_ERRORS = (OSError, TimeoutError, aiormq.exceptions.AMQPError, RuntimeError)


@dataclass(frozen=True)
class ConsumerWatch:
    """A consumer with room, while ready messages wait ``stall_seconds``, is taken for lost;
    checked every ``interval_seconds``."""

    interval_seconds: float = 5.0
    stall_seconds: float = 15.0


@dataclass(frozen=True)
class Delivery:
    """One received message, reduced to what a handler needs: the operations it carries, each
    with the W3C trace context its publisher sent, if any (``messages``)."""

    operations: tuple[Unpublished, ...]
    delivery_count: int
    message_id: str | None = None


# Returns True to acknowledge the message, False to hand it back for redelivery.
Handler = Callable[[Delivery], Awaitable[bool]]


ChannelFactory = Callable[[], Awaitable[aio_pika.abc.AbstractChannel]]


def consumer_is_lost(
    *, ready: int, in_flight: int, prefetch: int, idle_seconds: float, stall_seconds: float
) -> bool:
    """Messages wait, this consumer has room, and yet nothing arrived for a while."""
    return ready > 0 and in_flight < prefetch and idle_seconds > stall_seconds


class Consumer:
    """Runs a handler per message; acks after it returns True, requeues otherwise (a message
    carries several operations: the handler answers for all of them).

    It owns its channel. The broker subscribes it again after a reconnect
    (``ensure_subscribed``), but a consumer can still be lost on a live connection (cancelled
    by the broker, its channel closed by a failed operation, or left in a state that receives
    nothing). A watchdog notices and subscribes again on a fresh channel.
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
        # Since when the channel is seen closed by the watchdog (None: open).
        self._closed_since: float | None = None
        # The watchdog's own supervisor: stopped with this consumer, not with the process.
        self._tasks = Supervisor()
        # One (re)subscription at a time: the broker's reconnect and the watchdog may both try.
        self._subscribing = asyncio.Lock()
        self.stopped = False

    @property
    def queue_name(self) -> str:
        return self._queue_name

    @property
    def watchdog(self) -> str:
        """The name of the watchdog's task."""
        return f"watch-{self._queue_name}"

    def watchdog_restarts(self) -> int:
        """How often the watchdog crashed and was restarted."""
        return self._tasks.restarts(self.watchdog)

    async def start(self) -> None:
        await self._subscribe()
        self._tasks.start(self.watchdog, self._watch)

    async def ensure_subscribed(self, reason: str) -> None:
        """Subscribe again on a fresh channel unless the current one is open (or stopped)."""
        async with self._subscribing:
            if self.stopped or (self._channel is not None and not self._channel.is_closed):
                return
            await self._resubscribe_unlocked(reason)

    async def _subscribe(self) -> None:
        channel = await self._open_channel()
        try:
            # Bounded: a node that just lost its quorum may leave a declare unanswered.
            async with asyncio.timeout(SUBSCRIBE_TIMEOUT_SECONDS):
                await channel.set_qos(prefetch_count=self._prefetch)
                queue = await channel.get_queue(self._queue_name, ensure=True)
                tag = await queue.consume(self._on_message, no_ack=False)
        except BaseException:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(channel.close(), CLOSE_TIMEOUT_SECONDS)
            raise
        self._channel, self._queue, self._tag = channel, queue, tag
        self._last_delivery = asyncio.get_running_loop().time()

    async def _resubscribe(self, reason: str) -> None:
        async with self._subscribing:
            if not self.stopped:
                await self._resubscribe_unlocked(reason)

    async def _resubscribe_unlocked(self, reason: str) -> None:
        log.warning("consumer.lost", queue=self._queue_name, reason=reason)
        old = self._channel
        if old is not None and not old.is_closed:
            # Unacked messages of the old channel go back to the queue when it closes.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(old.close(), CLOSE_TIMEOUT_SECONDS)
        await self._subscribe()
        log.info("consumer.resubscribed", queue=self._queue_name)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._watch_settings.interval_seconds)
            try:
                await self._check_subscription()
            except BROKER_ERRORS as exc:
                log.warning("consumer.watch_failed", queue=self._queue_name, error=repr(exc))

    async def _check_subscription(self) -> None:
        """Subscribe again if the channel stayed closed, or messages wait and none arrive."""
        loop = asyncio.get_running_loop()
        stall = self._watch_settings.stall_seconds
        if self._channel is None or self._channel.is_closed:
            # Closed while its connection lives on (a reconnect reopens it sooner).
            self._closed_since = self._closed_since or loop.time()
            if loop.time() - self._closed_since > stall:
                await self.ensure_subscribed("channel closed")
                self._closed_since = None
            return
        self._closed_since = None
        if consumer_is_lost(
            ready=await self._ready_messages(),
            in_flight=len(self._in_flight),
            prefetch=self._prefetch,
            idle_seconds=loop.time() - self._last_delivery,
            stall_seconds=stall,
        ):
            await self._resubscribe("messages wait but none arrive")

    async def _ready_messages(self) -> int:
        """Messages ready in the queue, asked on a channel of its own: aiormq closes the
        channel of an RPC that times out (a busy broker can take seconds to answer), and
        that must not be the consuming one (its unacked messages would go back)."""
        channel = await asyncio.wait_for(self._open_channel(), CLOSE_TIMEOUT_SECONDS)
        try:
            queue = await channel.declare_queue(
                self._queue_name, passive=True, timeout=CLOSE_TIMEOUT_SECONDS
            )
            return queue.declaration_result.message_count or 0
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(channel.close(), CLOSE_TIMEOUT_SECONDS)

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    async def _on_message(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._in_flight.add(task)
        self._last_delivery = asyncio.get_running_loop().time()
        try:
            headers = message.headers or {}
            delivery = Delivery(
                operations=decode(message.body, headers),
                delivery_count=int(str(headers.get("x-delivery-count") or 0)),
                message_id=message.message_id,
            )
            metrics.message_received(self._queue_name, len(delivery.operations))
            try:
                ok = await self._handler(delivery)
            except asyncio.CancelledError:
                # Shutting down: the message goes back for another worker.
                with contextlib.suppress(Exception):
                    await message.nack(requeue=True)
                raise
            except Exception:
                log.exception(
                    "consumer.handler_failed",
                    message_id=delivery.message_id,
                    operation_ids=[o.operation_id for o in delivery.operations[:20]],
                )
                ok = False
            try:
                if ok:
                    await message.ack()
                else:
                    await message.nack(requeue=True)
            except (OSError, aiormq.exceptions.AMQPError, RuntimeError) as exc:
                # The channel went with its connection: the broker hands the message out
                # again, and a done operation claims nothing the second time.
                log.info("consumer.ack_lost", message_id=delivery.message_id, error=repr(exc))
        finally:
            self._in_flight.discard(task)

    async def stop(self, grace: float) -> None:
        """Stop taking messages, let in-flight ones finish for ``grace`` seconds, then cancel."""
        self.stopped = True
        await self._tasks.stop(CLOSE_TIMEOUT_SECONDS)
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
