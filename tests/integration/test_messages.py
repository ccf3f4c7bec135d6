"""A message of several operations through the real RabbitMQ: what the broker publishes is
what the consumer hands its handler (every operation, in order, each with its trace context),
the queue counts it as one message, and the worker's counters count one message and its
operations."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable

import pytest
from prometheus_client import REGISTRY

from service.adapters.rabbitmq import Broker, Delivery
from service.runtime import tracing
from service.usecases.ports import OutgoingMessage, Unpublished
from tests.conftest import AMQP_URL
from tests.support import eventually

CALLER = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture
async def broker(queue_names: Callable[[str], str]) -> AsyncIterator[Broker]:
    broker = Broker(AMQP_URL, queue_names(f"-messages-{uuid.uuid4().hex[:6]}"), 5)
    await asyncio.wait_for(broker.connect(), 30)
    yield broker
    await broker.close()


def received(queue: str, what: str) -> float:
    return REGISTRY.get_sample_value(f"image_service_received_{what}_total", {"queue": queue}) or 0


async def test_a_message_of_several_operations_arrives_whole_in_one_delivery(broker: Broker):
    queue = broker._queue_name
    message = OutgoingMessage(
        "msg-integration",
        (Unpublished("opnfirst"), Unpublished("opnsecond"), Unpublished("opnthird")),
    )
    await broker.publish(message, 5)
    assert (await broker.queue_depth()).ready == 1  # one message, three operations

    deliveries: list[Delivery] = []

    async def handle(delivery: Delivery) -> bool:
        deliveries.append(delivery)
        return True

    messages_before = received(queue, "messages")
    operations_before = received(queue, "operations")
    consumer = await broker.consume(queue, handle, 4)
    try:
        await eventually(lambda: asyncio.sleep(0, deliveries), what="the delivery")
    finally:
        await consumer.stop(5)
    [delivery] = deliveries
    assert delivery.operations == message.operations
    assert delivery.message_id == "msg-integration"
    assert received(queue, "messages") == messages_before + 1
    assert received(queue, "operations") == operations_before + 3


async def test_each_operation_of_a_message_keeps_the_trace_it_was_accepted_in(broker: Broker):
    from opentelemetry.sdk.trace import TracerProvider

    provider = TracerProvider()
    tracing.use(provider)
    try:
        message = OutgoingMessage(
            "msg-traced", (Unpublished("opntraced", CALLER), Unpublished("opnuntraced"))
        )
        await broker.publish(message, 5)
        deliveries: list[Delivery] = []

        async def handle(delivery: Delivery) -> bool:
            deliveries.append(delivery)
            return True

        consumer = await broker.consume(broker._queue_name, handle, 4)
        try:
            await eventually(lambda: asyncio.sleep(0, deliveries), what="the delivery")
        finally:
            await consumer.stop(5)
    finally:
        tracing.use(None)
    traced, untraced = deliveries[0].operations
    assert (traced.operation_id, untraced.operation_id) == ("opntraced", "opnuntraced")
    # Each sent as a child of its own context: the caller's trace, and a trace of its own.
    assert traced.trace_context is not None
    assert traced.trace_context.split("-")[1] == CALLER.split("-")[1]
    assert untraced.trace_context is not None
    assert untraced.trace_context.split("-")[1] != CALLER.split("-")[1]
