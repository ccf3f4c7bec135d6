"""The worker's one-statement Update against the real PostgreSQL: it does exactly what the
transaction does, and leaves everything else to it untouched."""

from __future__ import annotations

import asyncio
import json

import pytest

from service.adapters.postgres import Postgres as Store
from service.domain import ids
from service.domain.model import Image, ImageChange, ImageStatus
from service.usecases.execute import _apply_update
from tests.integration.conftest import own_database_fixtures
from tests.integration.rows import add_image, folder, update
from tests.support import backend_waiting_on_lock, eventually

# A database of this module's own, not the run's shared one (see conftest.own_database).
# The end-to-end tests' relay would publish these operations to their workers, which
# would apply them before the statement under test does.
own, database_url, db = own_database_fixtures("apply")

READY, UPDATING = int(ImageStatus.READY), int(ImageStatus.UPDATING)


async def apply_one(store: Store, operation_id: str) -> bool:
    [finished] = await store.finishes.apply_updates([operation_id])
    return finished


async def started(store: Store, image_id: str, change: ImageChange) -> str:
    [operation] = await store.accepts.begin_updates([update(image_id, change)])
    assert operation is not None
    return operation.id


async def state(db, image_id: str, operation_id: str) -> tuple[dict, dict]:
    image = dict(
        await db.fetchrow(
            "SELECT name, description, labels, status, checksum, revision FROM images"
            " WHERE id = $1",
            image_id,
        )
    )
    image["labels"] = json.loads(image["labels"])
    operation = dict(
        await db.fetchrow(
            "SELECT done, response, error_code, error_message, lease_until FROM operations"
            " WHERE id = $1",
            operation_id,
        )
    )
    if operation["response"] is not None:
        operation["response"] = json.loads(operation["response"])
    return image, operation


CHANGES = {
    "description": ImageChange(description="new"),
    "cleared description": ImageChange(description=""),
    "name": ImageChange(name="renamed"),
    "labels": ImageChange(labels={"a": "1", "b": ""}),
    "cleared labels": ImageChange(labels={}),
    "everything": ImageChange(name="all", description="d", labels={"k": "v"}),
}


@pytest.mark.parametrize("case", list(CHANGES))
async def test_one_statement_does_what_the_transaction_does(store, db, case):
    change = CHANGES[case]
    results = []
    for one_statement in (True, False):
        f = folder()
        image_id = await add_image(db, f, name="before")
        await db.execute(
            "UPDATE images SET description = 'old', labels = '{\"x\": \"y\"}' WHERE id = $1",
            image_id,
        )
        operation_id = await started(store, image_id, change)
        if one_statement:
            assert await apply_one(store, operation_id)
        else:
            async with store.finishes.transaction() as tx:
                claimed = await tx.lock_operation(operation_id)
                assert claimed is not None
                await _apply_update(tx, claimed)
        image, operation = await state(db, image_id, operation_id)
        response = Image.from_snapshot(operation.pop("response"))
        assert response.id == image_id
        assert response.folder_id == f
        results.append((image, operation, response.name, response.description, response.labels))
    assert results[0] == results[1]
    image, operation, *_ = results[0]
    assert image["status"] == READY
    assert image["revision"] == 1
    assert operation["done"]


async def test_the_response_is_the_image_as_it_was_written(store, db):
    image_id = await add_image(db, folder())
    operation_id = await started(store, image_id, ImageChange(description="seen"))
    assert await apply_one(store, operation_id)
    row = await db.fetchrow("SELECT created_at, checksum FROM images WHERE id = $1", image_id)
    _, operation = await state(db, image_id, operation_id)
    response = Image.from_snapshot(operation["response"])
    assert response.created_at == row["created_at"]
    assert response.status is ImageStatus.READY
    assert response.description == "seen"


async def test_what_it_cannot_do_alone_it_leaves_untouched(store, db):
    f = folder()
    renamed = await add_image(db, f)
    rename = await started(store, renamed, ImageChange(name="taken"))
    taken_name = await add_image(db, f, name="taken")  # taken after the Update was accepted
    gone = await add_image(db, f)
    gone_op = await started(store, gone, ImageChange(description="x"))
    await db.execute("DELETE FROM images WHERE id = $1", gone)
    done_image = await add_image(db, f)
    done_op = await started(store, done_image, ImageChange(description="x"))
    assert await apply_one(store, done_op)
    revision = await db.fetchval("SELECT revision FROM images WHERE id = $1", done_image)

    for operation_id in (rename, gone_op, done_op, ids.new_id(ids.OPERATION_PREFIX)):
        assert not await apply_one(store, operation_id)
    image, operation = await state(db, renamed, rename)
    assert image["status"] == UPDATING
    assert image["revision"] == 0
    assert not operation["done"]
    assert not await db.fetchval("SELECT done FROM operations WHERE id = $1", gone_op)
    assert await db.fetchval("SELECT revision FROM images WHERE id = $1", done_image) == revision
    assert await db.fetchval("SELECT name FROM images WHERE id = $1", taken_name) == "taken"


async def test_a_delete_is_left_to_the_transaction(store, db):
    image_id = await add_image(db, folder())
    operation_id = ids.new_id(ids.OPERATION_PREFIX)
    await db.execute(
        "INSERT INTO operations (id, kind, image_id, folder_id, description, request)"
        " VALUES ($1, 'delete_image', $2, 'f', 'Delete image', '{}')",
        operation_id,
        image_id,
    )
    await db.execute("UPDATE images SET status = $2 WHERE id = $1", image_id, UPDATING)
    assert not await apply_one(store, operation_id)
    assert not await db.fetchval("SELECT done FROM operations WHERE id = $1", operation_id)


@pytest.mark.parametrize(
    "request_",
    [
        {"labels": "not-a-map"},
        {"labels": {"k": 1}},
        {"name": 5},
        {"description": ["x"]},
    ],
)
async def test_a_request_of_another_shape_is_left_to_the_transaction(store, db, request_):
    """Only the API writes requests; should one be corrupt, the worker's code deals with it."""
    image_id = await add_image(db, folder(), status=UPDATING)
    operation_id = ids.new_id(ids.OPERATION_PREFIX)
    await db.execute(
        "INSERT INTO operations (id, kind, image_id, folder_id, description, request)"
        " VALUES ($1, 'update_image', $2, 'f', 'Update image', $3::jsonb)",
        operation_id,
        image_id,
        json.dumps(request_),
    )
    assert not await apply_one(store, operation_id)
    assert await db.fetchval("SELECT revision FROM images WHERE id = $1", image_id) == 0


async def test_a_batch_of_updates_is_finished_in_one_statement(store, db):
    f = folder()
    images = [await add_image(db, f) for _ in range(4)]
    operations = [await started(store, i, ImageChange(description=i)) for i in images]
    unknown = ids.new_id(ids.OPERATION_PREFIX)
    finished = await store.finishes.apply_updates([*operations, unknown, operations[0]])
    assert finished == [True, True, True, True, False, True]
    for image_id, operation_id in zip(images, operations, strict=True):
        image, operation = await state(db, image_id, operation_id)
        assert image["description"] == image_id
        assert image["revision"] == 1, "a repeated ID in a batch applies once"
        assert image["status"] == READY
        assert operation["done"]
        assert Image.from_snapshot(operation["response"]).description == image_id


async def test_a_taken_name_leaves_the_whole_batch_to_the_transaction(store, db):
    f = folder()
    plain = await add_image(db, f)
    plain_op = await started(store, plain, ImageChange(description="x"))
    renamed = await add_image(db, f)
    rename_op = await started(store, renamed, ImageChange(name="late"))
    await add_image(db, f, name="late")
    assert await store.finishes.apply_updates([plain_op, rename_op]) == [False, False]
    for image_id, operation_id in ((plain, plain_op), (renamed, rename_op)):
        image, operation = await state(db, image_id, operation_id)
        assert image["status"] == UPDATING
        assert not operation["done"]


async def test_batches_sharing_operations_in_opposite_orders_do_not_deadlock(store, db):
    """Both batches queue behind a session holding the images, then go one after the other."""
    f = folder()
    a, b = await add_image(db, f), await add_image(db, f)
    op_a = await started(store, a, ImageChange(description="a"))
    op_b = await started(store, b, ImageChange(description="b"))
    async with db.acquire() as conn, conn.transaction():
        await conn.execute("SELECT 1 FROM images WHERE id = ANY($1) FOR UPDATE", [a, b])
        first = asyncio.create_task(store.finishes.apply_updates([op_a, op_b]))
        second = asyncio.create_task(store.finishes.apply_updates([op_b, op_a]))

        async def waiting() -> bool:
            return await backend_waiting_on_lock(db, "operation")

        await eventually(waiting, timeout=10, what="a batch to wait for the images")
    results = await asyncio.gather(first, second)
    assert sorted(results) == [[False, False], [True, True]]
