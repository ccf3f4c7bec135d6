"""SIGTERM drains: health turns NOT_SERVING, in-flight work finishes, the process exits 0."""

from __future__ import annotations

import asyncio
import signal

from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.e2e.client import folder, unique, wait_done
from tests.support import TcpProxy, backend_waiting_on_lock, connect, eventually
from yandex.cloud.baremetal.v1alpha import image_pb2, image_service_pb2, image_service_pb2_grpc
from yandex.cloud.operation import operation_service_pb2_grpc


async def insert_ready_image(db) -> str:
    """A READY image row, written directly: these tests need no worker to make one."""
    from service.domain.ids import IMAGE_PREFIX, new_id

    image_id = new_id(IMAGE_PREFIX)
    await db.execute(
        "INSERT INTO images (id, folder_id, name, status) VALUES ($1, $2, $3, $4)",
        image_id,
        folder(),
        unique("img"),
        image_pb2.Image.READY,
    )
    return image_id


async def test_api_sigterm_reports_not_serving_finishes_in_flight_calls_and_exits_0(
    processes, own_stack_env, db
):
    api = await processes.start("service", own_stack_env(GRPC_GRACE_SECONDS="20"), "api-drain")
    image_id = await insert_ready_image(db)
    async with connect(api.address) as channel:
        images = image_service_pb2_grpc.ImageServiceStub(channel)
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())

        async def serving() -> None:
            while (await watch.read()).status != health_pb2.HealthCheckResponse.SERVING:
                pass

        await asyncio.wait_for(serving(), 30)  # once the database and broker are reached

        async with db.acquire() as conn, conn.transaction():
            # The Update waits on this row lock: an RPC in flight when SIGTERM arrives.
            await conn.execute("SELECT 1 FROM images WHERE id = $1 FOR UPDATE", image_id)
            in_flight = asyncio.ensure_future(
                images.Update(
                    image_service_pb2.UpdateImageRequest(image_id=image_id, description="late")
                )
            )

            async def update_waiting() -> bool:
                return await backend_waiting_on_lock(db, "images")

            await eventually(update_waiting, what="the Update to be in flight")
            api.signal(signal.SIGTERM)
            status = await watch.read()
            assert status.status == health_pb2.HealthCheckResponse.NOT_SERVING
        operation = await in_flight
    assert operation.id
    assert await asyncio.to_thread(api.wait, 30) == 0
    assert api.logged("api.stopped")


async def test_worker_sigterm_finishes_the_operation_in_flight_and_exits_0(
    processes, own_stack_env, db, blobs
):
    env = own_stack_env(WORKER_GRACE_SECONDS="30")
    api = await processes.start("service", env, "api-worker-drain")
    worker = await processes.start("workers", env, "worker-drain")
    blobs.gate.clear()
    before = blobs.gated_requests
    async with connect(api.address) as channel:
        images = image_service_pb2_grpc.ImageServiceStub(channel)
        operations = operation_service_pb2_grpc.OperationServiceStub(channel)
        created = await images.Create(
            image_service_pb2.CreateImageRequest(
                folder_id=folder(), name=unique("img"), uri=blobs.url("/gated/1000")
            )
        )

        async def downloading() -> bool:
            return blobs.gated_requests > before

        await eventually(downloading, what="the download to start")
        worker.signal(signal.SIGTERM)

        async def draining() -> bool:
            return bool(worker.logged("workers.draining"))

        await eventually(draining, what="the worker to start draining")
        blobs.release()
        done = await wait_done(operations, created.id)
    assert done.WhichOneof("result") == "response"
    assert await asyncio.to_thread(worker.wait, 30) == 0
    assert worker.logged("workers.stopped")


async def test_worker_sigterm_exits_promptly_while_the_broker_is_unreachable(
    processes, own_stack_env
):
    proxy = await TcpProxy("127.0.0.1", 5672).start()
    try:
        env = own_stack_env(AMQP_URL=f"amqp://guest:guest@127.0.0.1:{proxy.port}/")
        worker = await processes.start("workers", env, "worker-no-broker")
        await proxy.cut()
        worker.signal(signal.SIGTERM)
        assert await asyncio.to_thread(worker.wait, 20) == 0
    finally:
        await proxy.close()
