"""``Publisher`` and ``MessageQueue``: the broker as the API, the relay and the sweeper see it,
over the fakes of ``tests/unit/fakes.py`` and over RabbitMQ (a queue of each test's own)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest

from service.adapters.rabbitmq import Broker
from service.domain.errors import Unavailable
from service.usecases.ports import (
    MessageQueue,
    OutgoingMessage,
    Publisher,
    QueueDepth,
    Unpublished,
)
from tests.conftest import AMQP_URL
from tests.unit.fakes import FakePublisher, FakeQueue

TIMEOUT = 5.0
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def message(*operation_ids: str) -> OutgoingMessage:
    return OutgoingMessage(
        "msg-contract", tuple(Unpublished(i, TRACEPARENT) for i in operation_ids)
    )


@dataclass
class BrokerSide:
    """The broker's ports, and a way to lose it (``go_down``)."""

    publisher: Publisher
    queue: MessageQueue
    go_down: Callable[[], Awaitable[None]]


@pytest.fixture(params=["fake", "rabbitmq"])
async def broker(
    request: pytest.FixtureRequest, queue_names: Callable[[str], str]
) -> AsyncIterator[BrokerSide]:
    if request.param == "fake":
        publisher, queue = FakePublisher(), FakeQueue()

        async def fake_down() -> None:
            publisher.go_down()
            queue.depth = None

        yield BrokerSide(publisher, queue, fake_down)
        return
    real = Broker(AMQP_URL, queue_names(f"-contract-{uuid.uuid4().hex[:6]}"), 5)
    await asyncio.wait_for(real.connect(), 30)
    yield BrokerSide(real, real, real.close)
    await real.close()


async def test_a_connected_broker_is_healthy(broker: BrokerSide) -> None:
    assert broker.publisher.is_healthy()


async def test_a_publish_returns_once_confirmed(broker: BrokerSide) -> None:
    await broker.publisher.publish(message("opn-contract"), TIMEOUT)


async def test_a_message_of_several_operations_is_confirmed(broker: BrokerSide) -> None:
    await broker.publisher.publish(message("opn-contract1", "opn-contract2"), TIMEOUT)


async def test_a_new_queue_is_empty_and_unconsumed(broker: BrokerSide) -> None:
    assert await broker.queue.queue_depth() == QueueDepth(ready=0, consumers=0)


async def test_a_broker_that_is_down_is_not_healthy(broker: BrokerSide) -> None:
    await broker.go_down()

    assert not broker.publisher.is_healthy()


async def test_a_broker_that_is_down_refuses_a_publish(broker: BrokerSide) -> None:
    await broker.go_down()

    with pytest.raises(Unavailable):
        await broker.publisher.publish(message("opn-contract"), TIMEOUT)


async def test_a_broker_that_is_down_cannot_tell_the_queues_depth(broker: BrokerSide) -> None:
    await broker.go_down()

    with pytest.raises(Unavailable):
        await broker.queue.queue_depth()
