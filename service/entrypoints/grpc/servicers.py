"""Thin servicers: protobuf in, one handler call, protobuf out. Method names follow the protos."""

from __future__ import annotations

import hashlib

import grpc
from google.longrunning import operations_pb2, operations_pb2_grpc
from google.protobuf import empty_pb2
from google.protobuf.message import Message

from service.domain.errors import Unimplemented
from service.domain.model import IdempotencyKey, NewImage, Operation
from service.entrypoints.grpc.calls import caller
from service.entrypoints.grpc.convert import (
    EncodedOperation,
    image_to_proto,
    longrunning_operation,
    operation_to_proto,
)
from service.usecases.images import Images
from service.usecases.operations import Operations
from yandex.cloud.baremetal.v1alpha import image_pb2, image_service_pb2, image_service_pb2_grpc
from yandex.cloud.operation import operation_pb2, operation_service_pb2, operation_service_pb2_grpc

Context = grpc.aio.ServicerContext[object, object]

IDEMPOTENCY_HEADER = "idempotency-key"
# The longest one WaitOperation waits before answering with the state as it stands.
MAX_WAIT_SECONDS = 60.0
# How long before the client's deadline a wait gives up, to answer in time.
DEADLINE_MARGIN_SECONDS = 0.05


def idempotency_key(context: Context, method: str, request: Message) -> IdempotencyKey | None:
    """The call's ``idempotency-key``, if sent, bound to the caller and the exact request
    (the use case validates it, after the caller's role)."""
    for key, value in context.invocation_metadata() or ():
        if key == IDEMPOTENCY_HEADER:
            text = value if isinstance(value, str) else value.decode(errors="replace")
            digest = hashlib.sha256(method.encode())
            digest.update(request.SerializeToString(deterministic=True))
            # Keys are the caller's own: another caller's identical key is another key.
            return IdempotencyKey(caller=caller().subject, key=text, fingerprint=digest.hexdigest())
    return None


def wait_seconds(request: operations_pb2.WaitOperationRequest, remaining: float | None) -> float:
    """How long a wait lasts: the request's ``timeout`` (none or negative: none at all),
    at most ``MAX_WAIT_SECONDS``, and over before the call's deadline (``remaining``
    seconds; ``None``: no deadline), so the answer is the state as it stands then."""
    seconds = MAX_WAIT_SECONDS
    if request.HasField("timeout"):
        asked = request.timeout.seconds + request.timeout.nanos / 1e9
        seconds = min(seconds, max(asked, 0.0))
    if remaining is not None:
        seconds = min(seconds, max(remaining - DEADLINE_MARGIN_SECONDS, 0.0))
    return seconds


class ImageService(image_service_pb2_grpc.ImageServiceServicer):
    def __init__(self, images: Images) -> None:
        self._images = images

    async def Get(
        self, request: image_service_pb2.GetImageRequest, context: Context
    ) -> image_pb2.Image:
        return image_to_proto(await self._images.get_image(request.image_id, caller()))

    async def List(
        self, request: image_service_pb2.ListImagesRequest, context: Context
    ) -> image_service_pb2.ListImagesResponse:
        page = await self._images.list_images(
            request.folder_id,
            request.page_size,
            request.page_token,
            request.filter,
            request.order_by,
            caller(),
        )
        return image_service_pb2.ListImagesResponse(
            images=[image_to_proto(image) for image in page.images],
            next_page_token=page.next_page_token,
        )

    async def Create(
        self, request: image_service_pb2.CreateImageRequest, context: Context
    ) -> operation_pb2.Operation:
        new = NewImage(
            folder_id=request.folder_id,
            name=request.name,
            description=request.description,
            uri=request.uri,
            labels=dict(request.labels),
        )
        key = idempotency_key(context, "Create", request)
        return operation_to_proto(await self._images.create_image(new, caller(), key))

    async def Update(
        self, request: image_service_pb2.UpdateImageRequest, context: Context
    ) -> operation_pb2.Operation:
        # An empty mask is no mask (AIP-134): the populated fields change.
        has_mask = request.HasField("update_mask") and len(request.update_mask.paths) > 0
        operation = await self._images.update_image(
            request.image_id,
            list(request.update_mask.paths) if has_mask else None,
            request.name,
            request.description,
            dict(request.labels),
            caller(),
            idempotency_key(context, "Update", request),
        )
        return operation_to_proto(operation)

    async def Delete(
        self, request: image_service_pb2.DeleteImageRequest, context: Context
    ) -> operation_pb2.Operation:
        key = idempotency_key(context, "Delete", request)
        return operation_to_proto(await self._images.delete_image(request.image_id, caller(), key))

    async def ListOperations(
        self, request: image_service_pb2.ListImageOperationsRequest, context: Context
    ) -> image_service_pb2.ListImageOperationsResponse:
        page = await self._images.list_operations(
            request.image_id, request.page_size, request.page_token, caller()
        )
        return image_service_pb2.ListImageOperationsResponse(
            operations=[operation_to_proto(op) for op in page.operations],
            next_page_token=page.next_page_token,
        )


class OperationService(operation_service_pb2_grpc.OperationServiceServicer):
    def __init__(self, operations: Operations[EncodedOperation]) -> None:
        self._operations = operations

    # The generated signature answers a message; this answers it encoded, which the call
    # frame's serializer sends as it is (``calls.passing_encoded``).
    async def Get(  # type: ignore[override]
        self, request: operation_service_pb2.GetOperationRequest, context: Context
    ) -> EncodedOperation:
        _, encoded = await self._operations.get_operation_encoded(request.operation_id, caller())
        return encoded

    async def Cancel(
        self, request: operation_service_pb2.CancelOperationRequest, context: Context
    ) -> operation_pb2.Operation:
        return operation_to_proto(
            await self._operations.cancel_operation(request.operation_id, caller())
        )


class LongRunningOperations(operations_pb2_grpc.OperationsServicer):  # type: ignore[misc]
    """``google.longrunning.Operations`` over the same operations, for clients that would
    rather wait for ``done`` than poll."""

    def __init__(self, operations: Operations[EncodedOperation]) -> None:
        self._operations = operations

    async def GetOperation(
        self, request: operations_pb2.GetOperationRequest, context: Context
    ) -> operations_pb2.Operation:
        return longrunning_operation(await self._operations.get_operation(request.name, caller()))

    async def WaitOperation(
        self, request: operations_pb2.WaitOperationRequest, context: Context
    ) -> operations_pb2.Operation:
        return longrunning_operation(await self.waited(request, context))

    async def waited(
        self, request: operations_pb2.WaitOperationRequest, context: Context
    ) -> Operation:
        """The operation ``WaitOperation`` answers, in whichever message its transport
        sends (REST's ``:wait`` answers it as ``OperationService.Get`` does)."""
        seconds = wait_seconds(request, context.time_remaining())
        return await self._operations.wait_operation(request.name, seconds, caller())

    async def CancelOperation(
        self, request: operations_pb2.CancelOperationRequest, context: Context
    ) -> empty_pb2.Empty:
        await self._operations.cancel_operation(request.name, caller())
        return empty_pb2.Empty()

    async def ListOperations(
        self, request: operations_pb2.ListOperationsRequest, context: Context
    ) -> operations_pb2.ListOperationsResponse:
        raise Unimplemented("use ImageService.ListOperations")

    async def DeleteOperation(
        self, request: operations_pb2.DeleteOperationRequest, context: Context
    ) -> empty_pb2.Empty:
        raise Unimplemented("finished operations are removed by retention")
