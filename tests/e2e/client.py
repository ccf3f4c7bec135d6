"""Client-side helpers for end-to-end tests: call, poll, unpack, inspect errors."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable
from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from tests.support import eventually
from yandex.cloud.baremetal.v1alpha import image_pb2, image_service_pb2
from yandex.cloud.operation import operation_pb2, operation_service_pb2


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def folder() -> str:
    return unique("folder")


async def wait_done(
    operations: Any, operation_id: str, timeout: float = 60.0
) -> operation_pb2.Operation:
    async def done() -> operation_pb2.Operation | None:
        op: operation_pb2.Operation = await operations.Get(
            operation_service_pb2.GetOperationRequest(operation_id=operation_id)
        )
        return op if op.done else None

    return await eventually(done, timeout=timeout, what=f"operation {operation_id} to finish")


def response_image(op: operation_pb2.Operation) -> image_pb2.Image:
    assert op.WhichOneof("result") == "response", op
    image = image_pb2.Image()
    assert op.response.Unpack(image)
    return image


def image_id_of(op: operation_pb2.Operation) -> str:
    for metadata_type in (
        image_service_pb2.CreateImageMetadata,
        image_service_pb2.UpdateImageMetadata,
    ):
        metadata = metadata_type()
        if op.metadata.Unpack(metadata):
            return metadata.image_id
    raise AssertionError(f"unexpected metadata {op.metadata.type_url}")


async def create_ready_image(
    images: Any, operations: Any, uri: str, folder_id: str, name: str | None = None, **fields: Any
) -> image_pb2.Image:
    op = await images.Create(
        image_service_pb2.CreateImageRequest(
            folder_id=folder_id, name=name or unique("img"), uri=uri, **fields
        )
    )
    done = await wait_done(operations, op.id)
    image = response_image(done)
    assert image.status == image_pb2.Image.READY
    return image


async def rpc_error(call: Awaitable[Any]) -> grpc.aio.AioRpcError:
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return exc
    raise AssertionError("the call succeeded; an error was expected")


def violated_fields(error: grpc.aio.AioRpcError) -> list[str]:
    """The fields named by the ``BadRequest`` detail of a rich error status."""
    status = rpc_status.from_call(error)
    assert status is not None, "no google.rpc.Status details"
    fields = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            fields += [v.field for v in bad.field_violations]
    return fields
