"""The operations table as the outbox (``published_at``), and the hand-outs of the sweeper.

No statement here waits for a row another transaction holds: each locks its rows with
``FOR UPDATE SKIP LOCKED`` in a subquery, so marks, claims and requeues never take part in a
deadlock with the paths that finish operations (which lock several in ID order).
"""

from __future__ import annotations

from collections.abc import Sequence

from service.adapters.postgres.database import Database
from service.usecases.ports import OutgoingMessage, Unpublished

# Only unfinished, unmarked rows: an operation already done needs no mark (the relay looks
# at unfinished ones only) and is spared a row version. One held by another transaction is
# skipped: a worker finishing it makes the mark needless, and otherwise the relay sends it
# once more, which is harmless. The message it went in is recorded with it (migration 0012).
_MARK_PUBLISHED = """
UPDATE operations SET published_at = now(), message_id = sent.message_id
FROM unnest($1::text[], $2::text[]) AS sent(operation_id, message_id)
WHERE operations.id = sent.operation_id
  AND operations.id IN (SELECT id FROM operations
                        WHERE id = ANY($1::text[]) AND published_at IS NULL AND NOT done
                        ORDER BY id FOR UPDATE SKIP LOCKED)
"""

# A batch for one relay: committed at once, so the relay sends it outside any transaction;
# another relay skips it while the claim runs. An operation a worker holds (a running lease)
# was delivered, whether or not its mark was written (the mark skips a row a worker holds):
# it is not sent again; should the worker die, its lease runs out and the sweeper requeues it.
_CLAIM_UNPUBLISHED = """
WITH claimed AS (
    UPDATE operations SET relay_claimed_until = now() + make_interval(secs => $3)
    WHERE id IN (SELECT id FROM operations
                 WHERE published_at IS NULL AND NOT done
                   AND created_at < now() - make_interval(secs => $1)
                   AND (relay_claimed_until IS NULL OR relay_claimed_until < now())
                   AND (lease_until IS NULL OR lease_until < now())
                 ORDER BY created_at LIMIT $2
                 FOR UPDATE SKIP LOCKED)
    RETURNING id, trace_context, created_at
)
SELECT id, trace_context FROM claimed ORDER BY created_at, id
"""

_RELEASE_CLAIMS = """
UPDATE operations SET relay_claimed_until = NULL
WHERE id IN (SELECT id FROM operations WHERE id = ANY($1::text[]) AND published_at IS NULL
             ORDER BY id FOR UPDATE SKIP LOCKED)
"""

_REQUEUE_EXPIRED_LEASES = """
UPDATE operations SET published_at = NULL, relay_claimed_until = NULL, lease_until = NULL,
                      modified_at = now()
WHERE id IN (SELECT id FROM operations WHERE NOT done AND lease_until < now()
             ORDER BY id FOR UPDATE SKIP LOCKED)
RETURNING id
"""

# The operations published more than $1 seconds ago and never claimed (no lease: Updates
# never take one, a Create takes one when a worker starts it), counted in the messages they
# went in (an operation marked before messages were recorded is a message of its own): all
# those of the messages but the newest $2.
_REQUEUE_UNCLAIMED = """
WITH candidate AS (
    SELECT id, published_at, coalesce(message_id, id) AS message FROM operations
    WHERE NOT done AND lease_until IS NULL
      AND published_at < now() - make_interval(secs => $1)
), message AS (
    SELECT message, max(published_at) AS published_at FROM candidate GROUP BY message
), lost_message AS (
    SELECT message FROM message ORDER BY published_at, message
    LIMIT greatest((SELECT count(*) FROM message) - $2, 0)
), lost AS (
    SELECT id FROM operations
    WHERE id IN (SELECT id FROM candidate
                 WHERE message IN (SELECT message FROM lost_message))
      AND NOT done AND lease_until IS NULL AND published_at IS NOT NULL
    ORDER BY id
    FOR UPDATE SKIP LOCKED
)
UPDATE operations SET published_at = NULL, relay_claimed_until = NULL, modified_at = now()
WHERE id IN (SELECT id FROM lost)
RETURNING id
"""


class PostgresOutbox:
    """``usecases.ports.Outbox`` over PostgreSQL."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def mark_published(self, messages: Sequence[OutgoingMessage]) -> None:
        operation_ids = [o.operation_id for m in messages for o in m.operations]
        message_ids = [m.id for m in messages for _ in m.operations]
        async with self._db.connection() as conn:
            await conn.execute(_MARK_PUBLISHED, operation_ids, message_ids)

    async def claim_unpublished(
        self, older_than_seconds: float, limit: int, claim_seconds: float
    ) -> list[Unpublished]:
        """Unpublished operations older than ``older_than_seconds``, oldest first, claimed
        for ``claim_seconds`` (``relay_claimed_until``) in a statement of their own."""
        async with self._db.connection() as conn:
            rows = await conn.fetch(_CLAIM_UNPUBLISHED, older_than_seconds, limit, claim_seconds)
        return [Unpublished(row["id"], row["trace_context"]) for row in rows]

    async def release_claims(self, operation_ids: Sequence[str]) -> None:
        async with self._db.connection() as conn:
            await conn.execute(_RELEASE_CLAIMS, list(operation_ids))

    async def requeue_expired_leases(self) -> list[str]:
        """An expired lease means the worker that claimed the operation died."""
        async with self._db.connection() as conn:
            rows = await conn.fetch(_REQUEUE_EXPIRED_LEASES)
        return [row["id"] for row in rows]

    async def requeue_unclaimed(self, published_before_seconds: float, keep: int) -> list[str]:
        """Of the operations published long ago and never claimed, those of the messages
        beyond the newest ``keep``: those messages cannot all be waiting (the sweeper says
        how many may)."""
        async with self._db.connection() as conn:
            rows = await conn.fetch(_REQUEUE_UNCLAIMED, published_before_seconds, keep)
        return [row["id"] for row in rows]


class PostgresRetention:
    """``usecases.ports.Retention`` over PostgreSQL."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def delete_finished_operations(self, older_than_seconds: float, batch: int) -> int:
        """Remove up to ``batch`` operations finished more than ``older_than_seconds`` ago."""
        async with self._db.connection() as conn:
            status = await conn.execute(
                # SKIP LOCKED: retention in several workers never waits on another's rows.
                "DELETE FROM operations WHERE id IN (SELECT id FROM operations WHERE done"
                " AND modified_at < now() - make_interval(secs => $1) LIMIT $2"
                " FOR UPDATE SKIP LOCKED)",
                older_than_seconds,
                batch,
            )
        return int(status.split()[-1])

    async def delete_expired_tokens(self, older_than_seconds: float) -> int:
        async with self._db.connection() as conn:
            status = await conn.execute(
                "DELETE FROM api_tokens WHERE expires_at < now() - make_interval(secs => $1)",
                older_than_seconds,
            )
        return int(status.split()[-1])

    async def delete_expired_idempotency_keys(self, older_than_seconds: float) -> int:
        async with self._db.connection() as conn:
            status = await conn.execute(
                "DELETE FROM idempotency_keys WHERE created_at < now() - make_interval(secs => $1)",
                older_than_seconds,
            )
        return int(status.split()[-1])
