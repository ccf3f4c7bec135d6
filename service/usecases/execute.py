"""Carrying out one operation: claim it, apply it, finish it, exactly once.

An Update runs in one transaction that locks the operation row first: a duplicate delivery
waits for that lock, then finds the operation done and does nothing. Updates delivered
together are first tried as one statement that does the same for all of them; what it cannot
do alone goes through that transaction. A Create downloads for a
long time, so it is claimed with a lease first (committed), and finished in one transaction
only if the claim is still its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from dataclasses import replace

import structlog

from service.adapters.store import ClaimedOperation, Store, Transaction
from service.batching import MicroBatcher
from service.domain.errors import (
    AlreadyExists,
    FailedPrecondition,
    Internal,
    NotFound,
    ServiceError,
    Unavailable,
)
from service.domain.model import ImageChange, ImageStatus, OperationError, OperationKind
from service.domain.network import NetworkPolicy, parse_networks
from service.domain.rules import status_after_failure
from service.settings import Settings
from workers.download import Downloaded, download_md5

log = structlog.get_logger(__name__)

DOWNLOAD_TRIES = 3


class Executor:
    def __init__(self, store: Store, settings: Settings) -> None:
        self._store = store
        self._settings = settings
        self._network_policy = NetworkPolicy(parse_networks(settings.download_allowed_networks))
        # Updates delivered together are applied together: one statement, one commit.
        self._updates = MicroBatcher(store.apply_updates, max_batch=128, max_in_flight=2)

    async def execute(self, operation_id: str) -> None:
        """Bring the operation to ``done``, unless it is done or another worker holds it.

        Raises a retryable ``ServiceError`` when the database is unreachable.
        """
        if await self._updates.submit(operation_id):
            log.info("operation.done")
            return
        async with self._store.transaction() as tx:
            operation = await tx.lock_operation(operation_id)
            if operation is None:
                log.info("operation.skipped", reason="done or unknown")
                return
            if operation.kind is OperationKind.UPDATE_IMAGE:
                await _apply_update(tx, operation)
                return
            if operation.kind is OperationKind.DELETE_IMAGE:
                await _apply_delete(tx, operation)
                return
        await self._create(operation_id)

    async def _create(self, operation_id: str) -> None:
        settings = self._settings
        claim = await self._store.claim_with_lease(operation_id, settings.lease_seconds)
        if claim is None:
            log.info("operation.skipped", reason="done or held by another worker")
            return
        if claim.attempt > settings.max_attempts:
            await self.abandon(
                operation_id, f"Operation failed after {settings.max_attempts} attempts"
            )
            return
        heartbeat = asyncio.create_task(self._heartbeat(claim), name="lease-heartbeat")
        download = asyncio.create_task(self._download(claim.request["uri"]), name="download")
        try:
            done, _ = await asyncio.wait({heartbeat, download}, return_when=asyncio.FIRST_COMPLETED)
            if download not in done:
                # The operation finished elsewhere (cancelled) or was claimed again.
                download.cancel()
                log.warning("operation.download_stopped", attempt=claim.attempt)
                return
        except asyncio.CancelledError:
            download.cancel()
            with contextlib.suppress(Exception):
                await asyncio.shield(self._store.release_lease(claim))
            raise
        finally:
            heartbeat.cancel()
        try:
            result = download.result()
        except ServiceError as exc:
            await self._finish_create(claim, checksum=None, error=exc)
        else:
            log.info("image.downloaded", bytes=result.size)
            await self._finish_create(claim, checksum=result.md5, error=None)

    async def _download(self, uri: str) -> Downloaded:
        settings = self._settings
        delay = 0.5
        for attempt in range(1, DOWNLOAD_TRIES + 1):
            try:
                return await download_md5(
                    uri,
                    timeout=settings.download_timeout_seconds,
                    max_bytes=settings.download_max_bytes,
                    stall_timeout=settings.download_stall_seconds,
                    policy=self._network_policy,
                )
            except Unavailable as exc:
                if attempt == DOWNLOAD_TRIES:
                    raise
                log.warning("image.download_retry", error=exc.message, attempt=attempt)
                await asyncio.sleep(delay * (1 + random.random()))
                delay *= 2
        raise AssertionError("unreachable")

    async def _heartbeat(self, claim: ClaimedOperation) -> None:
        """Extend the lease until the operation is done elsewhere (then return).

        Every second at most, so a cancelled Create stops downloading within about a second.
        """
        lease = self._settings.lease_seconds
        while True:
            await asyncio.sleep(min(lease / 3, 1.0))
            try:
                if not await self._store.extend_lease(claim, lease):
                    return
            except Unavailable as exc:
                log.warning("operation.lease_extend_failed", error=exc.message)

    async def _finish_create(
        self, claim: ClaimedOperation, *, checksum: str | None, error: ServiceError | None
    ) -> None:
        async with self._store.transaction() as tx:
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
                await tx.set_image_status(image.id, ImageStatus.ERROR)
                await tx.finish(claim.id, error=_error(error))
                log.info("operation.failed", code=error.code.name, error=error.message)
                return
            assert checksum is not None
            ready = replace(image, status=ImageStatus.READY, checksum=checksum)
            await tx.save_image(ready)
            await tx.finish(claim.id, response=ready)
            log.info("operation.done")

    async def abandon(self, operation_id: str, reason: str) -> None:
        """Finish an operation that cannot be carried out, restoring its image."""
        async with self._store.transaction() as tx:
            operation = await tx.lock_operation(operation_id)
            if operation is None:
                return
            image = await tx.lock_image(operation.image_id)
            if image is not None and image.status in _TRANSITIONAL:
                before = operation.request.get("status_before")
                await tx.set_image_status(
                    image.id,
                    status_after_failure(
                        image.status, None if before is None else ImageStatus(before)
                    ),
                )
            await tx.finish(operation_id, error=_error(Internal(reason)))
            log.warning("operation.abandoned", reason=reason)


_TRANSITIONAL = (ImageStatus.CREATING, ImageStatus.UPDATING, ImageStatus.DELETING)


def _error(exc: ServiceError) -> OperationError:
    return OperationError.from_exception(exc)


async def _apply_update(tx: Transaction, operation: ClaimedOperation) -> None:
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
        await tx.set_image_status(image.id, ImageStatus.READY)
        await tx.finish(operation.id, error=_error(exc))
        log.info("operation.failed", code=exc.code.name, error=exc.message)
        return
    await tx.finish(operation.id, response=updated)
    log.info("operation.done")


async def _apply_delete(tx: Transaction, operation: ClaimedOperation) -> None:
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
