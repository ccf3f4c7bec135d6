"""The connection to RabbitMQ (one node, or any node of a cluster), the topology, publishing."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import aio_pika
import aio_pika.abc
import aiormq
import structlog

from service.adapters.rabbitmq.consumer import (
    CLOSE_TIMEOUT_SECONDS,
    Consumer,
    ConsumerWatch,
    Handler,
)
from service.adapters.rabbitmq.messages import encode_body, trace_headers
from service.adapters.rabbitmq.topology import (
    dead_letter_queue,
    dead_letter_queue_arguments,
    queue_arguments,
)
from service.domain.errors import Unavailable
from service.runtime import tracing
from service.runtime.retry import retrying
from service.usecases.ports import OutgoingMessage, QueueDepth

log = structlog.get_logger(__name__)

# A node that does not answer within this is skipped for the next one.
CONNECT_TIMEOUT_SECONDS = 10.0
# A publish channel opened while a quorum queue elects a new leader (the node of the old one
# just died, and with it this process's connection) can go on nacking every publish long
# after the election: seen with RabbitMQ 3.10 for 25 s and more, while a fresh channel on the
# same connection is acked at once. So a nack has the publish channel replaced, at most once
# per this many seconds (an election nacks every channel for a moment).
RENEW_NACKING_CHANNEL_SECONDS = 1.0
# Replacing it is bounded: meanwhile a lost connection would go unnoticed.
RENEW_TIMEOUT_SECONDS = 2.0
# With other nodes to go to, a node that does not confirm a publish in time is left for the
# next one: a node being shut down gracefully stops confirming seconds before it closes its
# connections, and one cut off from the others' majority never confirms. Not more often than
# this, so that a stall of the whole cluster does not make every process hop round the nodes.
LEAVE_SLOW_NODE_AFTER_SECONDS = 5.0


def broker_urls(amqp_url: str) -> list[str]:
    """The broker URLs in ``AMQP_URL``: one, or the nodes of a cluster separated by commas.

    A comma inside a URL (in a password, say) must be percent-encoded as ``%2C``.
    """
    urls = [url.strip() for url in amqp_url.split(",") if url.strip()]
    if not urls:
        raise ValueError("AMQP_URL holds no broker URL")
    return urls


def _sent_context(headers: dict[str, str] | None) -> str | None:
    return None if headers is None else headers.get("traceparent")


def _node(url: str) -> str:
    """host:port of a broker URL, for logs (never the credentials)."""
    return url.rsplit("@", 1)[-1].split("://", 1)[-1].split("/", 1)[0]


_CONNECT_ERRORS = (OSError, aiormq.exceptions.AMQPError, TimeoutError)

CloseCallback = Callable[[object, BaseException | None], None]
# An open connection: the connection, its publish channel, the event set when either closes,
# and the close callback that sets it.
_Opened = tuple[
    aio_pika.abc.AbstractConnection, aio_pika.abc.AbstractChannel, asyncio.Event, CloseCallback
]


def _ignore_close(_sender: object, _error: BaseException | None) -> None:
    """The close callback before the first connection."""


class Broker:
    """A connection to RabbitMQ: to one node, or to whichever node of a cluster answers.

    ``keep_connected`` (the background task) connects, and connects again whenever the
    connection is lost, trying the other nodes first: aio-pika's robust connection would only
    ever reconnect to the node it lost. After each reconnect the topology is declared again
    and every consumer subscribes again on the new connection. It also replaces a publish
    channel the broker nacked (``RENEW_NACKING_CHANNEL_SECONDS``).
    """

    def __init__(self, url: str, queue_name: str, delivery_limit: int) -> None:
        self._urls = broker_urls(url)
        self._queue_name = queue_name
        self._delivery_limit = delivery_limit
        self._first = 0  # index in _urls of the node the next connect tries first
        self._current = 0  # index in _urls of the node connected to
        self._connection: aio_pika.abc.AbstractConnection | None = None
        self._channel: aio_pika.abc.AbstractChannel | None = None
        self._lost = asyncio.Event()  # set when the connection or its publish channel closes
        self._mark_lost: CloseCallback = _ignore_close  # sets _lost: the close callback
        self._channel_opened = 0.0  # loop time the publish channel was opened
        self._connected_at = 0.0  # loop time of the last connect
        self._nacked: aio_pika.abc.AbstractChannel | None = None  # to replace
        self._wake = asyncio.Event()  # for keep_connected: lost, or a channel nacked
        self._connected = asyncio.Event()
        self._consumers: list[Consumer] = []

    async def wait_connected(self, timeout: float | None = None) -> None:
        await asyncio.wait_for(self._connected.wait(), timeout)

    def is_healthy(self) -> bool:
        return (
            self._connected.is_set()
            and not self._lost.is_set()
            and self._channel is not None
            and not self._channel.is_closed
        )

    async def keep_connected(self) -> None:
        """Connect, then connect again each time the connection is lost; runs until cancelled.

        While it is down, ``publish`` raises ``Unavailable`` (the outbox relay sends those
        operations later) and consumers wait.
        """
        while True:
            await self.connect()
            await self._resubscribe_consumers()
            while True:
                await self._wake.wait()
                self._wake.clear()
                if self._lost.is_set():
                    break
                await self._renew_nacked_channel()
            self._connected.clear()
            log.warning("broker.connection_lost", node=_node(self._urls[self._current]))
            # The node that failed is tried last.
            self._first = (self._current + 1) % len(self._urls)
            if self._connection is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self._connection.close(), CLOSE_TIMEOUT_SECONDS)

    async def connect(self) -> None:
        """Connect to the first node that answers, retrying (all of them, in turn) until one
        does, and declare the topology; returns once connected."""
        async for attempt in retrying("broker.connect", on=_CONNECT_ERRORS):
            with attempt:
                connection, channel, lost, mark_lost = await self._connect_any()
        self._connection, self._channel, self._lost = connection, channel, lost
        self._mark_lost = mark_lost
        self._channel_opened = self._connected_at = asyncio.get_running_loop().time()
        self._connected.set()
        log.info("broker.connected", queue=self._queue_name, node=_node(self._urls[self._current]))

    async def _connect_any(self) -> _Opened:
        error: BaseException | None = None
        for offset in range(len(self._urls)):
            index = (self._first + offset) % len(self._urls)
            try:
                opened = await self._connect_to(self._urls[index])
            except _CONNECT_ERRORS as exc:
                if len(self._urls) > 1:
                    log.info(
                        "broker.node_unreachable", node=_node(self._urls[index]), error=repr(exc)
                    )
                error = exc
                continue
            self._current = index
            return opened
        assert error is not None
        raise error

    async def _connect_to(self, url: str) -> _Opened:
        lost = asyncio.Event()

        def on_close(_sender: object, _error: BaseException | None) -> None:
            lost.set()
            self._wake.set()

        connection = await aio_pika.connect(url, timeout=CONNECT_TIMEOUT_SECONDS)
        try:
            connection.close_callbacks.add(on_close)
            channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
            # A publish channel closed by the broker (it never is on purpose) is handled as a
            # lost connection: the next one opens a fresh channel.
            channel.close_callbacks.add(on_close)
            await self._declare(channel)
        except BaseException:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(connection.close(), CLOSE_TIMEOUT_SECONDS)
            raise
        return connection, channel, lost, on_close

    async def _declare(self, channel: aio_pika.abc.AbstractChannel) -> None:
        await channel.declare_queue(
            dead_letter_queue(self._queue_name),
            durable=True,
            arguments=dead_letter_queue_arguments(),
        )
        await channel.declare_queue(
            self._queue_name,
            durable=True,
            arguments=queue_arguments(self._queue_name, self._delivery_limit),
        )

    async def publish(self, message: OutgoingMessage, timeout: float) -> None:
        """Send one message (its operations and their trace contexts; the wire form is
        ``messages``'s) and wait for the broker's confirm."""
        channel = self._channel
        if channel is None or channel.is_closed or not self._connected.is_set():
            raise Unavailable("message broker unavailable")
        with contextlib.ExitStack() as spans:
            # A producer span per operation, in the trace it was accepted in; their headers
            # carry each one's context to the worker (none while tracing is off).
            traceparents = [
                _sent_context(
                    spans.enter_context(
                        tracing.publishing(self._queue_name, sent.operation_id, sent.trace_context)
                    )
                )
                for sent in message.operations
            ]
            headers = trace_headers(traceparents)
            amqp_message = aio_pika.Message(
                body=encode_body(message.operation_ids),
                message_id=message.id,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                content_type="text/plain",
                headers=headers,  # type: ignore[arg-type]  # lists of text are a FieldTable's
            )
            try:
                await channel.default_exchange.publish(
                    amqp_message, routing_key=self._queue_name, mandatory=True, timeout=timeout
                )
            except aio_pika.exceptions.DeliveryError as exc:
                if isinstance(exc.frame, aiormq.spec.Basic.Nack):
                    self._nacked = channel  # keep_connected replaces it
                    self._wake.set()
                raise Unavailable(f"publish failed: {type(exc).__name__}") from exc
            except TimeoutError as exc:
                self._leave_if_slow(channel)
                raise Unavailable("publish failed: no confirm in time") from exc
            except (
                OSError,
                aiormq.exceptions.AMQPError,
                RuntimeError,
            ) as exc:
                raise Unavailable(f"publish failed: {type(exc).__name__}") from exc

    def _leave_if_slow(self, channel: aio_pika.abc.AbstractChannel) -> None:
        """A publish got no confirm in time: move to another node, if there is one (see
        LEAVE_SLOW_NODE_AFTER_SECONDS)."""
        if (
            len(self._urls) > 1
            and channel is self._channel
            and self._connected.is_set()
            and asyncio.get_running_loop().time() - self._connected_at
            >= LEAVE_SLOW_NODE_AFTER_SECONDS
        ):
            log.warning("broker.node_not_confirming", node=_node(self._urls[self._current]))
            self._lost.set()  # keep_connected closes this connection and tries the next node
            self._wake.set()

    async def _renew_nacked_channel(self) -> None:
        """Replace a publish channel the broker nacked (see RENEW_NACKING_CHANNEL_SECONDS)."""
        nacked, self._nacked = self._nacked, None
        connection, loop = self._connection, asyncio.get_running_loop()
        if (
            nacked is None
            or nacked is not self._channel
            or connection is None
            or loop.time() - self._channel_opened < RENEW_NACKING_CHANNEL_SECONDS
        ):
            return  # replaced already, or too soon: a later nack asks again
        try:
            fresh = await asyncio.wait_for(
                connection.channel(publisher_confirms=True, on_return_raises=True),
                RENEW_TIMEOUT_SECONDS,
            )
        except (OSError, TimeoutError, aiormq.exceptions.AMQPError, RuntimeError) as exc:
            log.warning("broker.publish_channel_not_renewed", error=repr(exc))
            return
        fresh.close_callbacks.add(self._mark_lost)
        nacked.close_callbacks.discard(self._mark_lost)  # its closing is ours, not a loss
        self._channel, self._channel_opened = fresh, loop.time()
        log.info("broker.publish_channel_renewed", node=_node(self._urls[self._current]))
        with contextlib.suppress(Exception):
            await asyncio.wait_for(nacked.close(), RENEW_TIMEOUT_SECONDS)

    async def queue_depth(self) -> QueueDepth:
        """Messages ready in the operation queue, and its consumers (the sweeper's question).

        A passive declare on a channel of its own: should it fail, the publish channel is
        not the one the broker closes.
        """
        connection = self._connection
        if connection is None or not self._connected.is_set():
            raise Unavailable("message broker unavailable")
        try:
            channel = await asyncio.wait_for(connection.channel(), CLOSE_TIMEOUT_SECONDS)
            try:
                queue = await channel.declare_queue(
                    self._queue_name, passive=True, timeout=CLOSE_TIMEOUT_SECONDS
                )
                declared = queue.declaration_result
                return QueueDepth(
                    ready=declared.message_count or 0, consumers=declared.consumer_count or 0
                )
            finally:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(channel.close(), CLOSE_TIMEOUT_SECONDS)
        except (OSError, TimeoutError, aiormq.exceptions.AMQPError, RuntimeError) as exc:
            raise Unavailable(f"queue depth unknown: {type(exc).__name__}") from exc

    async def consume(
        self,
        queue_name: str,
        handler: Handler,
        prefetch: int,
        watch: ConsumerWatch | None = None,
    ) -> Consumer:
        """Start consuming ``queue_name`` on a channel of its own with ``prefetch`` unacked;
        the consumer subscribes again after every reconnect."""
        await self.wait_connected()
        consumer = Consumer(
            self._open_channel, queue_name, handler, prefetch, watch or ConsumerWatch()
        )
        await consumer.start()
        self._consumers.append(consumer)
        return consumer

    async def _open_channel(self) -> aio_pika.abc.AbstractChannel:
        await self.wait_connected()
        connection = self._connection
        assert connection is not None
        return await connection.channel()

    async def _resubscribe_consumers(self) -> None:
        self._consumers = [c for c in self._consumers if not c.stopped]
        for consumer in self._consumers:
            try:
                # Bounded: waiting here would keep a lost connection from being noticed.
                await asyncio.wait_for(
                    consumer.ensure_subscribed("broker reconnected"), CONNECT_TIMEOUT_SECONDS
                )
            except Exception as exc:
                # Its watchdog tries again.
                log.warning(
                    "consumer.resubscribe_failed", queue=consumer.queue_name, error=repr(exc)
                )

    async def close(self) -> None:
        """Close the connection; bounded in time even while the broker is unreachable."""
        self._connected.clear()
        if self._connection is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._connection.close(), CLOSE_TIMEOUT_SECONDS)
