"""Retention: finished operations and idempotency keys past their age are removed.

Unfinished operations are never removed, whatever their age.
"""

from __future__ import annotations

from dataclasses import dataclass

import structlog

from service.usecases.ports import Retention

log = structlog.get_logger(__name__)

BATCH = 1000


@dataclass(frozen=True)
class Purged:
    operations: int
    idempotency_keys: int


async def purge_expired(
    store: Retention, *, operation_retention_seconds: float, idempotency_ttl_seconds: float
) -> Purged:
    """Remove in batches (short transactions) until nothing old enough is left."""
    removed = 0
    while True:
        batch = await store.delete_finished_operations(operation_retention_seconds, BATCH)
        removed += batch
        if batch < BATCH:
            break
    keys = await store.delete_expired_idempotency_keys(idempotency_ttl_seconds)
    if removed or keys:
        log.info("retention.purged", operations=removed, idempotency_keys=keys)
    return Purged(operations=removed, idempotency_keys=keys)
