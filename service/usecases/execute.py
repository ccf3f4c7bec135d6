"""Carrying out one operation: claim it, apply it, finish it, exactly once.

An Update runs in one transaction that locks the operation row first: a duplicate delivery
waits for that lock, then finds the operation done and does nothing. Updates delivered
together are first tried as one statement that does the same for all of them; what it cannot
do alone goes through that transaction. A Create downloads for a long time, so it is claimed
with a lease first (committed), and finished in one transaction only if the claim is still
its own.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import replace

import structlog

from service.domain.errors import (
    AlreadyExists,
    FailedPrecondition,
    Internal,
    NotFound,
    ServiceError,
    Unavailable,
)
from service.domain.model import ClaimedOperation, ImageChange, ImageStatus, OperationError
from service.domain.model import OperationKind as Kind
from service.runtime import tracing
from service.runtime.batching import MicroBatcher
from service.runtime.retry import retrying
from service.usecases.ports import Downloaded, Downloader, Finishes, OperationTransaction
from service.usecases.undo import end_with_error

log = structlog.get_logger(__name__)

DOWNLOAD_TRIES = 3


def dead_letter_reason(delivery_limit: int) -> str:
    """The error an operation ends with when its message reached the dead-letter queue.

    Words for the caller only: that it was dead-lettered is recorded apart from them
    (``OperationTransaction.finish(dead_lettered=True)``), and nothing searches for them.
    """
    return f"Operation failed after {delivery_limit} delivery attempts"


def _error(exc: ServiceError) -> OperationError:
    return OperationError.from_exception(exc)


class Executor:
    def __init__(
        self,
        operations: Finishes,
        downloader: Downloader,
        *,
        lease_seconds: float,
        max_attempts: int,
        max_creates: int = 16,
    ) -> None:
        self._operations = operations
        self._downloader = downloader
        self._lease_seconds = lease_seconds
        self._max_attempts = max_attempts
        # A message carries many operations: Creates download at most this many at once.
        self._creates = asyncio.Semaphore(max_creates)
        # Updates delivered together are applied together: one statement, one commit.
        self._updates = MicroBatcher(
            operations.apply_updates, max_batch=128, max_in_flight=2, name="apply_updates"
        )

    async def execute(self, operation_id: str) -> None:
        """Bring the operation to ``done``, unless it is done or another worker holds it.

        Raises a retryable ``ServiceError`` when the database is unreachable.
        """
        with tracing.span("operation.apply", {"image.operation.id": operation_id}):
            await self._execute(operation_id)

    async def _execute(self, operation_id: str) -> None:
        if await self._updates.submit(operation_id):
            log.info("operation.done")
            return
        async with self._operations.transaction() as tx:
            operation = await tx.lock_operation(operation_id)
            if operation is None:
                log.info("operation.skipped", reason="done or unknown")
                return
            if operation.kind is Kind.UPDATE_IMAGE:
                await _apply_update(tx, operation)
                return
            if operation.kind is Kind.DELETE_IMAGE:
                await _apply_delete(tx, operation)
                return
        async with self._creates:
            await self._create(operation_id)

    async def abandon(self, operation_id: str, reason: str) -> None:
        """Finish an operation that cannot be carried out, restoring its image."""
        await self._end(operation_id, reason, dead_lettered=False)

    async def end_dead_lettered(self, operation_id: str, delivery_limit: int) -> None:
        """Finish an operation whose message reached the dead-letter queue after
        ``delivery_limit`` deliveries, restoring its image, and record that it was
        dead-lettered (``ops dead-letters`` lists it by that)."""
        await self._end(operation_id, dead_letter_reason(delivery_limit), dead_lettered=True)

    async def _end(self, operation_id: str, reason: str, *, dead_lettered: bool) -> None:
        async with self._operations.transaction() as tx:
            operation = await tx.lock_operation(operation_id)
            if operation is None:
                return
            image = await tx.lock_image(operation.image_id)
            error = _error(Internal(reason))
            await end_with_error(tx, operation, image, error, dead_lettered=dead_lettered)
            log.warning("operation.abandoned", reason=reason, dead_lettered=dead_lettered)

    async def _create(self, operation_id: str) -> None:
        claim = await self._operations.claim_with_lease(operation_id, self._lease_seconds)
        if claim is None:
            log.info("operation.skipped", reason="done or held by another worker")
            return
        if claim.attempt > self._max_attempts:
            await self.abandon(
                operation_id, f"Operation failed after {self._max_attempts} attempts"
            )
            return
        heartbeat = asyncio.create_task(self._heartbeat(claim), name="lease-heartbeat")
        download = asyncio.create_task(self._download(claim.request["uri"]), name="download")
        try:
            done, _ = await asyncio.wait({heartbeat, download}, return_when=asyncio.FIRST_COMPLETED)
            if download not in done:
                download.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await download
                heartbeat.result()  # a heartbeat that crashed raises here, not silently
                # The operation finished elsewhere (cancelled) or was claimed again.
                log.warning("operation.download_stopped", attempt=claim.attempt)
                return
        except BaseException:
            download.cancel()
            try:
                await asyncio.shield(self._operations.release_lease(claim))
            except Exception as exc:
                # Not fatal: the lease runs out by itself, then the sweeper hands the
                # operation out again; but a worker that cannot reach its database says so.
                log.warning("operation.release_failed", attempt=claim.attempt, error=repr(exc))
            raise
        finally:
            heartbeat.cancel()
        if heartbeat.done() and not heartbeat.cancelled() and heartbeat.exception() is not None:
            # It crashed in the turn the download finished: the result still counts.
            log.error("operation.heartbeat_failed", error=repr(heartbeat.exception()))
        try:
            result = download.result()
        except ServiceError as exc:
            await self._finish_create(claim, None, error=exc)
        else:
            log.info("image.downloaded", bytes=result.size)
            await self._finish_create(claim, result.md5, error=None)

    async def _download(self, uri: str) -> Downloaded:
        # The task inherits the context of the apply span: this span is its child.
        with tracing.span("image.download", {"url.scheme": uri.split(":", 1)[0]}):
            async for attempt in retrying(
                "image.download", on=Unavailable, attempts=DOWNLOAD_TRIES, wait_initial=0.5
            ):
                with attempt:
                    return await self._downloader.download(uri)
        raise AssertionError("retrying returned without a result or an error")

    async def _heartbeat(self, claim: ClaimedOperation) -> None:
        """Extend the lease until the operation is done elsewhere (then return).

        Every second at most, so a cancelled Create stops downloading within about a second.
        """
        lease = self._lease_seconds
        while True:
            await asyncio.sleep(min(lease / 3, 1.0))
            try:
                if not await self._operations.extend_lease(claim, lease):
                    return
            except Unavailable as exc:
                log.warning("operation.lease_extend_failed", error=exc.message)

    async def _finish_create(
        self, claim: ClaimedOperation, checksum: str | None, *, error: ServiceError | None
    ) -> None:
        async with self._operations.transaction() as tx:
            if await tx.lock_operation(claim.id, claim.attempt) is None:
                log.warning("operation.lease_lost", attempt=claim.attempt)
                return
            image = await tx.lock_image(claim.image_id)
            if image is None:
                await tx.finish(
                    claim.id, error=_error(NotFound(f"Image {claim.image_id} not found"))
                )
                return
            if error is not None:
                await end_with_error(tx, claim, image, _error(error))
                log.info("operation.failed", code=error.code.name, error=error.message)
                return
            assert checksum is not None
            ready = replace(image, status=ImageStatus.READY, checksum=checksum)
            await tx.save_image(ready)
            await tx.finish(claim.id, response=ready)
            log.info("operation.done")


async def _apply_update(tx: OperationTransaction, operation: ClaimedOperation) -> None:
    image = await tx.lock_image(operation.image_id)
    if image is None:
        await tx.finish(
            operation.id, error=_error(NotFound(f"Image {operation.image_id} not found"))
        )
        return
    if image.status is not ImageStatus.UPDATING:
        # Only reachable if the row was changed behind the service's back.
        await tx.finish(
            operation.id,
            error=_error(FailedPrecondition(f"Image {image.id} is {image.status.name}")),
        )
        return
    updated = replace(
        ImageChange.from_json(operation.request).apply(image), status=ImageStatus.READY
    )
    try:
        await tx.save_image(updated)
    except AlreadyExists as exc:
        await end_with_error(tx, operation, image, _error(exc))
        log.info("operation.failed", code=exc.code.name, error=exc.message)
        return
    await tx.finish(operation.id, response=updated)
    log.info("operation.done")


async def _apply_delete(tx: OperationTransaction, operation: ClaimedOperation) -> None:
    image = await tx.lock_image(operation.image_id)
    if image is not None:
        if image.status is not ImageStatus.DELETING:
            await tx.finish(
                operation.id,
                error=_error(FailedPrecondition(f"Image {image.id} is {image.status.name}")),
            )
            return
        await tx.delete_image(image.id)
    await tx.finish_deleted(operation.id)
    log.info("operation.done")
