"""Image use cases: accept Create, Update and Delete; read images and their operations.

Every method checks in one order: the caller's role, then the request's fields, then what
the caller may see. Authentication happened before (the entry point's call frame).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import structlog

from service.domain import ids
from service.domain.auth import Principal
from service.domain.errors import ServiceError, image_not_found
from service.domain.listing import image_query, operation_query
from service.domain.model import (
    IdempotencyKey,
    Image,
    ImageStatus,
    NewImage,
    NewOperation,
    Operation,
    OperationKind,
    utcnow,
)
from service.domain.network import NetworkPolicy
from service.domain.paging import fitting, image_wire_bytes, operation_wire_bytes
from service.domain.validation import (
    Violations,
    check_folder_id,
    check_image_id,
    page_size,
    resolve_update,
    validate_idempotency_key,
    validate_image_id,
    validate_new_image,
)
from service.runtime import metrics, tracing
from service.runtime.batching import MicroBatcher
from service.usecases.outbox import PublishedMarks, Publishes
from service.usecases.ports import Accepted, Accepts, NewUpdate, Publisher, Reads, Unpublished

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class ImagePage:
    images: list[Image]
    next_page_token: str


@dataclass(frozen=True)
class OperationPage:
    operations: list[Operation]
    next_page_token: str


def new_operation(kind: OperationKind, image_id: str, created_by: str) -> NewOperation:
    """An operation about to be accepted, with an ID of its own."""
    return NewOperation(ids.new_id(ids.OPERATION_PREFIX), kind, image_id, created_by)


class Images:
    """What the API does with images; servicers only convert protobuf around it."""

    def __init__(
        self,
        accepts: Accepts,
        reads: Reads,
        publisher: Publisher,
        marks: PublishedMarks,
        *,
        publish_timeout: float,
        network_policy: NetworkPolicy | None = None,
        page_bytes: int = 512 * 1024,
    ) -> None:
        self._accepts = accepts
        self._reads = reads
        # Operations accepted together are sent together: one message, one confirm.
        self._publishes = Publishes(publisher, marks, publish_timeout)
        self._network_policy = network_policy if network_policy is not None else NetworkPolicy()
        # Pages stop short of this many bytes, whatever their page_size, so a page of the
        # largest images still fits in a message (the rest comes with next_page_token).
        self._page_bytes = page_bytes
        # Updates arriving together are accepted together, keyed or not. One statement at a
        # time: two in flight in one folder wait for each other on the folder's quota row
        # anyway, and one lets the next batch gather every call that arrives meanwhile, so
        # under load there are fewer, larger statements, commits and messages (measured in
        # docs/benchmarks.md, round three's third lever). A lone Update still goes at once.
        self._updates = MicroBatcher(
            accepts.begin_updates, max_batch=256, max_in_flight=1, name="accept_updates"
        )

    async def create_image(
        self, request: NewImage, caller: Principal, idempotency: IdempotencyKey | None = None
    ) -> Operation:
        caller.require_editor()
        validate_new_image(request)
        _validate_key(idempotency)
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
        operation = new_operation(OperationKind.CREATE_IMAGE, image.id, caller.subject)
        accepted = await self._accepts.insert_create(image, operation, request, idempotency)
        return await self._enqueue(accepted, caller)

    async def update_image(
        self,
        image_id: str,
        mask_paths: Sequence[str] | None,
        name: str,
        description: str,
        labels: Mapping[str, str],
        caller: Principal,
        idempotency: IdempotencyKey | None = None,
    ) -> Operation:
        """Start an Update of a ``READY`` image: with a mask, exactly its paths change;
        without one (``None``), the populated fields."""
        caller.require_editor()
        change = resolve_update(image_id, mask_paths, name, description, labels)
        _validate_key(idempotency)
        operation = new_operation(OperationKind.UPDATE_IMAGE, image_id, caller.subject)
        folders = caller.folder_filter()
        # The batch is written by another task: the call's trace context goes with it.
        new = NewUpdate(operation, change, folders, tracing.traceparent(), idempotency)
        together = await self._updates.submit(new)
        if together is not None:
            return await self._enqueue(Accepted(together), caller)
        # Not accepted in the batch (refused, or a key seen before): alone, in a transaction
        # that accepts it, replays the key's operation, or raises the precise error.
        accepted = await self._accepts.begin_update(operation, change, idempotency, folders)
        return await self._enqueue(accepted, caller)

    async def delete_image(
        self, image_id: str, caller: Principal, idempotency: IdempotencyKey | None = None
    ) -> Operation:
        caller.require_editor()
        validate_image_id(image_id)
        _validate_key(idempotency)
        operation = new_operation(OperationKind.DELETE_IMAGE, image_id, caller.subject)
        accepted = await self._accepts.begin_delete(operation, idempotency, caller.folder_filter())
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
        tracing.set_attribute("image.operation.id", operation.id)
        metrics.operation_accepted(operation.kind.value)
        try:
            await self._publishes.publish(Unpublished(operation.id, tracing.traceparent()))
        except ServiceError as exc:
            log.warning("operation.publish_deferred", error=exc.message)
        else:
            log.debug("operation.accepted", kind=operation.kind.value)
        return operation

    async def get_image(self, image_id: str, caller: Principal) -> Image:
        validate_image_id(image_id)
        image = await self._reads.get_image(image_id)
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
        query = image_query(folder_id, filter_text, order_by, page_token)
        images = await self._reads.list_images(query, limit + 1)
        fits = fitting(images, self._page_bytes, image_wire_bytes)
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
        query = operation_query(image_id, page_token)
        operations = await self._reads.list_operations(query, limit + 1)
        fits = fitting(operations, self._page_bytes, operation_wire_bytes)
        if operations:
            folder = operations[0].folder_id
        elif page_token:
            folder = None  # past the last page: nothing to show, nothing to hide
        else:
            folder = await self._reads.image_folder(image_id)
            if folder is None:
                raise image_not_found(image_id)
        if folder is not None and not caller.sees(folder):
            raise image_not_found(image_id)
        next_token = ""
        if len(operations) > limit or fits < len(operations):
            operations = operations[: min(limit, fits)]
            next_token = query.next_token(operations[-1].created_at, operations[-1].id)
        return OperationPage(operations=operations, next_page_token=next_token)


def _validate_key(idempotency: IdempotencyKey | None) -> None:
    if idempotency is not None:
        validate_idempotency_key(idempotency.key)
