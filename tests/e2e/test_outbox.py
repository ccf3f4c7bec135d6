"""The outbox: Updates accepted while the broker is unreachable all finish once it is back."""

from __future__ import annotations

import asyncio

import aio_pika
import asyncpg

from tests.conftest import AMQP_URL
from tests.e2e.client import create_ready_image, folder, response_image, wait_done
from tests.integration.rows import add_image
from tests.support import TcpProxy, connect, eventually
from yandex.cloud.baremetal.v1alpha import image_pb2, image_service_pb2, image_service_pb2_grpc
from yandex.cloud.operation import operation_service_pb2_grpc

UPDATES = 10


async def test_updates_accepted_while_the_broker_is_unreachable_finish_when_it_is_back(
    processes, own_stack_env, db, blobs
):
    broker = AMQP_URL.rsplit("@", 1)[1].split("/")[0]
    host, port = broker.split(":")
    proxy = await TcpProxy(host, int(port)).start()
    try:
        env = own_stack_env(AMQP_URL=f"amqp://guest:guest@127.0.0.1:{proxy.port}/")
        api = await processes.start("service", env, "api-outbox")
        await processes.start("workers", env, "worker-outbox")
        async with connect(api.address) as channel:
            images = image_service_pb2_grpc.ImageServiceStub(channel)
            operations = operation_service_pb2_grpc.OperationServiceStub(channel)
            folder_id = folder()
            ready = [
                await create_ready_image(images, operations, blobs.url("/blob/8"), folder_id)
                for _ in range(UPDATES)
            ]

            await proxy.cut()  # every connection to the broker drops; new ones are refused
            accepted = [
                await images.Update(
                    image_service_pb2.UpdateImageRequest(
                        image_id=image.id, description=f"offline-{n}"
                    )
                )
                for n, image in enumerate(ready)
            ]
            ids = [op.id for op in accepted]
            unpublished = await db.fetchval(
                "SELECT count(*) FROM operations WHERE id = ANY($1) AND published_at IS NULL"
                " AND NOT done",
                ids,
            )
            assert unpublished == UPDATES  # recorded, acknowledged, waiting in the outbox
            for image in ready:
                got = await images.Get(image_service_pb2.GetImageRequest(image_id=image.id))
                assert got.status == image_pb2.Image.UPDATING

            await proxy.restore()
            for n, op in enumerate(accepted):
                done = await wait_done(operations, op.id, timeout=90)
                assert response_image(done).description == f"offline-{n}"

            async def all_ready() -> bool:
                statuses = await db.fetch(
                    "SELECT status FROM images WHERE folder_id = $1", folder_id
                )
                return all(r["status"] == image_pb2.Image.READY for r in statuses)

            await eventually(all_ready, what="every image to be READY")

            # The consumer came back after the reconnect: new work still flows.
            again = await images.Update(
                image_service_pb2.UpdateImageRequest(image_id=ready[0].id, description="after")
            )
            assert response_image(await wait_done(operations, again.id)).description == "after"
    finally:
        await proxy.close()


LOST_UPDATES = 100


async def test_messages_lost_after_their_confirm_have_every_operation_in_them_finished_once(
    processes, own_stack_env, db
):
    """Updates sent together go in a few messages; those messages are lost after the broker
    confirmed them (the queue purged before any worker took them). The sweeper, counting in
    messages, finds them lost, the relay sends their operations again, and each operation is
    applied exactly once (its image's revision moves by one)."""
    env = own_stack_env(REPUBLISH_AFTER_SECONDS="1")
    api = await processes.start("service", env, "api-lost-messages")
    folder_id = folder()
    image_ids = [await add_image(db, folder_id) for _ in range(LOST_UPDATES)]
    async with connect(api.address) as channel:
        images = image_service_pb2_grpc.ImageServiceStub(channel)
        operations = operation_service_pb2_grpc.OperationServiceStub(channel)
        accepted = await asyncio.gather(
            *(
                images.Update(
                    image_service_pb2.UpdateImageRequest(image_id=i, description=f"lost-{n}")
                )
                for n, i in enumerate(image_ids)
            )
        )
        ids = [op.id for op in accepted]

        async def all_marked() -> asyncpg.Record | None:
            row = await db.fetchrow(
                "SELECT count(*) FILTER (WHERE published_at IS NOT NULL) AS marked,"
                " count(DISTINCT message_id) AS messages FROM operations WHERE id = ANY($1)",
                ids,
            )
            return row if row["marked"] == LOST_UPDATES else None

        marks = await eventually(all_marked, what="the API's published marks")
        ready = await queue_depth(env["AMQP_QUEUE"])
        assert marks["messages"] == ready, "a message recorded for each one in the queue"
        # Sent at once, some went together: at least one message carries several.
        assert ready < LOST_UPDATES, f"{ready} messages for {LOST_UPDATES} Updates"

        await purge(env["AMQP_QUEUE"])  # confirmed, then lost before any worker took them
        await processes.start("workers", env, "worker-lost-messages")
        for n, op in enumerate(accepted):
            done = await wait_done(operations, op.id, timeout=60)
            assert response_image(done).description == f"lost-{n}"
    revisions = await db.fetch("SELECT revision FROM images WHERE id = ANY($1)", image_ids)
    assert [r["revision"] for r in revisions] == [1] * LOST_UPDATES, "each applied once"


async def queue_depth(queue: str) -> int:
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue, passive=True)
        return declared.declaration_result.message_count or 0


async def purge(queue: str) -> None:
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        await (await channel.get_queue(queue)).purge()
