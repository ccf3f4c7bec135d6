"""What carrying out an operation needs: claims, leases, the finishing transaction, and the
one-statement Update (``apply_updates.sql``).

Every operation ends here (a worker's finish, a Cancel, a dead letter), so this is where the
ends are counted: ``image_service_operations_finished_total`` and the time from acceptance
(``image_service_operation_duration_seconds``, both ends by the database's clock), once the
finish is committed.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence

import asyncpg

from service.adapters.postgres.database import Connection, Database, load_sql, translate_errors
from service.adapters.postgres.rows import (
    CLAIM_COLUMNS,
    IMAGE_COLUMNS,
    claim_from_row,
    image_from_row,
)
from service.domain.model import ClaimedOperation, Image, ImageStatus, OperationError
from service.runtime import metrics

_APPLY_UPDATES = load_sql("apply_updates.sql")
# What a finishing statement returns for the metrics: the kind, and the seconds since the
# operation was accepted.
_FINISHED = "RETURNING kind, extract(epoch FROM modified_at - created_at)::float8 AS seconds"


class PostgresFinishes:
    """``usecases.ports.Finishes`` over PostgreSQL."""

    def __init__(self, db: Database) -> None:
        self._db = db

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[PostgresTransaction]:
        """One transaction on one connection; commits when the block ends without error."""
        async with self._db.transaction() as conn:
            tx = PostgresTransaction(conn)
            yield tx
        # Committed: a finish rolled back (and retried) is not counted.
        for kind, outcome, seconds in tx.finished:
            metrics.operation_finished(kind, outcome, seconds)

    async def apply_updates(self, operation_ids: Sequence[str]) -> list[bool]:
        """Apply and finish unfinished Updates of ``UPDATING`` images in one statement.

        The common case in one round trip and one commit for many, atomic, doing what the
        transaction does. False for an operation it cannot do alone (another kind, done
        already, its image gone or not ``UPDATING``, a request of another shape), and for all
        of them when one's new name is taken: the transaction then finds out which and
        finishes each accordingly.
        """
        async with self._db.connection() as conn:
            try:
                rows = await conn.fetch(
                    _APPLY_UPDATES,
                    list(operation_ids),
                    int(ImageStatus.READY),
                    int(ImageStatus.UPDATING),
                )
            except asyncpg.UniqueViolationError:
                return [False] * len(operation_ids)
        for row in rows:
            metrics.operation_finished("update_image", "OK", row["seconds"])
        finished = {row["id"] for row in rows}
        return [operation_id in finished for operation_id in operation_ids]

    async def claim_with_lease(
        self, operation_id: str, lease_seconds: float
    ) -> ClaimedOperation | None:
        """Take an unfinished operation that no live worker holds, for ``lease_seconds``.

        Committed at once, so a long step (a download) runs outside any transaction. ``None``
        when the operation is done or another worker's lease is still running.
        """
        async with self._db.connection() as conn:
            row = await conn.fetchrow(
                "UPDATE operations SET attempts = attempts + 1, modified_at = now(),"
                " lease_until = now() + make_interval(secs => $2)"
                " WHERE id = $1 AND NOT done AND (lease_until IS NULL OR lease_until < now())"
                f" RETURNING {CLAIM_COLUMNS}",
                operation_id,
                lease_seconds,
            )
        return None if row is None else claim_from_row(row)

    async def extend_lease(self, claim: ClaimedOperation, lease_seconds: float) -> bool:
        """Keep holding a claimed operation; ``False`` once it is done or claimed again."""
        async with self._db.connection() as conn:
            status = await conn.execute(
                "UPDATE operations SET lease_until = now() + make_interval(secs => $3)"
                " WHERE id = $1 AND attempts = $2 AND NOT done",
                claim.id,
                claim.attempt,
                lease_seconds,
            )
        return status.endswith(" 1")

    async def release_lease(self, claim: ClaimedOperation) -> None:
        """Give an operation back at once (a worker shutting down) for its requeued message."""
        async with self._db.connection() as conn:
            await conn.execute(
                "UPDATE operations SET lease_until = NULL"
                " WHERE id = $1 AND attempts = $2 AND NOT done",
                claim.id,
                claim.attempt,
            )


class PostgresTransaction:
    """``usecases.ports.OperationTransaction``: statements that hold row locks until commit."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        # (kind, outcome, seconds since accepted) of each operation finished in it.
        self.finished: list[tuple[str, str, float]] = []

    async def lock_operation(
        self, operation_id: str, attempt: int | None = None
    ) -> ClaimedOperation | None:
        row = await self.conn.fetchrow(
            f"SELECT {CLAIM_COLUMNS} FROM operations"
            " WHERE id = $1 AND NOT done AND ($2::int IS NULL OR attempts = $2)"
            " FOR UPDATE",
            operation_id,
            attempt,
        )
        return None if row is None else claim_from_row(row)

    async def lock_image(self, image_id: str) -> Image | None:
        row = await self.conn.fetchrow(
            f"SELECT {IMAGE_COLUMNS} FROM images WHERE id = $1 FOR UPDATE", image_id
        )
        return None if row is None else image_from_row(row)

    async def save_image(self, image: Image) -> None:
        with translate_errors(image_name=image.name):
            async with self.conn.transaction():  # a savepoint: the outer work survives
                await self.conn.execute(
                    "UPDATE images SET name = $2, description = $3, labels = $4, status = $5,"
                    " checksum = $6, revision = revision + 1 WHERE id = $1",
                    image.id,
                    image.name,
                    image.description,
                    dict(image.labels),
                    int(image.status),
                    image.checksum,
                )

    async def set_image_status(self, image_id: str, status: ImageStatus) -> None:
        await self.conn.execute(
            "UPDATE images SET status = $2 WHERE id = $1", image_id, int(status)
        )

    async def delete_image(self, image_id: str) -> None:
        await self.conn.execute("DELETE FROM images WHERE id = $1", image_id)

    async def finish(
        self,
        operation_id: str,
        *,
        response: Image | None = None,
        error: OperationError | None = None,
        dead_lettered: bool = False,
    ) -> None:
        if (response is None) == (error is None):
            raise ValueError("an operation finishes with exactly one of response or error")
        if dead_lettered and error is None:
            raise ValueError("a dead-lettered operation finishes with an error")
        # dead_lettered_at (migration 0011) is the finish's own time: the one the operator's
        # dead-letter query filters and orders on.
        row = await self.conn.fetchrow(
            "UPDATE operations SET done = true, modified_at = now(), lease_until = NULL,"
            " response = $2, error_code = $3, error_message = $4,"
            " dead_lettered_at = CASE WHEN $5 THEN now() END WHERE id = $1 AND NOT done "
            + _FINISHED,
            operation_id,
            None if response is None else response.snapshot(),
            None if error is None else int(error.code),
            None if error is None else error.message,
            dead_lettered,
        )
        self._finished(row, "OK" if error is None else error.code.name)

    async def finish_deleted(self, operation_id: str) -> None:
        row = await self.conn.fetchrow(
            "UPDATE operations SET done = true, modified_at = now(), lease_until = NULL,"
            " response = '{}'::jsonb WHERE id = $1 AND NOT done " + _FINISHED,
            operation_id,
        )
        self._finished(row, "OK")

    def _finished(self, row: asyncpg.Record | None, outcome: str) -> None:
        if row is not None:  # None: it was done already, nothing changed
            self.finished.append((row["kind"], outcome, row["seconds"]))
