"""Fixtures of the fault suite."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from tests.faults.cluster import PrivatePostgres, PrivateRabbit, new_base_dir


@pytest.fixture(scope="module")
async def private_services() -> AsyncIterator[tuple[PrivatePostgres, PrivateRabbit]]:
    database = PrivatePostgres(new_base_dir("faults-pg-"))
    broker = PrivateRabbit(new_base_dir("faults-mq-"))
    try:
        await asyncio.gather(asyncio.to_thread(database.start), asyncio.to_thread(broker.start))
        yield database, broker
    finally:
        await asyncio.gather(asyncio.to_thread(database.cleanup), asyncio.to_thread(broker.cleanup))
