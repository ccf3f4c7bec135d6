"""Accepting operations: each moves its image and records its operation in one transaction.

The rules checked (``service.domain.rules``) are the domain's; ``begin_updates.sql`` does the
same for many Updates in one statement (group commit).

Locks are taken in one order by every path that writes operations (migration 0007 lists
them): an accepting transaction takes its idempotency key's lock first, if it has a key
(``_CLAIM_KEY``), then locks its image, and its folder's quota row (``folder_quotas``) last,
so accepts in one folder queue on that row, each reading the count the one before it left:
calls racing in a folder cannot pass the quota together.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NoReturn

import asyncpg
import structlog

from service.adapters.postgres.database import (
    TRANSIENT_ERRORS,
    Connection,
    Database,
    load_sql,
    translate_errors,
)
from service.adapters.postgres.rows import OPERATION_COLUMNS, operation_from_row
from service.domain.errors import (
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    Unavailable,
    image_name_taken,
    image_not_found,
)
from service.domain.model import (
    IdempotencyKey,
    Image,
    ImageChange,
    ImageStatus,
    NewImage,
    NewOperation,
    Operation,
)
from service.domain.rules import ensure_deletable, ensure_updatable, ensure_within_quota
from service.runtime import tracing
from service.usecases.ports import Accepted, NewUpdate

# created_at is the database's clock at the moment of acceptance: one clock for every API
# process, and an order of acceptance that holds even for requests that raced. It is read once
# for both times, which the caller is answered with (a replay reads them back from the row).
# trace_context is the accepting call's (runtime/tracing), for the relay to send the operation
# in its trace.
_INSERT_OPERATION = """
INSERT INTO operations (id, kind, image_id, folder_id, description, created_at, created_by,
                        modified_at, request, trace_context)
SELECT $1, $2, $3, $4, $5, at, $6, at, $7, $8 FROM (SELECT clock_timestamp() AS at) clock
RETURNING created_at
"""
_BEGIN_UPDATES = load_sql("begin_updates.sql")
# Every keyed accept takes its key's lock first (begin_updates.sql takes a batch's, sorted),
# then records the key: a racing call with the same key waits here, never on a row another
# path holds while it waits for the key (the one lock order: keys, images, quotas). A lock
# number two keys share only makes their calls take turns.
_CLAIM_KEY = """
WITH key_lock AS (SELECT pg_advisory_xact_lock(idempotency_key_lock($1, $2)))
INSERT INTO idempotency_keys (caller, key, fingerprint, operation_id)
SELECT $1, $2, $3, $4 FROM key_lock
ON CONFLICT (caller, key) DO NOTHING
RETURNING 1
"""

log = structlog.get_logger(__name__)
# The folder's count of unfinished operations: its count of accepted ones, that row locked to
# the end of the transaction (created at 0 for a folder that has none yet), less the count of
# those finished, read without waiting for the paths that finish them (migration 0009). The
# trigger adds the operation this transaction inserts.
#
# "accepted less released" is also in begin_updates.sql and in migration 0009's view
# folder_unfinished. The copies stay: reading the view in this statement would read
# folder_quotas as of the statement's snapshot, taken before the upsert waited for the row, and
# miss an accept committed meanwhile (racing calls could pass the quota together); reading it in
# a statement of its own costs a round trip on every accept. RETURNING reads the row as locked.
# tests/integration/test_folder_quota.py's property test holds the three copies to the rows.
_LOCK_QUOTA = """
INSERT INTO folder_quotas (folder_id, accepted) VALUES ($1, 0)
ON CONFLICT (folder_id) DO UPDATE SET accepted = folder_quotas.accepted
RETURNING accepted - coalesce(
    (SELECT released FROM folder_releases WHERE folder_releases.folder_id = $1), 0)
"""


class PostgresAccepts:
    """``usecases.ports.Accepts`` over PostgreSQL."""

    def __init__(self, db: Database, max_unfinished_per_folder: int = 1000) -> None:
        self._db = db
        self.max_unfinished_per_folder = max_unfinished_per_folder

    async def insert_create(
        self,
        image: Image,
        operation: NewOperation,
        request: NewImage,
        idempotency: IdempotencyKey | None = None,
    ) -> Accepted:
        """Record a new ``CREATING`` image and its Create operation."""

        async def insert(conn: Connection) -> Operation:
            # The image first, the quota last (the module's docstring): a new name may wait
            # on a worker renaming another image to it, which then needs the quota row.
            with translate_errors(image_name=image.name):
                await conn.execute(
                    "INSERT INTO images (id, folder_id, name, description, status, labels,"
                    " uri) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                    image.id,
                    image.folder_id,
                    image.name,
                    image.description,
                    int(image.status),
                    dict(image.labels),
                    request.uri,
                )
            await self._check_quota(conn, image.folder_id)
            return await _insert_operation(conn, operation, image.folder_id, {"uri": request.uri})

        return await self._accept(idempotency, operation.id, insert)

    async def begin_update(
        self,
        operation: NewOperation,
        change: ImageChange,
        idempotency: IdempotencyKey | None = None,
        folders: list[str] | None = None,
    ) -> Accepted:
        """Move the image ``READY -> UPDATING`` and record the Update.

        ``folders`` limits which images the caller may see (``None``: all); any other image
        is "not found", exactly as one that does not exist.
        """

        async def begin(conn: Connection) -> Operation:
            # The common case in one round trip: the conditional UPDATE moves the image.
            folder_id = await conn.fetchval(
                "UPDATE images SET status = $2 WHERE id = $1 AND status = $3"
                " AND ($4::text[] IS NULL OR folder_id = ANY($4)) RETURNING folder_id",
                operation.image_id,
                int(ImageStatus.UPDATING),
                int(ImageStatus.READY),
                folders,
            )
            if folder_id is None:
                await _explain_not_updatable(conn, operation.image_id, folders)
            await self._check_quota(conn, folder_id)
            if change.name is not None:
                taken = await conn.fetchval(
                    "SELECT 1 FROM images WHERE folder_id = $1 AND name = $2 AND id <> $3",
                    folder_id,
                    change.name,
                    operation.image_id,
                )
                if taken:
                    raise image_name_taken(change.name)
            return await _insert_operation(conn, operation, folder_id, change.to_json())

        return await self._accept(idempotency, operation.id, begin)

    async def begin_updates(self, updates: Sequence[NewUpdate]) -> list[Operation | None]:
        """Accept many Updates at once (group commit): all of them, or none.

        Each is accepted exactly as ``begin_update`` would accept it alone, in the batch's
        order; one that is not (``None``) is left for ``begin_update`` to find out why. Two
        Updates of one image in a batch: the first is accepted, the other finds the image
        ``UPDATING``. A keyed Update joins only with a key not recorded before and not carried
        by an earlier Update of the batch; any other is left for ``begin_update`` to replay
        the key's operation (or refuse a different request under it). A statement that fails
        for any reason but a lost database (a value one Update carries that cannot be stored,
        say) accepts none and hands them all back (``None``), so each caller gets from
        ``begin_update`` the answer that concerns it; a lost database is ``Unavailable`` for
        them all.

        Keyed or not, the batch is one statement (``begin_updates.sql``), committed on its
        own: the keys are locked first, as ``begin_update`` locks its key, and only the
        Updates it accepts record theirs.
        """
        if not updates:
            return []
        async with self._db.connection() as conn:
            try:
                rows = await self._begin_batch(conn, updates)
            except TRANSIENT_ERRORS:
                raise
            except asyncpg.PostgresError as exc:
                log.warning(
                    "accept.batch_handed_back", error=type(exc).__name__, updates=len(updates)
                )
                return [None] * len(updates)
        by_id = {u.operation.id: u.operation for u in updates}
        accepted = {
            row["id"]: by_id[row["id"]].accepted(row["folder_id"], row["created_at"])
            for row in rows
        }
        return [accepted.get(u.operation.id) for u in updates]

    async def _begin_batch(
        self, conn: Connection, updates: Sequence[NewUpdate]
    ) -> list[asyncpg.Record]:
        keys = [u.idempotency for u in updates]
        keyed = any(k is not None for k in keys)
        return await conn.fetch(
            _BEGIN_UPDATES,
            [u.operation.image_id for u in updates],
            [u.operation.id for u in updates],
            [u.change.name for u in updates],
            [u.operation.created_by for u in updates],
            [u.change.to_json() for u in updates],
            # As text: asyncpg would take a list in an array for another dimension.
            [None if u.folders is None else json.dumps(u.folders) for u in updates],
            self.max_unfinished_per_folder,
            updates[0].operation.description,
            int(ImageStatus.UPDATING),
            int(ImageStatus.READY),
            # NULL for all (tracing off, no keys) costs nothing per Update.
            None
            if all(u.trace_context is None for u in updates)
            else [u.trace_context for u in updates],
            [None if k is None else k.caller for k in keys] if keyed else None,
            [None if k is None else k.key for k in keys] if keyed else None,
            [None if k is None else k.fingerprint for k in keys] if keyed else None,
        )

    async def begin_delete(
        self,
        operation: NewOperation,
        idempotency: IdempotencyKey | None = None,
        folders: list[str] | None = None,
    ) -> Accepted:
        """Move the image to ``DELETING`` and record the Delete."""

        async def begin(conn: Connection) -> Operation:
            row = await conn.fetchrow(
                "SELECT folder_id, status FROM images WHERE id = $1 FOR NO KEY UPDATE",
                operation.image_id,
            )
            if row is None or (folders is not None and row["folder_id"] not in folders):
                raise image_not_found(operation.image_id)
            status = ImageStatus(row["status"])
            ensure_deletable(operation.image_id, status)
            await self._check_quota(conn, row["folder_id"])
            await conn.execute(
                "UPDATE images SET status = $2 WHERE id = $1",
                operation.image_id,
                int(ImageStatus.DELETING),
            )
            return await _insert_operation(
                conn, operation, row["folder_id"], {"status_before": int(status)}
            )

        return await self._accept(idempotency, operation.id, begin)

    async def _accept(
        self,
        idempotency: IdempotencyKey | None,
        operation_id: str,
        step: Callable[[Connection], Awaitable[Operation]],
    ) -> Accepted:
        """Run an accepting ``step`` in one transaction, behind the idempotency key if any.

        The key is recorded first: a racing call with the same key waits on it, then gets the
        operation this one started instead of running its own step.
        """
        async with self._db.connection() as conn:
            async with conn.transaction():
                earlier = await _claim_key(conn, idempotency, operation_id)
                if earlier is None:
                    return Accepted(await step(conn))
            row = await conn.fetchrow(
                f"SELECT {OPERATION_COLUMNS} FROM operations WHERE id = $1", earlier
            )
        if row is None:
            raise Unavailable("the operation of this idempotency key was removed; retry")
        return Accepted(operation_from_row(row), replayed=True)

    async def _check_quota(self, conn: Connection, folder_id: str) -> None:
        """Checked in the accepting transaction, on the folder's count locked until it ends:
        one primary-key read, whatever the backlog."""
        unfinished = await conn.fetchval(_LOCK_QUOTA, folder_id)
        ensure_within_quota(folder_id, unfinished, self.max_unfinished_per_folder)


async def _explain_not_updatable(
    conn: Connection, image_id: str, folders: list[str] | None
) -> NoReturn:
    """Raise the precise error for an image the conditional UPDATE did not move."""
    row = await conn.fetchrow("SELECT status, folder_id FROM images WHERE id = $1", image_id)
    if row is None or (folders is not None and row["folder_id"] not in folders):
        raise image_not_found(image_id)
    ensure_updatable(image_id, ImageStatus(row["status"]))
    # READY, yet not moved: another transaction held it and let it go meanwhile.
    raise FailedPrecondition(f"Image {image_id} is not READY")


async def _insert_operation(
    conn: Connection, operation: NewOperation, folder_id: str, request: dict[str, Any]
) -> Operation:
    """Insert an unfinished operation in ``folder_id``; returns it with the database's
    timestamps."""
    created_at = await conn.fetchval(
        _INSERT_OPERATION,
        operation.id,
        operation.kind.value,
        operation.image_id,
        folder_id,
        operation.description,
        operation.created_by,
        request,
        tracing.traceparent(),
    )
    return operation.accepted(folder_id, created_at)


async def _claim_key(
    conn: Connection, idempotency: IdempotencyKey | None, operation_id: str
) -> str | None:
    """Record the key for ``operation_id``; returns the operation of an earlier call instead."""
    if idempotency is None:
        return None
    inserted = await conn.fetchval(
        _CLAIM_KEY,
        idempotency.caller,
        idempotency.key,
        idempotency.fingerprint,
        operation_id,
    )
    if inserted:
        return None
    row = await conn.fetchrow(
        "SELECT fingerprint, operation_id FROM idempotency_keys WHERE caller = $1 AND key = $2",
        idempotency.caller,
        idempotency.key,
    )
    if row is None:  # expired between the two statements
        raise Unavailable("idempotency key expired while in use; retry")
    if row["fingerprint"] != idempotency.fingerprint:
        raise InvalidArgument(
            [
                FieldViolation(
                    "idempotency-key", "was already used for a different request by this caller"
                )
            ]
        )
    return str(row["operation_id"])
