"""Gauges sampled from the database: the pool in use, and (in the workers) how many
operations are unfinished and how many of those the outbox relay still has to send.

A refresh is one cheap query (both counts read the partial indexes of unfinished operations)
every ``METRICS_REFRESH_SECONDS``, run by the supervisor; nothing is counted on the paths of
the calls.
"""

from __future__ import annotations

from service.adapters.postgres.database import Database
from service.runtime import metrics

_COUNT_OPERATIONS = (
    "SELECT count(*) AS unfinished,"
    " count(*) FILTER (WHERE published_at IS NULL) AS unpublished"
    " FROM operations WHERE NOT done"
)


class DatabaseGauges:
    """Refreshes the database's gauges; with ``count_operations``, also the operation counts
    (the workers do: each API process reporting the same count would be noise)."""

    def __init__(self, db: Database, *, count_operations: bool) -> None:
        self._db = db
        self._count_operations = count_operations
        if count_operations:
            metrics.OPERATION_COUNTS.register()

    async def refresh(self) -> None:
        in_use, size = self._db.pool_usage()
        metrics.DB_POOL_IN_USE.set(in_use)
        metrics.DB_POOL_SIZE.set(size)
        if self._count_operations:
            async with self._db.connection() as conn:
                row = await conn.fetchrow(_COUNT_OPERATIONS)
            assert row is not None  # an aggregate always answers one row
            metrics.OPERATION_COUNTS.update(row["unfinished"], row["unpublished"])
