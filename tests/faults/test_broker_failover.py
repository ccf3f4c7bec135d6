"""The Broker given several nodes: it connects to one that answers and moves to another when
its node is lost, consumers and publishes following it.

Each "node" here is a TCP proxy in front of the machine's one RabbitMQ: cutting a proxy drops
its connections and refuses new ones, as a dead node does, without touching the broker. (The
real three-node cluster runs in test_cluster_faults.py.)
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import aio_pika
import aio_pika.abc
import aiormq
import pytest

from service.adapters.rabbitmq import Broker, Consumer, Delivery, broker_urls
from service.adapters.rabbitmq import broker as broker_module
from service.domain.errors import Unavailable
from tests.conftest import AMQP_URL
from tests.faults.cluster import free_port
from tests.support import TcpProxy, eventually, messages_of

BROKER_HOST, BROKER_PORT = "127.0.0.1", int(AMQP_URL.rsplit(":", 1)[1].strip("/") or 5672)


def proxied_url(proxy: TcpProxy) -> str:
    return AMQP_URL.replace(f":{BROKER_PORT}", f":{proxy.port}", 1)


class Node(TcpProxy):
    """A "node": a proxy to the machine's broker that counts its open connections."""

    @property
    def connections(self) -> int:
        return len(self._writers) // 2  # each connection: the client's side and the broker's


@pytest.fixture
async def nodes() -> AsyncIterator[list[Node]]:
    proxies = [await Node(BROKER_HOST, BROKER_PORT).start() for _ in range(2)]
    yield proxies
    for proxy in proxies:
        await proxy.close()


class Received:
    """A consumer handler that records the operation IDs it was given."""

    def __init__(self) -> None:
        self.ids: list[str] = []

    async def __call__(self, delivery: Delivery) -> bool:
        self.ids.append(delivery.operations[0].operation_id)
        return True


class Running:
    """A Broker's keep_connected task, and the consumers to stop with it."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.task = asyncio.create_task(broker.keep_connected())
        self.consumers: list[Consumer] = []

    async def consume(self, queue: str, received: Received) -> None:
        self.consumers.append(await self.broker.consume(queue, received, prefetch=4))


@contextlib.asynccontextmanager
async def running(broker: Broker) -> AsyncIterator[Running]:
    run = Running(broker)
    try:
        yield run
    finally:
        for consumer in run.consumers:
            await consumer.stop(grace=1)
        run.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await run.task
        await broker.close()


async def published_and_received(broker: Broker, received: Received, operation_id: str) -> None:
    """Publish (retrying while the broker reconnects) and wait for the consumer to get it."""

    async def published() -> bool:
        try:
            await broker.publish(messages_of([operation_id])[0], timeout=5)
        except Unavailable:
            return False
        return True

    await eventually(published, timeout=30, interval=0.1, what=f"{operation_id} published")

    async def arrived() -> bool:
        return operation_id in received.ids

    await eventually(arrived, timeout=30, what=f"{operation_id} consumed")


def test_amqp_url_holds_one_url_or_several_separated_by_commas() -> None:
    assert broker_urls("amqp://a/") == ["amqp://a/"]
    assert broker_urls(" amqp://a:1/ , amqp://b:2/,amqp://c:3/,") == [
        "amqp://a:1/",
        "amqp://b:2/",
        "amqp://c:3/",
    ]
    with pytest.raises(ValueError, match="no broker URL"):
        broker_urls(" , ")


async def test_the_broker_connects_to_the_first_node_that_answers(
    nodes: list[Node], queue_names: Callable[[str], str]
) -> None:
    dead = f"amqp://guest:guest@127.0.0.1:{free_port()}/"  # nothing listens there
    broker = Broker(f"{dead},{proxied_url(nodes[0])}", queue_names("-failover-first"), 5)
    received = Received()
    async with running(broker) as run:
        await broker.wait_connected(30)
        assert broker.is_healthy()
        await run.consume(queue_names("-failover-first"), received)
        await published_and_received(broker, received, "opfirst")


async def test_the_broker_moves_to_another_node_when_its_node_is_lost(
    nodes: list[Node], queue_names: Callable[[str], str]
) -> None:
    queue = queue_names("-failover-move")
    broker = Broker(",".join(proxied_url(node) for node in nodes), queue, 5)
    received = Received()
    async with running(broker) as run:
        await broker.wait_connected(30)
        await run.consume(queue, received)
        await published_and_received(broker, received, "opbefore")

        await nodes[0].cut()
        # Publishes and the consumer follow the connection to the other node.
        await published_and_received(broker, received, "opafter")
        assert broker.is_healthy()

        # And back, when that one is lost in turn and the first is up again.
        await nodes[0].restore()
        await nodes[1].cut()
        await published_and_received(broker, received, "opback")
        assert not run.task.done()
    assert received.ids.count("opafter") >= 1


async def test_a_broker_with_one_node_reconnects_to_it_when_it_comes_back(
    nodes: list[Node], queue_names: Callable[[str], str]
) -> None:
    queue = queue_names("-failover-single")
    broker = Broker(proxied_url(nodes[0]), queue, 5)
    received = Received()
    async with running(broker) as run:
        await broker.wait_connected(30)
        await run.consume(queue, received)
        await nodes[0].cut()

        async def noticed() -> bool:
            return not broker.is_healthy()

        await eventually(noticed, timeout=10, what="the lost connection noticed")
        with pytest.raises(Unavailable):
            await broker.publish(messages_of(["opwhiledown"])[0], timeout=1)
        await nodes[0].restore()
        await published_and_received(broker, received, "opreturned")


async def test_a_publish_channel_the_broker_nacks_is_replaced(
    nodes: list[Node], queue_names: Callable[[str], str]
) -> None:
    """A channel opened during a quorum queue's election can nack every publish long after
    it (RabbitMQ 3.10); here its exchange is made to nack every publish."""
    queue = queue_names("-failover-nack")
    broker = Broker(proxied_url(nodes[0]), queue, 5)
    received = Received()
    async with running(broker) as run:
        await broker.wait_connected(30)
        await run.consume(queue, received)
        nacking = broker._channel
        assert nacking is not None

        async def nack(*_args: object, **_kwargs: object) -> None:
            raise aio_pika.exceptions.DeliveryError(None, aiormq.spec.Basic.Nack())

        nacking.default_exchange.publish = nack  # type: ignore[method-assign]
        with pytest.raises(Unavailable, match="DeliveryError"):
            await broker.publish(messages_of(["opnacked"])[0], timeout=5)
        await published_and_received(broker, received, "opafternack")
        assert broker._channel is not nacking
        assert broker.is_healthy()


def never_confirmed(channel: aio_pika.abc.AbstractChannel) -> None:
    """Make every publish on ``channel`` time out waiting for its confirm."""

    async def publish(*_args: object, **_kwargs: object) -> None:
        raise TimeoutError

    channel.default_exchange.publish = publish  # type: ignore[method-assign]


async def test_a_node_that_does_not_confirm_in_time_is_left_for_another(
    nodes: list[Node], queue_names: Callable[[str], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node being shut down gracefully stops confirming before it closes its connections."""
    monkeypatch.setattr(broker_module, "LEAVE_SLOW_NODE_AFTER_SECONDS", 0.0)
    queue = queue_names("-failover-slow")
    broker = Broker(",".join(proxied_url(node) for node in nodes), queue, 5)
    received = Received()
    async with running(broker) as run:
        await broker.wait_connected(30)
        await run.consume(queue, received)
        slow = broker._channel
        assert slow is not None
        never_confirmed(slow)
        with pytest.raises(Unavailable, match="no confirm in time"):
            await broker.publish(messages_of(["opunconfirmed"])[0], timeout=1)
        # Moved: published on the other node's connection, and consumed there.
        await published_and_received(broker, received, "opmoved")
        assert broker._channel is not slow
        assert nodes[1].connections > 0


async def test_a_single_node_that_does_not_confirm_in_time_is_kept(
    nodes: list[Node], queue_names: Callable[[str], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(broker_module, "LEAVE_SLOW_NODE_AFTER_SECONDS", 0.0)
    queue = queue_names("-failover-slow-single")
    broker = Broker(proxied_url(nodes[0]), queue, 5)
    async with running(broker):
        await broker.wait_connected(30)
        slow = broker._channel
        assert slow is not None
        never_confirmed(slow)
        with pytest.raises(Unavailable, match="no confirm in time"):
            await broker.publish(messages_of(["opunconfirmed"])[0], timeout=1)
        # Nowhere else to go: a reconnect to the same node would only cost the consumers.
        assert broker._channel is slow
        assert broker.is_healthy()
