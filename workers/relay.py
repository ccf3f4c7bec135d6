"""The outbox relay: publishes operations whose publish the API could not confirm."""

from __future__ import annotations

import structlog

from service.adapters.queue import Broker
from service.adapters.store import Store
from service.domain.errors import ServiceError

log = structlog.get_logger(__name__)

BATCH = 200


async def publish_pending(
    store: Store, broker: Broker, *, older_than: float, publish_timeout: float
) -> int:
    """Publish every unpublished, unfinished operation older than ``older_than`` seconds.

    Rows are locked with ``SKIP LOCKED`` while they are sent, so relays in several worker
    processes never send one row at the same time. Returns how many were published.
    """
    total = 0
    if not broker.is_healthy():
        return total  # nothing can be sent; the rows wait in the outbox
    while True:
        sent: list[str] = []
        async with store.transaction() as tx:
            pending = await tx.lock_unpublished(older_than, BATCH)
            try:
                for operation_id in pending:
                    await broker.publish(operation_id, publish_timeout)
                    sent.append(operation_id)
            except ServiceError as exc:
                log.warning("outbox.publish_failed", error=exc.message, sent=len(sent))
            if sent:
                await tx.mark_published(sent)
        total += len(sent)
        if len(sent) < BATCH:
            if total:
                log.info("outbox.published", count=total)
            return total
