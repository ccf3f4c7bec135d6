"""Fixtures of the integration tests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import pytest

from service.adapters.postgres import Postgres
from service.adapters.postgres.database import Database
from tests.conftest import create_database, drop_database


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Postgres]:
    """The PostgreSQL adapters over the test run's database, as the API and the workers use
    them."""
    db = await Database.connect(database_url, min_size=1, max_size=4, command_timeout=10)
    store = Postgres.over(db)
    yield store
    await store.close()


@asynccontextmanager
async def own_database(run_id: str, label: str) -> AsyncIterator[tuple[str, asyncpg.Pool]]:
    """A fresh, migrated database of one module's own, and a pool over it.

    For tests of what looks at every operation (the relay, the sweeper, counts, lock waits)
    and of operations left unpublished or unfinished for a while: on the run's shared
    database the workers that the end-to-end tests started keep running their own relay and
    sweeper (and finish whatever their relay sends them), and would take this module's
    operations from under it.
    """
    name = f"imgsvc_test_{run_id}_{label}"
    url = await asyncio.to_thread(create_database, name)
    pool = await asyncpg.create_pool(url, min_size=1, max_size=4)
    try:
        yield url, pool
    finally:
        await pool.close()
        await drop_database(name)


def own_database_fixtures(label: str) -> tuple[object, object, object]:
    """The fixtures ``own``, ``database_url`` and ``db`` of a module that needs a database of
    its own (``own_database`` says when): assigned to those names in the module, they replace
    the run's shared database for every fixture the module uses."""

    @pytest.fixture(scope="module", name="own")
    async def own(run_id: str) -> AsyncIterator[tuple[str, asyncpg.Pool]]:
        async with own_database(run_id, label) as made:
            yield made

    @pytest.fixture(scope="module", name="database_url")
    def database_url(own: tuple[str, asyncpg.Pool]) -> str:
        return own[0]

    @pytest.fixture(scope="module", name="db")
    def db(own: tuple[str, asyncpg.Pool]) -> asyncpg.Pool:
        return own[1]

    return own, database_url, db
