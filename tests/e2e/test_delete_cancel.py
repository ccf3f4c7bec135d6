"""Delete, ListOperations and Cancel through the real stack."""

from __future__ import annotations

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
from tests.support import connect, eventually
from yandex.cloud.baremetal.v1alpha import image_pb2, image_service_pb2, image_service_pb2_grpc
from yandex.cloud.operation import operation_service_pb2, operation_service_pb2_grpc

CANCELLED = grpc.StatusCode.CANCELLED.value[0]


def get_image(images, image_id):
    return images.Get(image_service_pb2.GetImageRequest(image_id=image_id))


def list_ops(images, image_id, **kw):
    return images.ListOperations(
        image_service_pb2.ListImageOperationsRequest(image_id=image_id, **kw)
    )


# --- Delete -------------------------------------------------------------------------------


async def test_delete_removes_the_image_and_keeps_its_operations_readable(
    images, operations, blobs
):
    folder_id = folder()
    image = await create_ready_image(images, operations, blobs.url("/blob/8"), folder_id)
    deleting = await images.Delete(image_service_pb2.DeleteImageRequest(image_id=image.id))
    assert deleting.description == "Delete image"
    metadata = image_service_pb2.DeleteImageMetadata()
    assert deleting.metadata.Unpack(metadata)
    assert metadata.image_id == image.id

    done = await wait_done(operations, deleting.id)
    assert done.WhichOneof("result") == "response"
    assert done.response.Is(empty_pb2.Empty.DESCRIPTOR)

    error = await rpc_error(get_image(images, image.id))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    listed = await images.List(image_service_pb2.ListImagesRequest(folder_id=folder_id))
    assert list(listed.images) == []
    history = await list_ops(images, image.id)
    assert [op.description for op in history.operations] == ["Delete image", "Create image"]
    assert all(op.done for op in history.operations)


async def test_a_deleted_name_can_be_used_again(images, operations, blobs):
    folder_id = folder()
    image = await create_ready_image(images, operations, blobs.url("/blob/8"), folder_id)
    op = await images.Delete(image_service_pb2.DeleteImageRequest(image_id=image.id))
    await wait_done(operations, op.id)
    again = await create_ready_image(
        images, operations, blobs.url("/blob/8"), folder_id, name=image.name
    )
    assert again.id != image.id


async def test_delete_of_an_image_in_error_is_allowed(images, operations, blobs):
    created = await images.Create(
        image_service_pb2.CreateImageRequest(
            folder_id=folder(), name=unique("bad"), uri=blobs.url("/status/404")
        )
    )
    await wait_done(operations, created.id)
    op = await images.Delete(image_service_pb2.DeleteImageRequest(image_id=image_id_of(created)))
    assert (await wait_done(operations, op.id)).WhichOneof("result") == "response"


async def test_delete_while_an_update_is_unfinished_is_failed_precondition(
    images, operations, blobs, db
):
    image = await create_ready_image(images, operations, blobs.url("/blob/8"), folder())
    async with db.acquire() as conn, conn.transaction():
        await conn.execute("SELECT 1 FROM images WHERE id = $1 FOR KEY SHARE", image.id)
        update = await images.Update(
            image_service_pb2.UpdateImageRequest(image_id=image.id, description="busy")
        )
        error = await rpc_error(
            images.Delete(image_service_pb2.DeleteImageRequest(image_id=image.id))
        )
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "unfinished operation" in error.details()
    await wait_done(operations, update.id)
    assert (await get_image(images, image.id)).status == image_pb2.Image.READY


async def test_delete_of_an_unknown_or_invalid_image(images):
    error = await rpc_error(
        images.Delete(image_service_pb2.DeleteImageRequest(image_id="img" + "z" * 17))
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND
    error = await rpc_error(images.Delete(image_service_pb2.DeleteImageRequest(image_id="x")))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(error) == ["image_id"]


# --- ListOperations ---------------------------------------------------------------------------


async def test_list_operations_pages_newest_first(images, operations, blobs):
    image = await create_ready_image(images, operations, blobs.url("/blob/8"), folder())
    updates = []
    for n in range(4):
        op = await images.Update(
            image_service_pb2.UpdateImageRequest(image_id=image.id, description=f"v{n}")
        )
        await wait_done(operations, op.id)
        updates.append(op.id)
    seen, token, pages = [], "", 0
    while True:
        page = await list_ops(images, image.id, page_size=2, page_token=token)
        assert len(page.operations) <= 2
        seen += [op.id for op in page.operations]
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert seen[:4] == list(reversed(updates))
    assert len(seen) == 5
    assert pages == 3
    everything = await list_ops(images, image.id)
    assert [op.id for op in everything.operations] == seen
    assert everything.next_page_token == ""


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"page_size": 1001}, "page_size"),
        ({"page_size": -5}, "page_size"),
        ({"page_token": "bm90IGEgdG9rZW4"}, "page_token"),
    ],
)
async def test_list_operations_refuses_bad_paging(images, operations, blobs, kwargs, field):
    image = await create_ready_image(images, operations, blobs.url("/blob/8"), folder())
    error = await rpc_error(list_ops(images, image.id, **kwargs))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(error) == [field]


async def test_a_list_operations_token_is_bound_to_its_image(images, operations, blobs):
    first = await create_ready_image(images, operations, blobs.url("/blob/8"), folder())
    second = await create_ready_image(images, operations, blobs.url("/blob/8"), folder())
    op = await images.Update(
        image_service_pb2.UpdateImageRequest(image_id=first.id, description="x")
    )
    await wait_done(operations, op.id)
    page = await list_ops(images, first.id, page_size=1)
    assert page.next_page_token
    error = await rpc_error(list_ops(images, second.id, page_token=page.next_page_token))
    assert violated_fields(error) == ["page_token"]


async def test_list_operations_of_an_unknown_image_is_not_found(images):
    error = await rpc_error(list_ops(images, "img" + "q" * 17))
    assert error.code() == grpc.StatusCode.NOT_FOUND


# --- Cancel -------------------------------------------------------------------------------


async def stack_without_workers(processes, own_stack_env):
    """An API whose queue no worker reads: every operation it accepts stays queued."""
    env = own_stack_env()
    api = await processes.start("service", env, "api-no-workers")
    return env, api


async def insert_image(db, status=image_pb2.Image.READY) -> tuple[str, str]:
    from service.domain.ids import IMAGE_PREFIX, new_id

    image_id, name = new_id(IMAGE_PREFIX), unique("img")
    await db.execute(
        "INSERT INTO images (id, folder_id, name, description, status)"
        " VALUES ($1, $2, $3, 'original', $4)",
        image_id,
        folder(),
        name,
        status,
    )
    return image_id, name


async def test_cancel_of_a_queued_update_restores_the_image_and_reads_cancelled(
    processes, own_stack_env, db
):
    env, api = await stack_without_workers(processes, own_stack_env)
    image_id, _ = await insert_image(db)
    async with connect(api.address) as channel:
        images = image_service_pb2_grpc.ImageServiceStub(channel)
        operations = operation_service_pb2_grpc.OperationServiceStub(channel)
        op = await images.Update(
            image_service_pb2.UpdateImageRequest(image_id=image_id, description="never")
        )
        assert (await get_image(images, image_id)).status == image_pb2.Image.UPDATING

        async def queued() -> bool:
            return bool(
                await db.fetchval("SELECT published_at FROM operations WHERE id = $1", op.id)
            )

        await eventually(queued, what="the Update to be in the queue")
        cancelled = await operations.Cancel(
            operation_service_pb2.CancelOperationRequest(operation_id=op.id)
        )
        assert cancelled.done
        assert cancelled.error.code == CANCELLED
        polled = await operations.Get(operation_service_pb2.GetOperationRequest(operation_id=op.id))
        assert polled == cancelled
        image = await get_image(images, image_id)
        assert image.status == image_pb2.Image.READY
        assert image.description == "original"

        # A worker that gets the queued message later changes nothing.
        worker = await processes.start("workers", env, "worker-after-cancel")

        async def skipped() -> bool:
            return bool(worker.logged("operation.skipped", operation_id=op.id))

        await eventually(skipped, what="the worker to drop the cancelled operation")
        assert (await get_image(images, image_id)).description == "original"
        assert await db.fetchval("SELECT revision FROM images WHERE id = $1", image_id) == 0


async def test_cancel_of_a_queued_create_leaves_no_image(processes, own_stack_env, blobs):
    _, api = await stack_without_workers(processes, own_stack_env)
    folder_id, name = folder(), unique("img")
    async with connect(api.address) as channel:
        images = image_service_pb2_grpc.ImageServiceStub(channel)
        operations = operation_service_pb2_grpc.OperationServiceStub(channel)
        request = image_service_pb2.CreateImageRequest(
            folder_id=folder_id, name=name, uri=blobs.url("/blob/8")
        )
        op = await images.Create(request)
        cancelled = await operations.Cancel(
            operation_service_pb2.CancelOperationRequest(operation_id=op.id)
        )
        assert cancelled.error.code == CANCELLED
        error = await rpc_error(get_image(images, image_id_of(op)))
        assert error.code() == grpc.StatusCode.NOT_FOUND
        again = await images.Create(request)  # the name is free again
        assert again.id != op.id


async def test_cancel_of_a_queued_delete_restores_the_status(processes, own_stack_env, db):
    _, api = await stack_without_workers(processes, own_stack_env)
    image_id, _ = await insert_image(db, status=image_pb2.Image.ERROR)
    async with connect(api.address) as channel:
        images = image_service_pb2_grpc.ImageServiceStub(channel)
        operations = operation_service_pb2_grpc.OperationServiceStub(channel)
        op = await images.Delete(image_service_pb2.DeleteImageRequest(image_id=image_id))
        assert (await get_image(images, image_id)).status == image_pb2.Image.DELETING
        await operations.Cancel(operation_service_pb2.CancelOperationRequest(operation_id=op.id))
        assert (await get_image(images, image_id)).status == image_pb2.Image.ERROR


async def test_cancel_of_a_running_create_stops_its_download_and_removes_the_image(
    images, operations, blobs, workers
):
    blobs.gate.clear()
    before = blobs.gated_requests
    op = await images.Create(
        image_service_pb2.CreateImageRequest(
            folder_id=folder(), name=unique("img"), uri=blobs.url("/gated/100000")
        )
    )

    async def downloading() -> bool:
        return blobs.gated_requests > before

    await eventually(downloading, what="the download to start")
    cancelled = await operations.Cancel(
        operation_service_pb2.CancelOperationRequest(operation_id=op.id)
    )
    assert cancelled.error.code == CANCELLED

    async def download_stopped() -> bool:
        return any(w.logged("operation.download_stopped", operation_id=op.id) for w in workers)

    # The gate is still closed: the download can only have ended because it was stopped.
    await eventually(download_stopped, timeout=10, what="the worker to stop downloading")
    blobs.release()
    error = await rpc_error(get_image(images, image_id_of(op)))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    final = await operations.Get(operation_service_pb2.GetOperationRequest(operation_id=op.id))
    assert final == cancelled


async def test_cancel_of_a_finished_operation_returns_it_unchanged(images, operations, blobs):
    created = await images.Create(
        image_service_pb2.CreateImageRequest(
            folder_id=folder(), name=unique("img"), uri=blobs.url("/blob/8")
        )
    )
    done = await wait_done(operations, created.id)
    again = await operations.Cancel(
        operation_service_pb2.CancelOperationRequest(operation_id=created.id)
    )
    assert again == done
    assert response_image(again).status == image_pb2.Image.READY


async def test_cancel_of_an_unknown_or_missing_operation(operations):
    error = await rpc_error(
        operations.Cancel(operation_service_pb2.CancelOperationRequest(operation_id="opnunknown"))
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND
    error = await rpc_error(operations.Cancel(operation_service_pb2.CancelOperationRequest()))
    assert violated_fields(error) == ["operation_id"]
