"""Fixtures of the integration tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from service.adapters.store import Store


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    """A store of the test run's database, as the API and the workers use it."""
    store = await Store.connect(database_url, min_size=1, max_size=4, command_timeout=10)
    yield store
    await store.close()
