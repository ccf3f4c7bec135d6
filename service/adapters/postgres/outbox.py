"""The operations table as the outbox (``published_at``), and the hand-outs of the sweeper."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence

from service.adapters.postgres.database import Connection, Database

# Only unfinished, unmarked rows: an operation already done needs no mark (the relay looks
# at unfinished ones only) and is spared a row version.
_MARK_PUBLISHED = (
    "UPDATE operations SET published_at = now()"
    " WHERE id = ANY($1::text[]) AND published_at IS NULL AND NOT done"
)


class Unpublished:
    """Unpublished operations locked by one relay until its transaction ends."""

    def __init__(self, conn: Connection, operation_ids: list[str]) -> None:
        self._conn = conn
        self.operation_ids = operation_ids

    async def mark_published(self, operation_ids: Sequence[str]) -> None:
        await self._conn.execute(_MARK_PUBLISHED, list(operation_ids))


class PostgresOutbox:
    """``usecases.ports.Outbox`` over PostgreSQL."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def mark_published(self, operation_ids: Sequence[str]) -> None:
        async with self._db.connection() as conn:
            await conn.execute(_MARK_PUBLISHED, list(operation_ids))

    @contextlib.asynccontextmanager
    async def unpublished(
        self, older_than_seconds: float, limit: int
    ) -> AsyncIterator[Unpublished]:
        """``SKIP LOCKED`` lets several relays run at once without sending a row twice."""
        async with self._db.transaction() as conn:
            rows = await conn.fetch(
                "SELECT id FROM operations WHERE published_at IS NULL AND NOT done"
                " AND created_at < now() - make_interval(secs => $1)"
                " ORDER BY created_at LIMIT $2 FOR UPDATE SKIP LOCKED",
                older_than_seconds,
                limit,
            )
            yield Unpublished(conn, [row["id"] for row in rows])

    async def requeue_abandoned(self, republish_after_seconds: float) -> list[str]:
        """An expired lease means the worker that claimed the operation died; an unfinished,
        unleased operation published long ago means its message was lost."""
        async with self._db.connection() as conn:
            rows = await conn.fetch(
                "UPDATE operations SET published_at = NULL, lease_until = NULL,"
                " modified_at = now()"
                " WHERE id IN (SELECT id FROM operations WHERE NOT done AND ("
                "   lease_until < now()"
                "   OR (lease_until IS NULL AND published_at"
                "       < now() - make_interval(secs => $1)))"
                " FOR UPDATE SKIP LOCKED) RETURNING id",
                republish_after_seconds,
            )
        return [row["id"] for row in rows]


class PostgresRetention:
    """``usecases.ports.Retention`` over PostgreSQL."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def delete_finished_operations(self, older_than_seconds: float, batch: int) -> int:
        """Remove up to ``batch`` operations finished more than ``older_than_seconds`` ago."""
        async with self._db.connection() as conn:
            status = await conn.execute(
                "DELETE FROM operations WHERE id IN (SELECT id FROM operations WHERE done"
                " AND modified_at < now() - make_interval(secs => $1) LIMIT $2)",
                older_than_seconds,
                batch,
            )
        return int(status.split()[-1])

    async def delete_expired_idempotency_keys(self, older_than_seconds: float) -> int:
        async with self._db.connection() as conn:
            status = await conn.execute(
                "DELETE FROM idempotency_keys WHERE created_at < now() - make_interval(secs => $1)",
                older_than_seconds,
            )
        return int(status.split()[-1])
