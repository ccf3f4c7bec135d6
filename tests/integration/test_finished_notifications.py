"""The database tells the API each finished operation whole (NOTIFY operation_finished), so the
API keeps it without reading it back: what it is told must be exactly what a read returns."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import asyncpg
import pytest

from service.adapters.postgres.listener import DoneListener, finished_operation
from service.domain import ids
from service.domain.auth import Principal, Role
from service.domain.model import ImageChange, Operation
from service.runtime.waiters import OperationWaiters
from service.usecases.operations import Operations
from tests.integration.conftest import own_database_fixtures
from tests.integration.rows import add_image, folder, update

# A database of this module's own, not the run's shared one (see conftest.own_database).
# The end-to-end tests' relay would publish these operations to their workers, which
# would finish them before this module does.
own, database_url, db = own_database_fixtures("notifications")

EDITOR = Principal(subject="tester", role=Role.EDITOR, folders=frozenset({"*"}))


@pytest.fixture
async def notifications(database_url: str) -> AsyncIterator[asyncio.Queue[str]]:
    queue: asyncio.Queue[str] = asyncio.Queue()
    conn = await asyncpg.connect(database_url)
    await conn.add_listener("operation_finished", lambda *args: queue.put_nowait(args[-1]))
    yield queue
    await conn.close()


async def told(queue: asyncio.Queue[str], operation_id: str) -> str:
    async with asyncio.timeout(10):
        while True:
            payload = await queue.get()
            if payload == operation_id or f'"id" : "{operation_id}"' in payload:
                return payload


async def test_a_finished_update_is_told_exactly_as_it_reads(store, db, notifications):
    image_id = await add_image(db, folder())
    await db.execute(
        "UPDATE images SET labels = $2::jsonb WHERE id = $1",
        image_id,
        json.dumps({"é": "ü", "quote": '"'}),
    )
    [operation] = await store.accepts.begin_updates(
        [update(image_id, ImageChange(description="told"))]
    )
    assert await store.finishes.apply_updates([operation.id]) == [True]
    payload = await told(notifications, operation.id)
    operation_id, from_payload = finished_operation(payload)
    assert operation_id == operation.id
    assert [from_payload] == await store.reads.get_operations([operation.id])
    assert from_payload.response.description == "told"


async def test_a_cancelled_operation_is_told_with_its_error(store, db, notifications):
    image_id = await add_image(db, folder())
    [operation] = await store.accepts.begin_updates(
        [update(image_id, ImageChange(description="x"))]
    )
    operations = Operations(
        store.reads, store.finishes, OperationWaiters(), encode=lambda _: b"", cache_size=0
    )
    await operations.cancel_operation(operation.id, EDITOR)
    payload = await told(notifications, operation.id)
    _, from_payload = finished_operation(payload)
    assert [from_payload] == await store.reads.get_operations([operation.id])
    assert from_payload.error is not None


async def test_an_operation_too_large_to_tell_is_announced_by_its_id(store, db, notifications):
    image_id = await add_image(db, folder())
    [operation] = await store.accepts.begin_updates(
        [update(image_id, ImageChange(description="x"))]
    )
    labels = {f"k{n:02}" + "k" * 60: "v" * 63 for n in range(64)}
    await db.execute(
        "UPDATE images SET labels = $2::jsonb WHERE id = $1", image_id, json.dumps(labels)
    )
    assert await store.finishes.apply_updates([operation.id]) == [True]
    payload = await told(notifications, operation.id)
    assert payload == operation.id
    assert finished_operation(payload) == (operation.id, None)


async def test_an_unreadable_notification_makes_every_waiter_look_again():
    seen: list[tuple[str, Operation | None]] = []
    looked_again: list[bool] = []
    listener = DoneListener(
        "unused", lambda i, o: seen.append((i, o)), lambda: looked_again.append(True)
    )
    listener._notified('{"id": "opn' + "x" * 17 + '", "kind": "update_image"')  # cut short
    assert seen == []
    assert looked_again == [True]
    plain = ids.new_id(ids.OPERATION_PREFIX)
    listener._notified(plain)
    assert seen == [(plain, None)]
