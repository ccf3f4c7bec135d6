"""A dead letter is a state of its operation's row (migration 0011), against the real
PostgreSQL: the dead-letter path records it, every other ending does not, and the operator's
query lists operations by it, whatever their error says."""

from __future__ import annotations

import asyncpg
import pytest

from service.adapters.postgres import Postgres
from service.adapters.postgres.ops import PostgresOps
from service.domain.model import ImageChange
from service.usecases.execute import Executor, dead_letter_reason
from tests.integration.rows import add_image, folder, update
from tests.unit.fakes import FakeDownloader


async def accepted_update(store: Postgres, db: asyncpg.Pool) -> str:
    image_id = await add_image(db, folder())
    accepted = await store.accepts.begin_update(
        update(image_id, ImageChange(description="d")).operation, ImageChange(description="d")
    )
    return accepted.operation.id


async def test_the_dead_letter_path_records_the_state_and_the_operator_lists_by_it(
    store: Postgres, db: asyncpg.Pool
):
    executor = Executor(store.finishes, FakeDownloader(), lease_seconds=30, max_attempts=5)
    dead, abandoned = await accepted_update(store, db), await accepted_update(store, db)

    await executor.end_dead_lettered(dead, 5)
    await executor.abandon(abandoned, dead_letter_reason(5))  # the same words, another ending

    rows = {
        row["id"]: row
        for row in await db.fetch(
            "SELECT id, done, error_message, modified_at, dead_lettered_at FROM operations"
            " WHERE id = ANY($1)",
            [dead, abandoned],
        )
    }
    assert rows[dead]["done"]
    assert rows[abandoned]["done"]
    assert rows[dead]["error_message"] == rows[abandoned]["error_message"] == dead_letter_reason(5)
    assert rows[dead]["dead_lettered_at"] == rows[dead]["modified_at"]
    assert rows[abandoned]["dead_lettered_at"] is None

    listed = await PostgresOps(store.db).dead_lettered_operations(since_seconds=3600, limit=1000)
    listed_ids = [record.id for record in listed]
    assert dead in listed_ids
    assert abandoned not in listed_ids


async def test_only_a_failed_finished_operation_can_be_dead_lettered(
    store: Postgres, db: asyncpg.Pool
):
    unfinished = await accepted_update(store, db)
    with pytest.raises(asyncpg.CheckViolationError):
        await db.execute("UPDATE operations SET dead_lettered_at = now() WHERE id = $1", unfinished)
