"""The outbox: Updates accepted while the broker is unreachable all finish once it is back."""

from __future__ import annotations

from tests.conftest import AMQP_URL
from tests.e2e.client import create_ready_image, folder, response_image, wait_done
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
