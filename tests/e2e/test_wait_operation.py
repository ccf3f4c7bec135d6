"""google.longrunning.Operations: GetOperation and WaitOperation over the same operations."""

from __future__ import annotations

import asyncio
import time

import grpc
from google.longrunning import operations_pb2, operations_pb2_grpc
from google.protobuf import duration_pb2

from tests.e2e.client import folder, rpc_error, unique, wait_done
from tests.support import connect
from yandex.cloud.baremetal.v1alpha import image_pb2, image_service_pb2, image_service_pb2_grpc

WAITERS = 1000


def wait_request(name: str, seconds: float) -> operations_pb2.WaitOperationRequest:
    return operations_pb2.WaitOperationRequest(
        name=name, timeout=duration_pb2.Duration(seconds=int(seconds), nanos=0)
    )


async def test_get_operation_is_the_same_operation(channel, images, operations, blobs):
    created = await images.Create(
        image_service_pb2.CreateImageRequest(
            folder_id=folder(), name=unique("img"), uri=blobs.url("/blob/8")
        )
    )
    done = await wait_done(operations, created.id)
    lro = await operations_pb2_grpc.OperationsStub(channel).GetOperation(
        operations_pb2.GetOperationRequest(name=created.id)
    )
    assert lro.name == done.id
    assert lro.done
    assert lro.metadata == done.metadata
    assert lro.response == done.response


async def test_wait_operation_returns_when_the_operation_finishes(channel, images, blobs):
    blobs.gate.clear()
    created = await images.Create(
        image_service_pb2.CreateImageRequest(
            folder_id=folder(), name=unique("img"), uri=blobs.url("/gated/1000")
        )
    )
    lro = operations_pb2_grpc.OperationsStub(channel)
    waiting = asyncio.ensure_future(lro.WaitOperation(wait_request(created.id, 30)))
    await asyncio.sleep(0)  # let the call go out; the download is held by the gate
    assert not waiting.done()
    started = time.monotonic()
    blobs.release()
    finished = await waiting
    assert finished.done
    assert finished.response.Is(image_pb2.Image.DESCRIPTOR)
    assert time.monotonic() - started < 10


async def test_wait_operation_answers_the_current_state_after_its_timeout(
    processes, own_stack_env, blobs
):
    api = await processes.start("service", own_stack_env(), "api-wait-timeout")  # no workers
    async with connect(api.address) as channel:
        images = image_service_pb2_grpc.ImageServiceStub(channel)
        created = await images.Create(
            image_service_pb2.CreateImageRequest(
                folder_id=folder(), name=unique("img"), uri=blobs.url("/blob/8")
            )
        )
        started = time.monotonic()
        lro = await operations_pb2_grpc.OperationsStub(channel).WaitOperation(
            wait_request(created.id, 1)
        )
    assert not lro.done
    assert 0.9 < time.monotonic() - started < 5


async def test_a_thousand_waiters_are_woken_by_events_not_by_polling(
    processes, own_stack_env, blobs, db
):
    env = own_stack_env()
    api = await processes.start("service", env, "api-waiters")  # workers come later
    async with connect(api.address) as channel:
        images = image_service_pb2_grpc.ImageServiceStub(channel)
        lro = operations_pb2_grpc.OperationsStub(channel)
        folder_id = folder()
        ready = [
            await create_ready_image_without_worker(db, folder_id) for _ in range(WAITERS // 10)
        ]
        updates = [
            await images.Update(
                image_service_pb2.UpdateImageRequest(image_id=image_id, description="woken")
            )
            for image_id in ready
        ]
        # Ten waiters on each of a hundred unfinished operations.
        waiting = [
            asyncio.ensure_future(lro.WaitOperation(wait_request(op.id, 60)))
            for op in updates
            for _ in range(10)
        ]
        await settled(db)  # every waiter has read its operation and sleeps
        commits_before = await transactions(db)
        await asyncio.sleep(2)  # a quiet interval: a polling design would query here
        quiet = await transactions(db) - commits_before
        assert not any(w.done() for w in waiting)
        await processes.start("workers", env, "worker-waiters")
        results = await asyncio.wait_for(asyncio.gather(*waiting), 60)
    assert all(r.done for r in results)
    assert len(results) == WAITERS
    # 1,000 waiters polling even once a second would commit 2,000 transactions here; the
    # rest of the test stack's background loops account for the few that happen.
    assert quiet < 400, quiet


async def test_wait_on_an_unknown_operation_is_not_found(channel):
    error = await rpc_error(
        operations_pb2_grpc.OperationsStub(channel).WaitOperation(wait_request("opnnope", 1))
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND


async def create_ready_image_without_worker(db, folder_id: str) -> str:
    from service.domain.ids import IMAGE_PREFIX, new_id

    image_id = new_id(IMAGE_PREFIX)
    await db.execute(
        "INSERT INTO images (id, folder_id, name, status) VALUES ($1, $2, $3, 2)",
        image_id,
        folder_id,
        unique("img"),
    )
    return image_id


async def settled(db) -> None:
    """Wait until the database counts (almost) no transactions for two seconds.

    Backends report their counts at most once a second, so a lull shorter than that
    can hide work still to be reported.
    """
    last = await transactions(db)
    calm = 0
    deadline = time.monotonic() + 60
    while calm < 4:
        assert time.monotonic() < deadline, "the database never settled"
        await asyncio.sleep(0.5)
        now = await transactions(db)
        calm = calm + 1 if now - last < 50 else 0
        last = now


async def transactions(db) -> int:
    # Statistics are per backend and flushed at transaction end; this read flushes ours.
    await db.execute("SELECT pg_stat_clear_snapshot()")
    return int(
        await db.fetchval(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database"
            " WHERE datname = current_database()"
        )
    )
