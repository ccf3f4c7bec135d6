"""The ``idempotency-key`` request metadata on Create, Update and Delete, through the real API.

A repeated key from the same caller returns the operation the first call started, in its
current state (also when the calls race); the same key with another request (or on another
method) is INVALID_ARGUMENT; a refused call leaves the key unused; read methods ignore it.
"""

from __future__ import annotations

import asyncio
import uuid

import grpc
import pytest
from google.protobuf import empty_pb2

from tests.e2e.client import (
    create_ready_image,
    folder,
    image_id_of,
    response_image,
    rpc_error,
    unique,
    violated_fields,
    wait_done,
)
from tests.support import backend_blocked_by, eventually
from yandex.cloud.baremetal.v1alpha import image_pb2, image_service_pb2
from yandex.cloud.operation import operation_service_pb2

INVALID = grpc.StatusCode.INVALID_ARGUMENT
HEADER = "idempotency-key"
MISSING_IMAGE_ID = "img" + "z" * 17


def new_key() -> str:
    return str(uuid.uuid4())


def keyed(key: str) -> tuple[tuple[str, str], ...]:
    return ((HEADER, key),)


def create_request(folder_id: str, name: str, uri: str, **fields) -> object:
    return image_service_pb2.CreateImageRequest(folder_id=folder_id, name=name, uri=uri, **fields)


async def images_in(db, folder_id: str) -> int:
    return await db.fetchval("SELECT count(*) FROM images WHERE folder_id = $1", folder_id)


async def operations_of(db, image_id: str, kind: str) -> int:
    return await db.fetchval(
        "SELECT count(*) FROM operations WHERE image_id = $1 AND kind = $2", image_id, kind
    )


async def key_rows(db, key: str) -> list:
    return await db.fetch("SELECT operation_id FROM idempotency_keys WHERE key = $1", key)


# --- Create -------------------------------------------------------------------------------


async def test_a_repeated_create_returns_the_first_operation_in_its_current_state(
    images, operations, blobs, db
):
    folder_id = folder()
    request = create_request(folder_id, unique("img"), blobs.url("/blob/16"))
    key = new_key()

    first = await images.Create(request, metadata=keyed(key))
    again = await images.Create(request, metadata=keyed(key))
    assert again.id == first.id
    assert image_id_of(again) == image_id_of(first)

    done = await wait_done(operations, first.id)
    late = await images.Create(request, metadata=keyed(key))
    # The retry sees the operation as it is now, finished with the image, not as it began.
    assert late.id == first.id
    assert late.done
    assert response_image(late) == response_image(done)
    assert response_image(late).status == image_pb2.Image.READY

    assert await images_in(db, folder_id) == 1
    assert await operations_of(db, image_id_of(first), "create_image") == 1
    assert [row["operation_id"] for row in await key_rows(db, key)] == [first.id]


async def test_concurrent_creates_with_one_key_create_one_image(images, operations, blobs, db):
    folder_id = folder()
    request = create_request(folder_id, unique("img"), blobs.url("/blob/16"))
    key = new_key()

    ops = await asyncio.gather(*(images.Create(request, metadata=keyed(key)) for _ in range(20)))
    assert len({op.id for op in ops}) == 1
    await wait_done(operations, ops[0].id)
    assert await images_in(db, folder_id) == 1
    assert await db.fetchval("SELECT count(*) FROM operations WHERE folder_id = $1", folder_id) == 1


async def test_the_same_create_with_labels_in_another_order_is_the_same_request(
    images, operations, blobs, db
):
    folder_id = folder()
    name = unique("img")
    key = new_key()
    first = await images.Create(
        create_request(folder_id, name, blobs.url("/blob/8"), labels={"a": "1", "b": "2"}),
        metadata=keyed(key),
    )
    again = await images.Create(
        create_request(folder_id, name, blobs.url("/blob/8"), labels={"b": "2", "a": "1"}),
        metadata=keyed(key),
    )
    assert again.id == first.id
    await wait_done(operations, first.id)
    assert await images_in(db, folder_id) == 1


async def test_the_same_key_with_a_different_create_is_invalid(images, operations, blobs, db):
    folder_id = folder()
    name = unique("img")
    key = new_key()
    first = await images.Create(
        create_request(folder_id, name, blobs.url("/blob/8"), description="one"),
        metadata=keyed(key),
    )
    error = await rpc_error(
        images.Create(
            create_request(folder_id, name, blobs.url("/blob/8"), description="two"),
            metadata=keyed(key),
        )
    )
    assert error.code() == INVALID
    assert HEADER in violated_fields(error)

    done = await wait_done(operations, first.id)
    assert response_image(done).description == "one"
    assert await images_in(db, folder_id) == 1
    assert [row["operation_id"] for row in await key_rows(db, key)] == [first.id]


# --- Update -------------------------------------------------------------------------------


async def test_twenty_concurrent_updates_with_one_key_create_one_operation(
    images, operations, blobs, db
):
    image = await create_ready_image(images, operations, blobs.url("/blob/8"), folder())
    request = image_service_pb2.UpdateImageRequest(image_id=image.id, description="raced")
    key = new_key()

    ops = await asyncio.gather(*(images.Update(request, metadata=keyed(key)) for _ in range(20)))

    assert len({op.id for op in ops}) == 1, sorted({op.id for op in ops})
    assert await operations_of(db, image.id, "update_image") == 1
    assert [row["operation_id"] for row in await key_rows(db, key)] == [ops[0].id]
    done = await wait_done(operations, ops[0].id)
    assert response_image(done).description == "raced"
    after = await images.Get(image_service_pb2.GetImageRequest(image_id=image.id))
    assert after.description == "raced"
    assert after.status == image_pb2.Image.READY
    # Create's checksum, then the one Update: the change was applied exactly once.
    assert await db.fetchval("SELECT revision FROM images WHERE id = $1", image.id) == 2

    # A retry after the Update finished still gets that operation, now done.
    late = await images.Update(request, metadata=keyed(key))
    assert late.id == ops[0].id
    assert late.done
    assert await operations_of(db, image.id, "update_image") == 1


async def test_retries_that_arrive_while_the_first_call_is_still_accepting_get_its_operation(
    images, operations, blobs, db
):
    image = await create_ready_image(images, operations, blobs.url("/blob/8"), folder())
    request = image_service_pb2.UpdateImageRequest(image_id=image.id, description="held")
    key = new_key()
    async with db.acquire() as conn, conn.transaction():
        # The first call records the key, then waits for the image row; the rest, in its batch
        # or after it, get the key's operation once it is accepted.
        await conn.execute("SELECT 1 FROM images WHERE id = $1 FOR UPDATE", image.id)
        holder = await conn.fetchval("SELECT pg_backend_pid()")
        calls = [
            asyncio.ensure_future(images.Update(request, metadata=keyed(key))) for _ in range(5)
        ]
        await eventually(lambda: backend_blocked_by(db, holder), what="the first call to wait")
    ops = await asyncio.gather(*calls)
    assert len({op.id for op in ops}) == 1
    assert await operations_of(db, image.id, "update_image") == 1
    await wait_done(operations, ops[0].id)


async def test_when_the_first_call_is_refused_racing_retries_run_on_their_own(
    images, operations, blobs, db
):
    image = await create_ready_image(images, operations, blobs.url("/blob/8"), folder())
    request = image_service_pb2.UpdateImageRequest(image_id=image.id, description="refused")
    key = new_key()
    async with db.acquire() as conn, conn.transaction():
        await conn.execute("SELECT 1 FROM images WHERE id = $1 FOR UPDATE", image.id)
        holder = await conn.fetchval("SELECT pg_backend_pid()")
        calls = [
            asyncio.ensure_future(images.Update(request, metadata=keyed(key))) for _ in range(5)
        ]
        await eventually(lambda: backend_blocked_by(db, holder), what="the first call to wait")
        # The image leaves READY before the first call gets it: the first call is refused.
        await conn.execute(
            "UPDATE images SET status = $2 WHERE id = $1", image.id, image_pb2.Image.ERROR
        )
    results = await asyncio.gather(*calls, return_exceptions=True)
    for result in results:
        assert isinstance(result, grpc.aio.AioRpcError), result
        assert result.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert await key_rows(db, key) == []
    assert await operations_of(db, image.id, "update_image") == 0

    await db.execute("UPDATE images SET status = $2 WHERE id = $1", image.id, image_pb2.Image.READY)
    op = await images.Update(request, metadata=keyed(key))
    done = await wait_done(operations, op.id)
    assert response_image(done).description == "refused"


async def test_racing_updates_with_one_key_and_two_requests_start_one_operation(
    images, operations, blobs, db
):
    image = await create_ready_image(images, operations, blobs.url("/blob/8"), folder())
    key = new_key()
    requests = [
        image_service_pb2.UpdateImageRequest(image_id=image.id, description=f"variant-{i % 2}")
        for i in range(20)
    ]
    results = await asyncio.gather(
        *(images.Update(request, metadata=keyed(key)) for request in requests),
        return_exceptions=True,
    )
    accepted = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, BaseException)]
    assert len({op.id for op in accepted}) == 1
    for error in refused:
        assert isinstance(error, grpc.aio.AioRpcError), error
        assert error.code() == INVALID
        assert HEADER in violated_fields(error)
    assert await operations_of(db, image.id, "update_image") == 1
    done = await wait_done(operations, accepted[0].id)
    winner = response_image(done).description
    # Every call with the winner's request got the operation; every other one was refused.
    assert len(accepted) == 10
    assert {
        requests[i].description for i, r in enumerate(results) if not isinstance(r, BaseException)
    } == {winner}


async def test_concurrent_deletes_with_one_key_start_one_operation(images, operations, blobs, db):
    image = await create_ready_image(images, operations, blobs.url("/blob/8"), folder())
    request = image_service_pb2.DeleteImageRequest(image_id=image.id)
    key = new_key()
    ops = await asyncio.gather(*(images.Delete(request, metadata=keyed(key)) for _ in range(20)))
    assert len({op.id for op in ops}) == 1
    await wait_done(operations, ops[0].id)
    assert await operations_of(db, image.id, "delete_image") == 1
    assert await db.fetchval("SELECT count(*) FROM images WHERE id = $1", image.id) == 0


async def test_the_same_key_with_a_different_update_is_invalid(images, operations, blobs, db):
    image = await create_ready_image(images, operations, blobs.url("/blob/8"), folder())
    key = new_key()
    first = await images.Update(
        image_service_pb2.UpdateImageRequest(image_id=image.id, description="first"),
        metadata=keyed(key),
    )
    await wait_done(operations, first.id)
    error = await rpc_error(
        images.Update(
            image_service_pb2.UpdateImageRequest(image_id=image.id, description="second"),
            metadata=keyed(key),
        )
    )
    assert error.code() == INVALID
    assert HEADER in violated_fields(error)
    after = await images.Get(image_service_pb2.GetImageRequest(image_id=image.id))
    assert after.description == "first"
    assert await operations_of(db, image.id, "update_image") == 1


async def test_different_keys_start_different_operations(images, operations, blobs, db):
    image = await create_ready_image(images, operations, blobs.url("/blob/8"), folder())
    request = image_service_pb2.UpdateImageRequest(image_id=image.id, description="again")
    first = await images.Update(request, metadata=keyed(new_key()))
    await wait_done(operations, first.id)
    second = await images.Update(request, metadata=keyed(new_key()))
    await wait_done(operations, second.id)
    assert first.id != second.id
    assert await operations_of(db, image.id, "update_image") == 2
    assert await db.fetchval("SELECT revision FROM images WHERE id = $1", image.id) == 3

    # The same Create under two keys is two calls: the second finds the name taken.
    folder_id = folder()
    create = create_request(folder_id, unique("img"), blobs.url("/blob/8"))
    created = await images.Create(create, metadata=keyed(new_key()))
    error = await rpc_error(images.Create(create, metadata=keyed(new_key())))
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    await wait_done(operations, created.id)
    assert await images_in(db, folder_id) == 1


# --- Delete -------------------------------------------------------------------------------


async def test_a_repeated_delete_returns_the_first_operation(images, operations, blobs, db):
    image = await create_ready_image(images, operations, blobs.url("/blob/8"), folder())
    request = image_service_pb2.DeleteImageRequest(image_id=image.id)
    key = new_key()

    first = await images.Delete(request, metadata=keyed(key))
    again = await images.Delete(request, metadata=keyed(key))
    assert again.id == first.id
    await wait_done(operations, first.id)

    # The image is gone: without the key this would be NOT_FOUND; with it, the finished Delete.
    late = await images.Delete(request, metadata=keyed(key))
    assert late.id == first.id
    assert late.done
    assert late.response.Is(empty_pb2.Empty.DESCRIPTOR)
    assert await operations_of(db, image.id, "delete_image") == 1
    unkeyed = await rpc_error(images.Delete(request))
    assert unkeyed.code() == grpc.StatusCode.NOT_FOUND


async def test_a_key_used_by_create_is_invalid_on_delete_and_update(images, operations, blobs, db):
    key = new_key()
    created = await images.Create(
        create_request(folder(), unique("img"), blobs.url("/blob/8")), metadata=keyed(key)
    )
    image_id = image_id_of(created)
    await wait_done(operations, created.id)

    error = await rpc_error(
        images.Delete(image_service_pb2.DeleteImageRequest(image_id=image_id), metadata=keyed(key))
    )
    assert error.code() == INVALID
    assert HEADER in violated_fields(error)
    error = await rpc_error(
        images.Update(
            image_service_pb2.UpdateImageRequest(image_id=image_id, description="x"),
            metadata=keyed(key),
        )
    )
    assert error.code() == INVALID
    assert HEADER in violated_fields(error)

    image = await images.Get(image_service_pb2.GetImageRequest(image_id=image_id))
    assert image.status == image_pb2.Image.READY
    assert image.description == ""
    assert await operations_of(db, image_id, "delete_image") == 0
    assert await operations_of(db, image_id, "update_image") == 0


# --- The key itself -----------------------------------------------------------------------


INVALID_KEYS = [
    pytest.param("", id="empty"),
    pytest.param("k" * 129, id="129-chars"),
    pytest.param("has space", id="space"),
    pytest.param("k" * 64 + " ", id="trailing-space"),
]


@pytest.mark.parametrize("key", INVALID_KEYS)
async def test_an_invalid_key_is_refused_on_every_mutating_method(images, blobs, db, key):
    folder_id = folder()
    calls = [
        images.Create(
            create_request(folder_id, unique("img"), blobs.url("/blob/8")), metadata=keyed(key)
        ),
        images.Update(
            image_service_pb2.UpdateImageRequest(image_id=MISSING_IMAGE_ID, description="d"),
            metadata=keyed(key),
        ),
        images.Delete(
            image_service_pb2.DeleteImageRequest(image_id=MISSING_IMAGE_ID), metadata=keyed(key)
        ),
    ]
    for call in calls:
        error = await rpc_error(call)
        assert error.code() == INVALID, error
        assert HEADER in violated_fields(error)
        assert error.details().startswith("Request validation error: ")
    assert await images_in(db, folder_id) == 0


async def test_the_longest_key_of_printable_ascii_is_accepted(images, operations, blobs, db):
    key = ("!~" + uuid.uuid4().hex) * 4
    key = key[:128]
    folder_id = folder()
    request = create_request(folder_id, unique("img"), blobs.url("/blob/8"))
    first = await images.Create(request, metadata=keyed(key))
    again = await images.Create(request, metadata=keyed(key))
    assert again.id == first.id
    await wait_done(operations, first.id)
    assert await images_in(db, folder_id) == 1


async def test_reads_ignore_the_key_and_record_nothing(images, operations, blobs, db):
    image = await create_ready_image(images, operations, blobs.url("/blob/8"), folder())
    op_id = (
        (
            await images.ListOperations(
                image_service_pb2.ListImageOperationsRequest(image_id=image.id)
            )
        )
        .operations[0]
        .id
    )
    key = new_key()
    for metadata in (keyed(key), keyed("not a valid key")):
        got = await images.Get(
            image_service_pb2.GetImageRequest(image_id=image.id), metadata=metadata
        )
        assert got.id == image.id
        listed = await images.List(
            image_service_pb2.ListImagesRequest(folder_id=image.folder_id), metadata=metadata
        )
        assert [i.id for i in listed.images] == [image.id]
        ops = await images.ListOperations(
            image_service_pb2.ListImageOperationsRequest(image_id=image.id), metadata=metadata
        )
        assert [op.id for op in ops.operations] == [op_id]
        op = await operations.Get(
            operation_service_pb2.GetOperationRequest(operation_id=op_id), metadata=metadata
        )
        assert op.id == op_id
        assert op.done
    assert await key_rows(db, key) == []

    # The key is still free for a mutating call.
    update = await images.Update(
        image_service_pb2.UpdateImageRequest(image_id=image.id, description="after reads"),
        metadata=keyed(key),
    )
    assert [row["operation_id"] for row in await key_rows(db, key)] == [update.id]
    await wait_done(operations, update.id)


async def test_a_refused_call_does_not_use_up_its_key(images, operations, blobs, db):
    folder_id = folder()
    taken = await create_ready_image(images, operations, blobs.url("/blob/8"), folder_id)
    key = new_key()

    refused = create_request(folder_id, taken.name, blobs.url("/blob/8"))
    error = await rpc_error(images.Create(refused, metadata=keyed(key)))
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    assert await key_rows(db, key) == []

    invalid = create_request(folder_id, "Not A Name", blobs.url("/blob/8"))
    error = await rpc_error(images.Create(invalid, metadata=keyed(key)))
    assert error.code() == INVALID
    assert "name" in violated_fields(error)
    assert await key_rows(db, key) == []

    # The refused calls rolled back: the key now belongs to the first call that was accepted,
    # even though its request differs from theirs.
    accepted = create_request(folder_id, unique("img"), blobs.url("/blob/8"))
    op = await images.Create(accepted, metadata=keyed(key))
    assert [row["operation_id"] for row in await key_rows(db, key)] == [op.id]
    await wait_done(operations, op.id)
    assert await images_in(db, folder_id) == 2

    # From now on the earlier, refused request is a different request under this key.
    error = await rpc_error(images.Create(refused, metadata=keyed(key)))
    assert error.code() == INVALID
    assert HEADER in violated_fields(error)
