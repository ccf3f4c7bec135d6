"""The benchmark's conventional Celery build (bench/baseline) answers the public API's Update and
OperationService.Get as the service does, through the generated stubs."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import grpc
import pytest

from bench.baseline.models import ImageStatus
from bench.baseline.stack import BaselineStack
from tests.support import eventually
from yandex.cloud.baremetal.v1alpha import image_pb2, image_service_pb2, image_service_pb2_grpc
from yandex.cloud.operation import (
    operation_pb2,
    operation_service_pb2,
    operation_service_pb2_grpc,
)

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def started(logs_dir: Path) -> Iterator[tuple[BaselineStack, list[str]]]:
    """A baseline stack with 20 READY images, stopped (and removed) at the end."""
    stack = BaselineStack(logs_dir / f"baseline-{uuid.uuid4().hex[:6]}")
    try:
        yield stack, stack.start(20)
    finally:
        stack.stop()


@pytest.fixture
def stack(started: tuple[BaselineStack, list[str]]) -> BaselineStack:
    return started[0]


@pytest.fixture
def image_ids(started: tuple[BaselineStack, list[str]]) -> list[str]:
    """The stack's READY images; each test that changes one takes its own with ``pop``."""
    return started[1]


@pytest.fixture
async def channel(stack: BaselineStack) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(stack.address) as ch:
        yield ch


def auth(stack: BaselineStack, key: str | None = None) -> tuple[tuple[str, str], ...]:
    metadata = (("authorization", f"Bearer {stack.token}"),)
    return (*metadata, ("idempotency-key", key)) if key else metadata


async def update_description(
    channel: grpc.aio.Channel, metadata: tuple[tuple[str, str], ...], image_id: str, text: str
) -> operation_pb2.Operation:
    return await image_service_pb2_grpc.ImageServiceStub(channel).Update(
        image_service_pb2.UpdateImageRequest(image_id=image_id, description=text),
        metadata=metadata,
    )


async def test_update_finishes_and_get_answers_the_updated_image(
    stack: BaselineStack, image_ids: list[str], channel: grpc.aio.Channel
) -> None:
    image_id = image_ids.pop()
    op = await update_description(channel, auth(stack, str(uuid.uuid4())), image_id, "changed")
    assert not op.done
    assert op.description == "Update image"
    metadata = image_service_pb2.UpdateImageMetadata()
    assert op.metadata.Unpack(metadata)
    assert metadata.image_id == image_id

    operations = operation_service_pb2_grpc.OperationServiceStub(channel)
    request = operation_service_pb2.GetOperationRequest(operation_id=op.id)

    async def finished() -> operation_pb2.Operation | None:
        got = await operations.Get(request, metadata=auth(stack))
        return got if got.done else None

    done = await eventually(finished, timeout=30, what="the Update to finish")
    image = image_pb2.Image()
    assert done.response.Unpack(image)
    assert (image.id, image.description, image.status) == (
        image_id,
        "changed",
        image_pb2.Image.READY,
    )
    stack.drain(timeout=30)


async def test_a_repeated_idempotency_key_answers_the_first_operation(
    stack: BaselineStack, image_ids: list[str], channel: grpc.aio.Channel
) -> None:
    image_id = image_ids.pop()
    metadata = auth(stack, str(uuid.uuid4()))
    first = await update_description(channel, metadata, image_id, "once")
    again = await update_description(channel, metadata, image_id, "once")
    assert again.id == first.id


async def test_an_unknown_image_is_not_found(
    stack: BaselineStack, channel: grpc.aio.Channel
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await update_description(channel, auth(stack), "img" + "z" * 17, "nothing")
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_an_image_that_is_not_ready_is_a_failed_precondition(
    stack: BaselineStack, image_ids: list[str], channel: grpc.aio.Channel
) -> None:
    image_id = image_ids.pop()
    conn = await asyncpg.connect(stack.database_url)
    try:
        await conn.execute(
            "UPDATE images SET status = $1 WHERE id = $2", int(ImageStatus.ERROR), image_id
        )
    finally:
        await conn.close()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await update_description(channel, auth(stack), image_id, "refused")
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_a_call_without_the_token_is_unauthenticated(
    image_ids: list[str], channel: grpc.aio.Channel
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await update_description(channel, (), image_ids[0], "anonymous")
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_unknown_operations_are_not_found(
    stack: BaselineStack, channel: grpc.aio.Channel
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await operation_service_pb2_grpc.OperationServiceStub(channel).Get(
            operation_service_pb2.GetOperationRequest(operation_id="opn" + "z" * 17),
            metadata=auth(stack),
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_the_stack_counts_the_api_the_worker_and_its_pool(stack: BaselineStack) -> None:
    pids = stack.pids()
    assert len(pids) == 4  # the API, the Celery parent and its two pool processes
    assert all(Path(f"/proc/{pid}").exists() for pid in pids)
