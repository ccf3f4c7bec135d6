"""Fixtures of the integration tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from service.adapters.postgres import Postgres
from service.adapters.postgres.database import Database


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Postgres]:
    """The PostgreSQL adapters over the test run's database, as the API and the workers use
    them."""
    db = await Database.connect(database_url, min_size=1, max_size=4, command_timeout=10)
    store = Postgres.over(db)
    yield store
    await store.close()
