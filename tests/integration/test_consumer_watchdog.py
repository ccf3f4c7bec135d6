"""A consumer's watchdog is a supervised task, against the real RabbitMQ: a crash in it is
logged with the task's name and the watchdog runs again; the broker's own errors are not
crashes, only warnings before its next look."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiormq
import pytest
from structlog.testing import capture_logs

from service.adapters.rabbitmq import Broker, ConsumerWatch, Delivery
from service.adapters.rabbitmq.consumer import Consumer
from tests.conftest import AMQP_URL
from tests.support import eventually

WATCH = ConsumerWatch(interval_seconds=0.02, stall_seconds=30)


@pytest.fixture
async def broker(queue_names: Callable[[str], str]) -> AsyncIterator[Broker]:
    broker = Broker(AMQP_URL, queue_names("-watchdog"), 5)
    connecting = asyncio.create_task(broker.connect())
    await broker.wait_connected(30)
    yield broker
    await connecting
    await broker.close()


async def handle(_: Delivery) -> bool:
    return True


def fail_first_looks(
    monkeypatch: pytest.MonkeyPatch, consumer: Consumer, error: Exception, looks: list[int]
) -> None:
    """Make the watchdog's first look at the queue raise ``error``; count every look."""
    original = consumer._ready_messages

    async def ready_messages(*args: Any, **kwargs: Any) -> int:
        looks.append(1)
        if len(looks) == 1:
            raise error
        return await original(*args, **kwargs)

    monkeypatch.setattr(consumer, "_ready_messages", ready_messages)


async def test_a_crash_in_the_watchdog_is_logged_and_the_watchdog_runs_again(
    monkeypatch: pytest.MonkeyPatch, broker: Broker, queue_names: Callable[[str], str]
):
    consumer = await broker.consume(queue_names("-watchdog"), handle, 4, WATCH)
    looks: list[int] = []
    try:
        with capture_logs() as logs:
            fail_first_looks(monkeypatch, consumer, KeyError("a bug"), looks)

            async def looked_again() -> bool:
                return len(looks) >= 3

            await eventually(looked_again, timeout=10, what="the watchdog to look again")
        [crash] = [e for e in logs if e["event"] == "task.crashed"]
        assert crash["task"] == consumer.watchdog == f"watch-{consumer.queue_name}"
        assert crash["log_level"] == "error"
        assert consumer.watchdog_restarts() == 1
    finally:
        await consumer.stop(1)


async def test_a_broker_error_in_the_watchdog_is_a_warning_not_a_crash(
    monkeypatch: pytest.MonkeyPatch, broker: Broker, queue_names: Callable[[str], str]
):
    consumer = await broker.consume(queue_names("-watchdog"), handle, 4, WATCH)
    looks: list[int] = []
    try:
        with capture_logs() as logs:
            error = aiormq.exceptions.ChannelInvalidStateError("closed")
            fail_first_looks(monkeypatch, consumer, error, looks)

            async def looked_again() -> bool:
                return len(looks) >= 3

            await eventually(looked_again, timeout=10, what="the watchdog to look again")
        assert [e for e in logs if e["event"] == "task.crashed"] == []
        assert [e["event"] for e in logs if e["event"] == "consumer.watch_failed"] == [
            "consumer.watch_failed"
        ]
        assert consumer.watchdog_restarts() == 0
    finally:
        await consumer.stop(1)
