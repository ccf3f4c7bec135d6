"""A message delivered twice, or a worker killed mid-operation: every change applies once."""

from __future__ import annotations

import asyncio
import hashlib
import signal

import aio_pika

from tests.conftest import AMQP_URL
from tests.e2e.client import (
    create_ready_image,
    folder,
    image_id_of,
    response_image,
    unique,
    wait_done,
)
from tests.support import backend_waiting_on_lock, blob, connect, eventually
from yandex.cloud.baremetal.v1alpha import image_pb2, image_service_pb2


async def publish_raw(queue: str, operation_id: str, times: int) -> None:
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        for _ in range(times):
            await channel.default_exchange.publish(
                aio_pika.Message(operation_id.encode()), routing_key=queue
            )


def skipped(workers, operation_id: str) -> int:
    return sum(len(w.logged("operation.skipped", operation_id=operation_id)) for w in workers)


async def test_an_operation_published_three_times_is_applied_once(
    images, operations, blobs, db, workers, stack_env
):
    image = await create_ready_image(images, operations, blobs.url("/blob/8"), folder())
    async with db.acquire() as conn, conn.transaction():
        await conn.execute("SELECT 1 FROM images WHERE id = $1 FOR KEY SHARE", image.id)
        first = await images.Update(
            image_service_pb2.UpdateImageRequest(image_id=image.id, description="one")
        )
        # Two more copies race the original to the two worker processes.
        await publish_raw(stack_env["AMQP_QUEUE"], first.id, times=2)
    await wait_done(operations, first.id)

    async def duplicates_consumed() -> bool:
        return skipped(workers, first.id) >= 2

    await eventually(duplicates_consumed, what="both duplicates to be consumed")
    assert await db.fetchval("SELECT revision FROM images WHERE id = $1", image.id) == 2

    second = await images.Update(
        image_service_pb2.UpdateImageRequest(image_id=image.id, description="two")
    )
    await wait_done(operations, second.id)
    finished_first = await db.fetchrow("SELECT * FROM operations WHERE id = $1", first.id)

    # A late redelivery of a finished operation changes nothing: not the image, not the row.
    await publish_raw(stack_env["AMQP_QUEUE"], first.id, times=1)

    async def late_copy_consumed() -> bool:
        return skipped(workers, first.id) >= 3

    await eventually(late_copy_consumed, what="the late copy to be consumed")
    after = await images.Get(image_service_pb2.GetImageRequest(image_id=image.id))
    assert after.description == "two"
    assert await db.fetchval("SELECT revision FROM images WHERE id = $1", image.id) == 3
    assert await db.fetchrow("SELECT * FROM operations WHERE id = $1", first.id) == finished_first


async def test_a_message_with_an_unknown_operation_id_is_dropped(workers, stack_env):
    await publish_raw(stack_env["AMQP_QUEUE"], "opnnonexistent000000", times=1)

    async def consumed() -> bool:
        return skipped(workers, "opnnonexistent000000") >= 1

    await eventually(consumed, what="the stray message to be consumed")


async def test_a_worker_killed_in_the_middle_of_an_update_does_not_lose_or_repeat_it(
    processes, own_stack_env, db, blobs
):
    env = own_stack_env(WORKER_CONCURRENCY="1")
    api = await processes.start("service", env, "api-kill-update")
    creator = await processes.start("workers", env, "worker-creator")

    from yandex.cloud.operation import operation_service_pb2_grpc

    async with connect(api.address) as channel:
        images = image_service_pb2_grpc_stub(channel)
        operations = operation_service_pb2_grpc.OperationServiceStub(channel)
        image = await create_ready_image(images, operations, blobs.url("/blob/8"), folder())
        creator.signal(signal.SIGTERM)
        assert await asyncio.to_thread(creator.wait, 30) == 0
        op = await images.Update(
            image_service_pb2.UpdateImageRequest(image_id=image.id, description="survives")
        )
        async with db.acquire() as conn, conn.transaction():
            await conn.execute("SELECT 1 FROM images WHERE id = $1 FOR UPDATE", image.id)
            doomed = await processes.start("workers", env, "worker-doomed")

            async def worker_mid_update() -> bool:
                return await backend_waiting_on_lock(db, "images")

            # The worker holds the operation row and waits for the image row: mid-update.
            await eventually(worker_mid_update, what="the worker to be inside the update")
            doomed.kill()
            await processes.start("workers", env, "worker-survivor")
        done = await wait_done(operations, op.id)
    assert response_image(done).description == "survives"
    row = await db.fetchrow("SELECT revision, status FROM images WHERE id = $1", image.id)
    assert row["revision"] == 2
    assert row["status"] == image_pb2.Image.READY


async def test_a_worker_killed_in_the_middle_of_a_download_is_replaced_and_the_create_finishes_once(
    processes, own_stack_env, db, blobs
):
    env = own_stack_env(WORKER_CONCURRENCY="2", LEASE_SECONDS="2")
    api = await processes.start("service", env, "api-kill-create")
    doomed = await processes.start("workers", env, "worker-doomed-create")

    from yandex.cloud.operation import operation_service_pb2_grpc

    size = 2 * 1024 * 1024
    blobs.gate.clear()
    requests_before = blobs.gated_requests
    async with connect(api.address) as channel:
        images = image_service_pb2_grpc_stub(channel)
        operations = operation_service_pb2_grpc.OperationServiceStub(channel)
        created = await images.Create(
            image_service_pb2.CreateImageRequest(
                folder_id=folder(), name=unique("big"), uri=blobs.url(f"/gated/{size}")
            )
        )

        async def downloading() -> bool:
            return blobs.gated_requests > requests_before

        await eventually(downloading, what="the worker to start downloading")
        doomed.kill()
        blobs.release()
        await processes.start("workers", env, "worker-survivor-create")
        done = await wait_done(operations, created.id)
    image = response_image(done)
    assert image.checksum == hashlib.md5(blob(size)).hexdigest()
    row = await db.fetchrow(
        "SELECT o.attempts, i.revision, i.status FROM operations o JOIN images i"
        " ON i.id = o.image_id WHERE o.id = $1",
        created.id,
    )
    # The dead worker's claim expired and the survivor claimed it again: two attempts,
    # one applied change.
    assert row["attempts"] == 2
    assert row["revision"] == 1
    assert row["status"] == image_pb2.Image.READY
    assert image_id_of(done) == image.id
    await asyncio.sleep(0)


def image_service_pb2_grpc_stub(channel):
    from yandex.cloud.baremetal.v1alpha import image_service_pb2_grpc

    return image_service_pb2_grpc.ImageServiceStub(channel)
