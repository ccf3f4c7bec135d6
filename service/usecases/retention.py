"""Retention: finished operations and idempotency keys past their age are removed, and
tokens a day after they expired.

Unfinished operations are never removed, whatever their age.
"""

from __future__ import annotations

from dataclasses import dataclass

import structlog

from service.usecases.ports import Retention

log = structlog.get_logger(__name__)

BATCH = 1000
# An expired token is kept this long (``token list`` shows it), then removed.
EXPIRED_TOKEN_KEEP_SECONDS = 86400.0


@dataclass(frozen=True)
class Purged:
    operations: int
    idempotency_keys: int
    tokens: int = 0


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
    tokens = await store.delete_expired_tokens(EXPIRED_TOKEN_KEEP_SECONDS)
    if removed or keys or tokens:
        log.info("retention.purged", operations=removed, idempotency_keys=keys, tokens=tokens)
    return Purged(operations=removed, idempotency_keys=keys, tokens=tokens)
