"""The outbox, both halves: the API marks what the broker confirmed; the workers' relay
publishes what was never confirmed, and the sweeper hands out again what a dead worker held
or a lost message carried.

The operation row is the outbox (``published_at``). A mark lost in a crash only means the
relay sends that operation once more, which is harmless: workers apply each operation once.
"""

from __future__ import annotations

import asyncio

import structlog

from service.domain.errors import ServiceError
from service.usecases.ports import Outbox, Publisher

log = structlog.get_logger(__name__)

RELAY_BATCH = 200


class PublishedMarks:
    """Marks published operations in batches, off the request path.

    One UPDATE per request would double the database work of an Update; a batch every few
    milliseconds costs one statement for many. ``run`` is the background task.
    """

    def __init__(self, outbox: Outbox, interval: float = 0.01, batch: int = 1000) -> None:
        self._outbox = outbox
        self._interval = interval
        self._batch = batch
        self._pending: list[str] = []
        self._wakeup = asyncio.Event()

    def add(self, operation_id: str) -> None:
        self._pending.append(operation_id)
        self._wakeup.set()

    async def run(self) -> None:
        while True:
            await self._wakeup.wait()
            await asyncio.sleep(self._interval)  # gather what arrives meanwhile
            await self.flush()

    async def flush(self) -> None:
        self._wakeup.clear()
        while self._pending:
            batch, self._pending = self._pending[: self._batch], self._pending[self._batch :]
            try:
                await self._outbox.mark_published(batch)
            except ServiceError as exc:
                # Left unmarked: the relay publishes them again, which is harmless.
                log.warning("outbox.mark_failed", error=exc.message, count=len(batch))


async def publish_pending(
    outbox: Outbox, publisher: Publisher, *, older_than: float, publish_timeout: float
) -> int:
    """Publish every unpublished, unfinished operation older than ``older_than`` seconds.

    Rows are held while they are sent, so relays in several worker processes never send one
    row at the same time. Returns how many were published.
    """
    total = 0
    if not publisher.is_healthy():
        return total  # nothing can be sent; the rows wait in the outbox
    while True:
        sent: list[str] = []
        async with outbox.unpublished(older_than, RELAY_BATCH) as pending:
            try:
                for operation_id in pending.operation_ids:
                    await publisher.publish(operation_id, publish_timeout)
                    sent.append(operation_id)
            except ServiceError as exc:
                log.warning("outbox.publish_failed", error=exc.message, sent=len(sent))
            if sent:
                await pending.mark_published(sent)
        total += len(sent)
        if len(sent) < RELAY_BATCH:
            if total:
                log.info("outbox.published", count=total)
            return total


async def requeue_abandoned(outbox: Outbox, republish_after_seconds: float) -> list[str]:
    """The sweeper's step: what a dead worker held or a lost message carried goes back to
    the relay."""
    requeued = await outbox.requeue_abandoned(republish_after_seconds)
    if requeued:
        log.warning("sweeper.requeued", count=len(requeued), operation_ids=requeued[:20])
    return requeued
