"""Looking at queues without changing them, for ``doctor`` and ``ops dead-letters``
(``usecases.ops_ports.QueueInspector``).

One short-lived connection, tried once per node: an operator's command says at once that the
broker is out of reach instead of retrying.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aio_pika
import aio_pika.abc
import aiormq

from service.adapters.rabbitmq.broker import broker_urls
from service.adapters.rabbitmq.consumer import CLOSE_TIMEOUT_SECONDS
from service.adapters.rabbitmq.topology import (
    dead_letter_queue,
    dead_letter_queue_arguments,
    queue_arguments,
)
from service.domain.setup import QueueMissing, Refused, Unreachable
from service.usecases.ops_ports import PeekedMessage, QueueState

CONNECT_TIMEOUT_SECONDS = 5.0
GET_TIMEOUT_SECONDS = 5.0


def broker_location(amqp_url: str) -> str:
    """host:port of each node in ``AMQP_URL``, for messages (never the credentials)."""
    return ",".join(
        url.rsplit("@", 1)[-1].split("://", 1)[-1].split("/", 1)[0] for url in broker_urls(amqp_url)
    )


def expected_queues(queue_name: str, delivery_limit: int) -> dict[str, dict[str, Any]]:
    """Each queue of the topology and the arguments the API and the workers declare it with."""
    return {
        queue_name: queue_arguments(queue_name, delivery_limit),
        dead_letter_queue(queue_name): dead_letter_queue_arguments(),
    }


class QueueInspection:
    """``QueueInspector`` over one open connection."""

    def __init__(self, connection: aio_pika.abc.AbstractConnection) -> None:
        self._connection = connection

    @asynccontextmanager
    async def _channel(self) -> AsyncIterator[aio_pika.abc.AbstractChannel]:
        # A refused declare closes its channel: each look gets a channel of its own.
        channel = await self._connection.channel()
        try:
            yield channel
        finally:
            if not channel.is_closed:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(channel.close(), CLOSE_TIMEOUT_SECONDS)

    async def queue_state(self, queue: str, arguments: dict[str, Any]) -> QueueState:
        try:
            async with self._channel() as channel:
                found = await channel.declare_queue(queue, passive=True)
        except aiormq.exceptions.ChannelNotFoundEntity:
            return QueueState(
                queue, exists=False, matches=False, detail="", messages=0, consumers=0
            )
        declared = found.declaration_result
        # The queue exists, so this declare creates nothing: the broker only compares the
        # arguments with the queue's and refuses (PRECONDITION_FAILED) when one differs.
        try:
            async with self._channel() as channel:
                await channel.declare_queue(queue, durable=True, arguments=arguments)
        except aiormq.exceptions.ChannelPreconditionFailed as exc:
            detail = str(exc.args[0] if exc.args else exc)
            return QueueState(
                queue,
                exists=True,
                matches=False,
                detail=detail.removeprefix("PRECONDITION_FAILED - "),
                messages=declared.message_count or 0,
                consumers=declared.consumer_count or 0,
            )
        return QueueState(
            queue,
            exists=True,
            matches=True,
            detail="",
            messages=declared.message_count or 0,
            consumers=declared.consumer_count or 0,
        )

    async def peek(self, queue: str, limit: int) -> list[PeekedMessage]:
        async with self._channel() as channel:
            try:
                source = await channel.get_queue(queue, ensure=True)
            except aiormq.exceptions.ChannelNotFoundEntity:
                raise QueueMissing(
                    f"there is no queue {queue}; the API and the workers declare it when they"
                    " start (is AMQP_QUEUE right?)"
                ) from None
            held: list[aio_pika.abc.AbstractIncomingMessage] = []
            try:
                # Held unacknowledged until all are read, so none is read twice; then all
                # are handed back (nack with requeue), in the order they were.
                while len(held) < limit:
                    message = await source.get(
                        no_ack=False, fail=False, timeout=GET_TIMEOUT_SECONDS
                    )
                    if message is None:
                        break
                    held.append(message)
                return [_peeked(message) for message in held]
            finally:
                for message in held:
                    with contextlib.suppress(Exception):
                        await message.nack(requeue=True)


def _peeked(message: aio_pika.abc.AbstractIncomingMessage) -> PeekedMessage:
    headers = message.headers or {}
    deaths = headers.get("x-death")
    reason = headers.get("x-first-death-reason") or ""
    if not reason and isinstance(deaths, list) and deaths and isinstance(deaths[0], dict):
        reason = deaths[0].get("reason") or ""
    count = headers.get("x-delivery-count")
    return PeekedMessage(
        operation_id=message.body.decode(errors="replace"),
        delivery_count=int(count) if isinstance(count, int) else 0,
        death_reason=reason.decode() if isinstance(reason, bytes) else str(reason),
    )


@asynccontextmanager
async def inspect_queues(amqp_url: str) -> AsyncIterator[QueueInspection]:
    """A ``QueueInspection`` on the first node of ``AMQP_URL`` that answers (each tried
    once); ``Unreachable`` or ``Refused`` when none will do."""
    errors: list[str] = []
    connection: aio_pika.abc.AbstractConnection | None = None
    for url in broker_urls(amqp_url):
        try:
            connection = await aio_pika.connect(url, timeout=CONNECT_TIMEOUT_SECONDS)
            break
        except aiormq.exceptions.ProbableAuthenticationError as exc:
            raise Refused(
                f"RabbitMQ at {broker_location(url)} refused the credentials; check AMQP_URL"
            ) from exc
        except (OSError, TimeoutError, aiormq.exceptions.AMQPError) as exc:
            errors.append(f"{broker_location(url)}: {type(exc).__name__}")
    if connection is None:
        raise Unreachable(
            f"cannot reach RabbitMQ ({'; '.join(errors)}); check AMQP_URL and that the broker"
            " is running"
        )
    try:
        yield QueueInspection(connection)
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(connection.close(), CLOSE_TIMEOUT_SECONDS)
