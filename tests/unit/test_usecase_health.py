"""Health: the database answers within the timeout and the broker is connected."""

from __future__ import annotations

import asyncio

from service.domain.errors import Unavailable
from service.usecases.health import dependencies_ok
from tests.unit.fakes import FakeDatabase, FakePublisher


def broker(healthy: bool = True) -> FakePublisher:
    publisher = FakePublisher()
    publisher.healthy = healthy
    return publisher


async def test_healthy_when_the_database_answers_and_the_broker_is_connected():
    assert await dependencies_ok(FakeDatabase(), broker(), timeout=1.0) is True


async def test_unhealthy_when_the_database_is_unavailable():
    database = FakeDatabase(Unavailable("connection refused"))
    assert await dependencies_ok(database, broker(), timeout=1.0) is False


async def test_unhealthy_when_the_database_does_not_answer_in_time():
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await dependencies_ok(FakeDatabase(hang=True), broker(), timeout=0.05) is False
    assert loop.time() - started < 1.0


async def test_unhealthy_when_the_broker_is_disconnected():
    assert await dependencies_ok(FakeDatabase(), broker(healthy=False), timeout=1.0) is False
