"""Losing PostgreSQL or RabbitMQ: health says so, nothing is lost, service resumes by itself.

Connections go through TCP proxies the tests cut and restore, so the machine's own PostgreSQL
and RabbitMQ keep running for everything else.
"""

from __future__ import annotations

import asyncio
import json

import aio_pika
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.adapters.rabbitmq import queue_arguments
from service.domain.ids import OPERATION_PREFIX, new_id
from tests.conftest import AMQP_URL
from tests.e2e.client import create_ready_image, folder, response_image, unique, wait_done
from tests.support import TcpProxy, connect, eventually
from yandex.cloud.baremetal.v1alpha import image_pb2, image_service_pb2, image_service_pb2_grpc
from yandex.cloud.operation import operation_service_pb2_grpc

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def proxied(url: str, proxy: TcpProxy) -> str:
    head, tail = url.rsplit("@", 1)
    rest = tail.split("/", 1)[1]
    return f"{head}@127.0.0.1:{proxy.port}/{rest}"


async def proxies(stack_env: dict[str, str]) -> tuple[TcpProxy, TcpProxy]:
    database = await TcpProxy("127.0.0.1", 5432).start()
    broker = await TcpProxy("127.0.0.1", 5672).start()
    return database, broker


async def health_status(channel: grpc.aio.Channel) -> int:
    response = await health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(), timeout=5
    )
    return int(response.status)


async def test_api_health_follows_its_dependencies_and_serving_resumes(
    processes, own_stack_env, stack_env, blobs
):
    database, broker = await proxies(stack_env)
    try:
        env = own_stack_env(HEALTH_INTERVAL_SECONDS="0.2", DB_COMMAND_TIMEOUT_SECONDS="3")
        env["DATABASE_URL"] = proxied(env["DATABASE_URL"], database)
        env["AMQP_URL"] = proxied(AMQP_URL, broker)
        api = await processes.start("service", env, "api-deps")
        await processes.start("workers", env, "worker-deps")
        async with connect(api.address) as channel:
            images = image_service_pb2_grpc.ImageServiceStub(channel)
            operations = operation_service_pb2_grpc.OperationServiceStub(channel)

            async def status_is(wanted: int):
                async def check() -> bool:
                    return await health_status(channel) == wanted

                return check

            await eventually(await status_is(SERVING), what="SERVING")
            for cut in (database, broker):
                await cut.cut()
                await eventually(await status_is(NOT_SERVING), what="NOT_SERVING", timeout=20)
                await cut.restore()
                await eventually(await status_is(SERVING), what="SERVING again", timeout=30)

            # The pools reconnected: the whole pipeline works again.
            image = await create_ready_image(images, operations, blobs.url("/blob/8"), folder())
            assert image.status == image_pb2.Image.READY
    finally:
        await database.close()
        await broker.close()


async def test_updates_accepted_while_workers_lose_the_database_finish_once_it_is_back(
    processes, own_stack_env, stack_env, blobs, tmp_path
):
    database, _ = await proxies(stack_env)
    health_file = tmp_path / "workers.health"
    try:
        api_env = own_stack_env()
        worker_env = dict(
            api_env,
            DATABASE_URL=proxied(api_env["DATABASE_URL"], database),
            WORKER_HEALTH_FILE=str(health_file),
            HEALTH_INTERVAL_SECONDS="0.2",
            DB_COMMAND_TIMEOUT_SECONDS="3",
        )
        api = await processes.start("service", api_env, "api-db-loss")
        await processes.start("workers", worker_env, "worker-db-loss")

        async def healthy() -> bool:
            return await asyncio.to_thread(health_file.exists)

        await eventually(healthy, what="the worker health file")
        async with connect(api.address) as channel:
            images = image_service_pb2_grpc.ImageServiceStub(channel)
            operations = operation_service_pb2_grpc.OperationServiceStub(channel)
            ready = [
                await create_ready_image(images, operations, blobs.url("/blob/8"), folder())
                for _ in range(5)
            ]
            await database.cut()

            async def unhealthy() -> bool:
                return not await asyncio.to_thread(health_file.exists)

            await eventually(unhealthy, what="the health file to go", timeout=20)
            accepted = [
                await images.Update(
                    image_service_pb2.UpdateImageRequest(image_id=i.id, description="later")
                )
                for i in ready
            ]
            await database.restore()
            for op in accepted:
                done = await wait_done(operations, op.id, timeout=90)
                assert response_image(done).description == "later"
            await eventually(healthy, what="the health file to come back")
    finally:
        await database.close()


async def test_a_consumer_cancelled_by_the_broker_subscribes_again(processes, own_stack_env, blobs):
    env = own_stack_env(CONSUMER_WATCH_INTERVAL_SECONDS="0.3", CONSUMER_STALL_SECONDS="1")
    api = await processes.start("service", env, "api-watch")
    worker = await processes.start("workers", env, "worker-watch")
    queue = env["AMQP_QUEUE"]
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        # Deleting the queue cancels its consumers on live channels (an operator's mistake,
        # a failover); it is then declared again, as any service restart would.
        await channel.queue_delete(queue)

        async def cancelled() -> bool:
            return any(
                "cancelled by the broker" in line.get("message", "") for line in worker.log_lines()
            )

        await eventually(cancelled, what="the broker to cancel the consumer")
        await channel.declare_queue(
            queue, durable=True, arguments=queue_arguments(queue, delivery_limit=5)
        )
    async with connect(api.address) as grpc_channel:
        images = image_service_pb2_grpc.ImageServiceStub(grpc_channel)
        operations = operation_service_pb2_grpc.OperationServiceStub(grpc_channel)
        op = await images.Create(
            image_service_pb2.CreateImageRequest(
                folder_id=folder(), name=unique("img"), uri=blobs.url("/blob/8")
            )
        )
        done = await wait_done(operations, op.id, timeout=60)
    assert done.WhichOneof("result") == "response"
    assert worker.logged("consumer.resubscribed", queue=queue)


async def test_a_poison_message_is_dead_lettered_and_its_operation_fails_cleanly(
    processes, own_stack_env, db
):
    env = own_stack_env(AMQP_DELIVERY_LIMIT="2")
    worker = await processes.start("workers", env, "worker-poison")
    image_id = new_id("img")
    operation_id = new_id(OPERATION_PREFIX)
    await db.execute(
        "INSERT INTO images (id, folder_id, name, status) VALUES ($1, $2, $3, $4)",
        image_id,
        folder(),
        unique("img"),
        image_pb2.Image.UPDATING,
    )
    # A request no worker can apply: labels that are not a map. Every delivery fails.
    await db.execute(
        "INSERT INTO operations (id, kind, image_id, folder_id, description, request)"
        " VALUES ($1, 'update_image', $2, 'f', 'Update image', $3::jsonb)",
        operation_id,
        image_id,
        json.dumps({"labels": "not-a-map"}),
    )
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        await channel.default_exchange.publish(
            aio_pika.Message(operation_id.encode()), routing_key=env["AMQP_QUEUE"]
        )

    async def finished():
        return await db.fetchrow(
            "SELECT error_code, error_message FROM operations WHERE id = $1 AND done",
            operation_id,
        )

    row = await eventually(finished, timeout=60, what="the poison operation to finish")
    assert row["error_code"] == grpc.StatusCode.INTERNAL.value[0]
    assert "delivery attempts" in row["error_message"]
    assert worker.logged("operation.abandoned", operation_id=operation_id)
    failures = [
        line
        for line in worker.logged("consumer.handler_failed")
        if operation_id in line.get("operation_ids", [])
    ]
    assert len(failures) >= 2  # delivered up to the limit before it was dead-lettered
    status = await db.fetchval("SELECT status FROM images WHERE id = $1", image_id)
    assert status == image_pb2.Image.READY  # usable again
