"""``python -m bench.baseline.api``: the baseline's gRPC API (grpc.aio, SQLAlchemy on asyncpg).

Environment: ``BASELINE_DATABASE_URL`` (postgresql://...), ``BASELINE_AMQP_URL``,
``BASELINE_QUEUE``, ``BASELINE_TOKEN``, ``BASELINE_LISTEN`` (default 127.0.0.1:0). Once
serving it prints ``baseline listening PORT``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from datetime import datetime
from typing import Any

import grpc
from google.protobuf import any_pb2, timestamp_pb2
from google.protobuf.message import Message
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

from bench.baseline.models import Image, ImageStatus, Operation, new_id
from bench.baseline.tasks import apply_update, sqlalchemy_url
from yandex.cloud.baremetal.v1alpha import image_pb2, image_service_pb2, image_service_pb2_grpc
from yandex.cloud.operation import operation_pb2, operation_service_pb2_grpc

# The one caller the static token stands for.
SUBJECT = "baseline-user"
UPDATABLE = ("name", "description", "labels")


def timestamp(value: datetime) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(value)
    return out


def pack(message: Message) -> any_pb2.Any:
    out = any_pb2.Any()
    out.Pack(message)
    return out


def image_to_proto(image: Image) -> image_pb2.Image:
    return image_pb2.Image(
        id=image.id,
        folder_id=image.folder_id,
        name=image.name,
        description=image.description,
        status=image_pb2.Image.Status.ValueType(image.status),
        created_at=timestamp(image.created_at),
        labels=image.labels,
    )


def operation_to_proto(operation: Operation, image: Image | None) -> operation_pb2.Operation:
    out = operation_pb2.Operation(
        id=operation.id,
        description=operation.description,
        created_at=timestamp(operation.created_at),
        created_by=operation.created_by,
        modified_at=timestamp(operation.modified_at),
        done=operation.done,
        metadata=pack(image_service_pb2.UpdateImageMetadata(image_id=operation.image_id)),
    )
    if operation.done and image is not None:
        out.response.CopyFrom(pack(image_to_proto(image)))
    return out


def changed_fields(request: image_service_pb2.UpdateImageRequest) -> dict[str, Any]:
    """The fields the Update sets: those in its mask, or the populated ones without a mask."""
    values: dict[str, Any] = {
        "name": request.name,
        "description": request.description,
        "labels": dict(request.labels),
    }
    if request.update_mask.paths:
        unknown = [path for path in request.update_mask.paths if path not in UPDATABLE]
        if unknown:
            raise ValueError(f"update_mask: unknown field {unknown[0]!r}")
        return {path: values[path] for path in request.update_mask.paths}
    return {field: value for field, value in values.items() if value}


async def authenticate(context: grpc.aio.ServicerContext[Any, Any], token: str) -> dict[str, str]:
    """The call's metadata, once its bearer token is the expected one."""
    metadata = {key: value for key, value in context.invocation_metadata() or ()}
    if metadata.get("authorization") != f"Bearer {token}":
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, "invalid or missing token")
    return metadata


async def answer(session: AsyncSession, operation: Operation) -> operation_pb2.Operation:
    image = await session.get(Image, operation.image_id) if operation.done else None
    return operation_to_proto(operation, image)


async def operation_with_key(session: AsyncSession, key: str) -> Operation | None:
    return await session.scalar(select(Operation).where(Operation.idempotency_key == key))


class ImageService(image_service_pb2_grpc.ImageServiceServicer):
    def __init__(self, sessions: async_sessionmaker[AsyncSession], token: str) -> None:
        self.sessions = sessions
        self.token = token

    async def Update(
        self,
        request: image_service_pb2.UpdateImageRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> operation_pb2.Operation:
        metadata = await authenticate(context, self.token)
        key = metadata.get("idempotency-key") or None
        try:
            changes = changed_fields(request)
        except ValueError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        async with self.sessions() as session:
            if key is not None:
                earlier = await operation_with_key(session, key)
                if earlier is not None:
                    return await answer(session, earlier)
            image = await session.scalar(
                select(Image).where(Image.id == request.image_id).with_for_update()
            )
            if image is None:
                await context.abort(
                    grpc.StatusCode.NOT_FOUND, f"Image {request.image_id} not found"
                )
            if image.status != ImageStatus.READY:
                await context.abort(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"Image {image.id} is {ImageStatus(image.status).name}, not READY",
                )
            image.status = ImageStatus.UPDATING
            operation = Operation(
                id=new_id("opn"),
                description="Update image",
                image_id=image.id,
                created_by=SUBJECT,
                done=False,
                request=changes,
                idempotency_key=key,
            )
            session.add(operation)
            try:
                await session.commit()
            except IntegrityError:
                # Another call with the same key committed first: answer its operation.
                await session.rollback()
                earlier = await operation_with_key(session, key) if key is not None else None
                if earlier is None:
                    raise
                return await answer(session, earlier)
        apply_update.delay(operation.id)
        return operation_to_proto(operation, None)


class OperationService(operation_service_pb2_grpc.OperationServiceServicer):
    def __init__(self, sessions: async_sessionmaker[AsyncSession], token: str) -> None:
        self.sessions = sessions
        self.token = token

    async def Get(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await authenticate(context, self.token)
        async with self.sessions() as session:
            operation = await session.get(Operation, request.operation_id)
            if operation is None:
                await context.abort(
                    grpc.StatusCode.NOT_FOUND, f"Operation {request.operation_id} not found"
                )
            return await answer(session, operation)


async def serve() -> None:
    database_url = os.environ["BASELINE_DATABASE_URL"]
    token = os.environ["BASELINE_TOKEN"]
    listen = os.environ.get("BASELINE_LISTEN", "127.0.0.1:0")
    # As many connections as the service's API may hold (its DB_POOL_MAX default), kept open.
    engine = create_async_engine(
        sqlalchemy_url(database_url, "asyncpg"), pool_size=10, max_overflow=0
    )
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    server = grpc.aio.server()
    image_service_pb2_grpc.add_ImageServiceServicer_to_server(ImageService(sessions, token), server)
    operation_service_pb2_grpc.add_OperationServiceServicer_to_server(
        OperationService(sessions, token), server
    )
    port = server.add_insecure_port(listen)
    await server.start()
    print(f"baseline listening {port}", flush=True)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    try:
        await stopping.wait()
    finally:
        await server.stop(5)
        await engine.dispose()


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(serve())


if __name__ == "__main__":
    main()
