"""Fixtures of the fault suite."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from tests.faults.cluster import PrivatePostgres, PrivateRabbit, new_base_dir
from tests.support import eventually


@pytest.fixture(scope="module")
async def private_services() -> AsyncIterator[tuple[PrivatePostgres, PrivateRabbit]]:
    database = PrivatePostgres(new_base_dir("faults-pg-"))
    broker = PrivateRabbit(new_base_dir("faults-mq-"))
    try:
        await asyncio.gather(asyncio.to_thread(database.start), asyncio.to_thread(broker.start))
        yield database, broker
    finally:
        await asyncio.gather(asyncio.to_thread(database.cleanup), asyncio.to_thread(broker.cleanup))


@contextlib.asynccontextmanager
async def primary_with_standby() -> AsyncIterator[tuple[PrivatePostgres, PrivatePostgres]]:
    """A private primary and its synchronous streaming standby, both running; removed at the
    end."""
    primary = PrivatePostgres(
        new_base_dir("faults-pg-primary-"), settings={"synchronous_standby_names": "*"}
    )
    standby = PrivatePostgres(new_base_dir("faults-pg-standby-"), standby_of=primary)
    try:
        await asyncio.to_thread(primary.start)
        await asyncio.to_thread(standby.start)

        async def synchronous() -> bool:
            state = await asyncio.to_thread(
                primary.psql, "SELECT string_agg(sync_state, ',') FROM pg_stat_replication"
            )
            return state.strip() == "sync"

        await eventually(synchronous, timeout=60, what="the standby to be synchronous")
        yield primary, standby
    finally:
        await asyncio.gather(asyncio.to_thread(standby.cleanup), asyncio.to_thread(primary.cleanup))
