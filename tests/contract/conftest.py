"""The contract tests' fixture ``port``: each test runs once over the in-memory fake
(``fake``) and once over the PostgreSQL adapters (``postgres``).

The PostgreSQL side has a database of its own (``imgsvc_test_<run>_contract``), emptied before
each test: the end-to-end tests' workers run their relay and sweeper on the run's shared
database, and would take these tests' operations from under them. It is created only when a
``postgres`` test runs, so ``-k fake`` needs no database.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from service.adapters.postgres import Postgres
from service.adapters.postgres.database import Database
from tests.contract.implementations import (
    FakeImplementation,
    Implementation,
    PostgresImplementation,
)
from tests.integration.conftest import own_database
from tests.unit.fakes import FakeStore


@pytest.fixture(scope="package")
async def contract_database(run_id: str) -> AsyncIterator[tuple[str, asyncpg.Pool]]:
    async with own_database(run_id, "contract") as made:
        yield made


@pytest.fixture(scope="package")
async def contract_postgres(
    contract_database: tuple[str, asyncpg.Pool],
) -> AsyncIterator[Postgres]:
    db = await Database.connect(contract_database[0], min_size=1, max_size=4, command_timeout=10)
    postgres = Postgres.over(db)
    yield postgres
    await postgres.close()


@pytest.fixture
async def postgres_implementation(
    contract_postgres: Postgres, contract_database: tuple[str, asyncpg.Pool]
) -> PostgresImplementation:
    implementation = PostgresImplementation(contract_postgres, contract_database[1])
    await implementation.forget_everything()
    return implementation


@pytest.fixture(params=["fake", "postgres"])
def port(request: pytest.FixtureRequest) -> Implementation:
    """The ports of one implementation, fresh and empty."""
    if request.param == "fake":
        return FakeImplementation(FakeStore())
    implementation: PostgresImplementation = request.getfixturevalue("postgres_implementation")
    # The quota a test sets lasts for that test only.
    implementation.limit_unfinished_per_folder(1000)
    return implementation
