"""The service layer: one handler per use case, over the store and the broker."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

import structlog

from service.adapters.queue import Broker
from service.adapters.store import Accepted, NewUpdate, Store
from service.batching import MicroBatcher
from service.domain import ids
from service.domain.auth import Principal
from service.domain.errors import NotFound, ServiceError, image_not_found
from service.domain.listing import image_query, operation_query
from service.domain.lru import Lru
from service.domain.model import (
    DESCRIPTIONS,
    IdempotencyKey,
    Image,
    ImageChange,
    ImageStatus,
    NewImage,
    Operation,
    OperationKind,
    utcnow,
)
from service.domain.network import NetworkPolicy
from service.domain.validation import (
    Violations,
    check_folder_id,
    check_image_id,
    page_size,
    validate_image_id,
    validate_new_image,
    validate_operation_id,
)
from service.published import PublishedMarks
from service.waiters import OperationWaiters

log = structlog.get_logger(__name__)

T = TypeVar("T")


class FinishedOperations:
    """Finished operations never change, so they are kept in memory (least recent out).

    One finished longer ago than the retention period is gone from the database, so it is
    forgotten here too: every API process answers NOT_FOUND for it alike.
    """

    def __init__(self, capacity: int, retention_seconds: float = float("inf")) -> None:
        self._retention = timedelta(seconds=min(retention_seconds, 1e9))
        self._items: Lru[str, Operation] = Lru(capacity)

    def get(self, operation_id: str) -> Operation | None:
        operation = self._items.get(operation_id)
        if operation is not None and utcnow() - operation.modified_at > self._retention:
            self._items.pop(operation_id)
            return None
        return operation

    def put(self, operation: Operation) -> None:
        if operation.done:
            self._items.put(operation.id, operation)


@dataclass(frozen=True)
class ImagePage:
    images: list[Image]
    next_page_token: str


@dataclass(frozen=True)
class OperationPage:
    operations: list[Operation]
    next_page_token: str


def _image_bytes(image: Image) -> int:
    """An upper bound of an image's size on the wire."""
    labels = sum(len(k.encode()) + len(v.encode()) + 8 for k, v in image.labels.items())
    return 128 + len(image.name.encode()) + len(image.description.encode()) + labels


def _operation_bytes(operation: Operation) -> int:
    image = 0 if operation.response is None else _image_bytes(operation.response)
    error = 0 if operation.error is None else len(operation.error.message.encode())
    return 256 + image + error


def _fitting(items: Sequence[T], budget: int, size: Callable[[T], int]) -> int:
    """How many of ``items``, from the first, fit in ``budget`` bytes (at least one)."""
    total = 0
    for count, item in enumerate(items):
        total += size(item)
        if total > budget and count > 0:
            return count
    return len(items)


def _operation_not_found(operation_id: str) -> NotFound:
    return NotFound(f"Operation {operation_id} not found")


def _new_operation(
    kind: OperationKind, image_id: str, folder_id: str, created_by: str
) -> Operation:
    now = utcnow()  # replaced by the database's clock when the row is written
    return Operation(
        id=ids.new_id(ids.OPERATION_PREFIX),
        kind=kind,
        image_id=image_id,
        folder_id=folder_id,
        description=DESCRIPTIONS[kind],
        created_at=now,
        created_by=created_by,
        modified_at=now,
        done=False,
    )


class ImageApp:
    """What the API does; servicers only convert to and from protobuf around it."""

    def __init__(
        self,
        store: Store,
        broker: Broker,
        *,
        publish_timeout: float,
        cache_size: int,
        retention_seconds: float = float("inf"),
        network_policy: NetworkPolicy | None = None,
        waiters: OperationWaiters | None = None,
        marks: PublishedMarks | None = None,
        page_bytes: int = 512 * 1024,
    ) -> None:
        # Pages stop short of this many bytes, whatever their page_size, so a page of the
        # largest images still fits in a message (the rest comes with next_page_token).
        self._page_bytes = page_bytes
        self._marks = marks if marks is not None else PublishedMarks(store)
        self._waiters = waiters if waiters is not None else OperationWaiters()
        self._network_policy = network_policy if network_policy is not None else NetworkPolicy()
        self._store = store
        self._broker = broker
        self._publish_timeout = publish_timeout
        self._finished = FinishedOperations(cache_size, retention_seconds)
        # Concurrent calls share round trips: Updates without an idempotency key are accepted
        # together (group commit), and unfinished operations are read together.
        self._updates = MicroBatcher(store.begin_updates, max_batch=256, max_in_flight=2)
        self._reads = MicroBatcher(store.get_operations, max_batch=512, max_in_flight=2)

    async def create_image(
        self, request: NewImage, caller: Principal, idempotency: IdempotencyKey | None = None
    ) -> Operation:
        caller.require_editor()
        validate_new_image(request)
        self._network_policy.check_url_host(request.uri)  # names are checked by the worker
        caller.require_folder(request.folder_id)
        image = Image(
            id=ids.new_id(ids.IMAGE_PREFIX),
            folder_id=request.folder_id,
            name=request.name,
            description=request.description,
            checksum="",
            status=ImageStatus.CREATING,
            created_at=utcnow(),
            labels=dict(request.labels),
        )
        operation = _new_operation(
            OperationKind.CREATE_IMAGE, image.id, request.folder_id, caller.subject
        )
        accepted = await self._store.insert_create(image, operation, request, idempotency)
        return await self._enqueue(accepted, caller)

    async def update_image(
        self,
        image_id: str,
        change: ImageChange,
        caller: Principal,
        idempotency: IdempotencyKey | None = None,
    ) -> Operation:
        """Start an Update of a ``READY`` image (``change`` is already validated)."""
        caller.require_editor()
        operation = _new_operation(OperationKind.UPDATE_IMAGE, image_id, "", caller.subject)
        folders = caller.folder_filter()
        if idempotency is None:
            together = await self._updates.submit(NewUpdate(operation, change, folders))
            if together is not None:
                return await self._enqueue(Accepted(together), caller)
        # Keyed, or not accepted in the batch: alone, in a transaction that accepts it or
        # raises the precise error.
        accepted = await self._store.begin_update(operation, change, idempotency, folders)
        return await self._enqueue(accepted, caller)

    async def delete_image(
        self, image_id: str, caller: Principal, idempotency: IdempotencyKey | None = None
    ) -> Operation:
        caller.require_editor()
        validate_image_id(image_id)
        operation = _new_operation(OperationKind.DELETE_IMAGE, image_id, "", caller.subject)
        accepted = await self._store.begin_delete(operation, idempotency, caller.folder_filter())
        return await self._enqueue(accepted, caller)

    async def _enqueue(self, accepted: Accepted, caller: Principal) -> Operation:
        """Publish a new operation; on failure the outbox relay publishes it later."""
        operation = accepted.operation
        if accepted.replayed:
            # The key's first call may have come through a token of the same subject
            # with other folders: what this caller may not see stays unseen.
            if not caller.sees(operation.folder_id):
                raise image_not_found(operation.image_id)
            log.info("operation.replayed", operation_id=operation.id, kind=operation.kind.value)
            return operation
        # Bound for the rest of the call: its access log line (rpc.done) names the operation.
        structlog.contextvars.bind_contextvars(operation_id=operation.id)
        try:
            await self._broker.publish(operation.id, self._publish_timeout)
            self._marks.add(operation.id)
        except ServiceError as exc:
            log.warning("operation.publish_deferred", error=exc.message)
        else:
            log.debug("operation.accepted", kind=operation.kind.value)
        return operation

    async def get_image(self, image_id: str, caller: Principal) -> Image:
        validate_image_id(image_id)
        image = await self._store.get_image(image_id)
        # An image in a folder the caller may not see is answered exactly as a missing one.
        if image is None or not caller.sees(image.folder_id):
            raise image_not_found(image_id)
        return image

    async def list_images(
        self,
        folder_id: str,
        size: int,
        page_token: str,
        filter_text: str,
        order_by: str,
        caller: Principal,
    ) -> ImagePage:
        v = Violations()
        check_folder_id(v, folder_id)
        limit = page_size(v, size)
        v.raise_if_any()
        caller.require_folder(folder_id)
        query = image_query(folder_id, filter_text, order_by, limit, page_token)
        images = await self._store.list_images(query, limit + 1)
        fits = _fitting(images, self._page_bytes, _image_bytes)
        next_token = ""
        if len(images) > limit or fits < len(images):
            images = images[: min(limit, fits)]
            last = images[-1]
            sort_key = {"id": last.id, "name": last.name, "createdAt": last.created_at}
            next_token = query.next_token(sort_key[query.ordering.field], last.id)
        return ImagePage(images=images, next_page_token=next_token)

    async def list_operations(
        self, image_id: str, size: int, page_token: str, caller: Principal
    ) -> OperationPage:
        """An image's operations, newest first; readable after the image is deleted."""
        v = Violations()
        check_image_id(v, image_id)
        limit = page_size(v, size)
        v.raise_if_any()
        query = operation_query(image_id, limit, page_token)
        operations = await self._store.list_operations(query, limit + 1)
        fits = _fitting(operations, self._page_bytes, _operation_bytes)
        if operations:
            folder = operations[0].folder_id
        elif page_token:
            folder = None  # past the last page: nothing to show, nothing to hide
        else:
            folder = await self._store.image_folder(image_id)
            if folder is None:
                raise image_not_found(image_id)
        if folder is not None and not caller.sees(folder):
            raise image_not_found(image_id)
        next_token = ""
        if len(operations) > limit or fits < len(operations):
            operations = operations[: min(limit, fits)]
            next_token = query.next_token(operations[-1].created_at, operations[-1].id)
        return OperationPage(operations=operations, next_page_token=next_token)

    async def get_operation(self, operation_id: str, caller: Principal) -> Operation:
        validate_operation_id(operation_id)
        operation = self._finished.get(operation_id)
        if operation is None:
            operation = await self._reads.submit(operation_id)
            if operation is not None:
                self._finished.put(operation)
        if operation is None or not caller.sees(operation.folder_id):
            raise _operation_not_found(operation_id)
        return operation

    def operation_finished(self, operation_id: str, operation: Operation | None) -> None:
        """An operation finished (told by the database): kept, if known whole, and its
        waiters woken; they read it from memory then."""
        if operation is not None:
            self._finished.put(operation)
        self._waiters.done(operation_id)

    async def wait_operation(
        self, operation_id: str, timeout: float, caller: Principal
    ) -> Operation:
        """The operation once it is done, or as it stands after ``timeout`` seconds.

        The caller's future is woken by the database's notification that the operation
        finished; each wake-up costs one read.
        """
        loop = asyncio.get_running_loop()
        give_up = loop.time() + timeout
        while True:
            future = self._waiters.register(operation_id)
            try:
                # Read after registering: a finish between the read and the wait is not missed.
                operation = await self.get_operation(operation_id, caller)
                remaining = give_up - loop.time()
                if operation.done or remaining <= 0:
                    return operation
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(future, remaining)
            finally:
                self._waiters.unregister(operation_id, future)

    async def cancel_operation(self, operation_id: str, caller: Principal) -> Operation:
        caller.require_editor()
        validate_operation_id(operation_id)
        operation = await self._store.cancel_operation(operation_id, caller.folder_filter())
        if operation is None:
            raise _operation_not_found(operation_id)
        log.info("operation.cancel_requested", operation_id=operation_id, done=operation.done)
        self._finished.put(operation)
        return operation
