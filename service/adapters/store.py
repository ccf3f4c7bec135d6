"""PostgreSQL access: the only module that imports asyncpg.

Driver errors are translated here: a lost or refused connection becomes ``Unavailable``
(retryable), a broken unique name constraint becomes ``AlreadyExists``. Callers see domain
types only.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, TypeAlias

import asyncpg
import structlog
from asyncpg.pool import PoolConnectionProxy

from service.domain.auth import Role, StoredToken
from service.domain.errors import (
    AlreadyExists,
    Code,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    ResourceExhausted,
    Unavailable,
    image_name_taken,
    image_not_found,
)
from service.domain.listing import ImageQuery, OperationQuery, Operator
from service.domain.model import (
    IdempotencyKey,
    Image,
    ImageChange,
    ImageStatus,
    NewImage,
    Operation,
    OperationError,
    OperationKind,
)
from service.domain.rules import ensure_deletable, ensure_updatable
from service.settings import Settings

log = structlog.get_logger(__name__)

_TRANSIENT = (
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
    asyncpg.exceptions.TransactionRollbackError,
    asyncpg.exceptions.CannotConnectNowError,
    ConnectionError,
    OSError,
    TimeoutError,
)

Connection: TypeAlias = "PoolConnectionProxy[asyncpg.Record]"

_FILTER_COLUMNS = {"id": "id", "name": "name"}
# Sort columns unique within a folder need no ID tie-break in the keyset comparison.
_UNIQUE_IN_FOLDER = {"id", "name"}
_IMAGE_COLUMNS = "id, folder_id, name, description, checksum, status, created_at, labels"
_OPERATION_COLUMNS = (
    "id, kind, image_id, folder_id, description, created_at, created_by, modified_at, done,"
    " response, error_code, error_message"
)


@contextlib.contextmanager
def _translate_errors() -> Iterator[None]:
    try:
        yield
    except asyncpg.UniqueViolationError as exc:
        if exc.constraint_name == "images_folder_name_key":
            raise AlreadyExists("Image with that name already exists") from exc
        raise
    except asyncpg.DataError as exc:
        # Validation keeps such values out; should one slip through, it is still the
        # client's input, not a server fault.
        raise InvalidArgument(
            [FieldViolation("request", "contains a value that cannot be stored or compared")]
        ) from exc
    except _TRANSIENT as exc:
        raise Unavailable(f"database unavailable: {type(exc).__name__}") from exc


def _image(row: asyncpg.Record) -> Image:
    return Image(
        id=row["id"],
        folder_id=row["folder_id"],
        name=row["name"],
        description=row["description"],
        checksum=row["checksum"],
        status=ImageStatus(row["status"]),
        created_at=row["created_at"],
        labels=row["labels"],
    )


def _operation(row: asyncpg.Record | Mapping[str, Any]) -> Operation:
    error = None
    if row["error_code"] is not None:
        error = OperationError(code=Code(row["error_code"]), message=row["error_message"])
    kind = OperationKind(row["kind"])
    # A finished Delete stores an empty response: google.protobuf.Empty on the wire.
    response = None if kind is OperationKind.DELETE_IMAGE else row["response"]
    return Operation(
        id=row["id"],
        kind=kind,
        image_id=row["image_id"],
        folder_id=row["folder_id"],
        description=row["description"],
        created_at=row["created_at"],
        created_by=row["created_by"],
        modified_at=row["modified_at"],
        done=row["done"],
        response=None if response is None else Image.from_snapshot(response),
        error=error,
    )


def finished_operation(payload: str) -> tuple[str, Operation | None]:
    """The ID and, when the notification carries it whole, the finished operation."""
    if not payload.startswith("{"):
        return payload, None  # too large to send: announced by its ID
    data = json.loads(payload)
    for column in ("created_at", "modified_at"):
        data[column] = datetime.fromisoformat(data[column])
    return data["id"], _operation(data)


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Released connections need no reset: nothing here changes session state (no SET, no
    LISTEN, no advisory locks), so asyncpg's default reset would be a wasted round trip."""


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec(
        "jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog", format="text"
    )


@dataclass(frozen=True)
class Accepted:
    """What an accepting transaction produced: a new operation, or the one an earlier call
    with the same idempotency key started (``replayed``)."""

    operation: Operation
    replayed: bool = False


@dataclass(frozen=True)
class ClaimedOperation:
    """An unfinished operation a worker holds: what it asks and which attempt this is."""

    id: str
    kind: OperationKind
    image_id: str
    request: dict[str, Any]
    attempt: int


# created_at is the database's clock at the moment of acceptance: one clock for every API
# process, and an order of acceptance that holds even for requests that raced.
_INSERT_OPERATION = """
INSERT INTO operations (id, kind, image_id, folder_id, description, created_at, created_by,
                        modified_at, request)
VALUES ($1, $2, $3, $4, $5, clock_timestamp(), $6, clock_timestamp(), $7)
RETURNING created_at
"""


# What Store._begin_update does, for many Updates at once (one array element per Update) and
# in one statement: the conditions are checked per row, so a batch accepts exactly the Updates
# that would be accepted one at a time.
_BEGIN_UPDATES = """
WITH requested AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::jsonb[])
        AS r(image_id, operation_id, name, created_by, request)
), locked AS (
    -- Rows locked in one order, so batches sharing images wait for each other, never deadlock.
    SELECT id FROM images WHERE id IN (SELECT image_id FROM requested)
    ORDER BY id
    FOR NO KEY UPDATE
), image AS (
    UPDATE images SET status = $9
    FROM requested
    WHERE images.id = requested.image_id AND images.id IN (SELECT id FROM locked)
      AND images.status = $10
      AND ($6::text[] IS NULL OR images.folder_id = ANY($6))
      AND (requested.name IS NULL OR NOT EXISTS (
          SELECT 1 FROM images other
          WHERE other.folder_id = images.folder_id AND other.name = requested.name
            AND other.id <> images.id))
      AND (SELECT count(*) FROM operations
           WHERE operations.folder_id = images.folder_id AND NOT done) < $7
    RETURNING images.folder_id, requested.*
)
INSERT INTO operations (id, kind, image_id, folder_id, description, created_at, created_by,
                        modified_at, request)
SELECT operation_id, 'update_image', image_id, folder_id, $8, clock_timestamp(), created_by,
       clock_timestamp(), request
FROM image
RETURNING id, folder_id, created_at
"""


# Updates applied and finished in one statement: the operation rows locked first (as the
# worker's transaction does), then the images, each in one order so that concurrent batches
# wait for each other and never deadlock; the change applied as ImageChange.apply does, the
# revision counted, and the response written as Image.snapshot writes it.
_APPLY_UPDATES = """
WITH operation AS (
    SELECT id, image_id, request FROM operations
    WHERE id = ANY($1::text[]) AND kind = 'update_image' AND NOT done
      -- A request of another shape than the API writes is left to the worker's code.
      AND jsonb_typeof(coalesce(request->'name', '""')) = 'string'
      AND jsonb_typeof(coalesce(request->'description', '""')) = 'string'
      AND jsonb_typeof(coalesce(request->'labels', '{}')) = 'object'
      AND NOT EXISTS (SELECT 1 FROM jsonb_each(coalesce(request->'labels', '{}'))
                      WHERE jsonb_typeof(value) <> 'string')
    ORDER BY id
    FOR UPDATE
), locked AS (
    -- FOR UPDATE, as the transaction's lock_image takes it.
    SELECT id FROM images WHERE id IN (SELECT image_id FROM operation)
    ORDER BY id
    FOR UPDATE
), applied AS (
    UPDATE images SET
        name = coalesce(operation.request->>'name', images.name),
        description = coalesce(operation.request->>'description', images.description),
        labels = coalesce(operation.request->'labels', images.labels),
        status = $2,
        revision = images.revision + 1
    FROM operation
    WHERE images.id = operation.image_id AND images.id IN (SELECT id FROM locked)
      AND images.status = $3
    RETURNING operation.id AS operation_id, images.id, images.folder_id, images.name,
              images.description, images.checksum, images.status, images.created_at,
              images.labels
)
UPDATE operations SET done = true, modified_at = now(), lease_until = NULL,
    response = jsonb_build_object(
        'id', applied.id, 'folder_id', applied.folder_id, 'name', applied.name,
        'description', applied.description, 'checksum', applied.checksum,
        'status', applied.status,
        'created_at', to_char(applied.created_at AT TIME ZONE 'UTC',
                              'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"'),
        'labels', applied.labels)
FROM applied
WHERE operations.id = applied.operation_id
RETURNING operations.id
"""


@dataclass(frozen=True)
class NewUpdate:
    """An Update to accept: its new operation, the change, and the caller's folder filter."""

    operation: Operation
    change: ImageChange
    folders: list[str] | None


class Store:
    """Queries of the API and the workers over one connection pool."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        acquire_timeout: float = 30.0,
        max_unfinished_per_folder: int = 1000,
    ) -> None:
        self._pool = pool
        self._acquire_timeout = acquire_timeout
        self.max_unfinished_per_folder = max_unfinished_per_folder

    @classmethod
    async def connect(
        cls,
        dsn: str,
        *,
        min_size: int,
        max_size: int,
        command_timeout: float,
        max_unfinished_per_folder: int = 1000,
    ) -> Store:
        with _translate_errors():
            pool = await asyncpg.create_pool(
                dsn,
                min_size=min_size,
                max_size=max_size,
                command_timeout=command_timeout,
                init=_init_connection,
                reset=_keep_session,
                timeout=min(command_timeout, 10.0),  # to establish one connection
                server_settings={
                    # A backend waiting on a lock notices a dead client (a killed worker) and
                    # rolls back, instead of holding its row locks until the lock is granted.
                    "client_connection_check_interval": "1000",
                    "idle_in_transaction_session_timeout": "60000",
                },
            )
        return cls(
            pool,
            acquire_timeout=command_timeout,
            max_unfinished_per_folder=max_unfinished_per_folder,
        )

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[Connection]:
        """A pooled connection, waited for at most the command timeout; errors translated."""
        with _translate_errors():
            async with self._pool.acquire(timeout=self._acquire_timeout) as conn:
                yield conn

    async def close(self) -> None:
        await self._pool.close()

    async def ping(self) -> None:
        async with self._connection() as conn:
            await conn.fetchval("SELECT 1")

    # --- the API's side ---------------------------------------------------------------

    async def insert_create(
        self,
        image: Image,
        operation: Operation,
        request: NewImage,
        idempotency: IdempotencyKey | None = None,
    ) -> Accepted:
        """Record a new ``CREATING`` image and its Create operation in one transaction."""

        async def insert(conn: Connection) -> Operation:
            return await self._insert_create(conn, image, operation, request)

        return await self._accept(idempotency, operation.id, insert)

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
        async with self._connection() as conn:
            async with conn.transaction():
                earlier = await _claim_key(conn, idempotency, operation_id)
                if earlier is None:
                    return Accepted(await step(conn))
            row = await conn.fetchrow(
                f"SELECT {_OPERATION_COLUMNS} FROM operations WHERE id = $1", earlier
            )
        if row is None:
            raise Unavailable("the operation of this idempotency key was removed; retry")
        return Accepted(_operation(row), replayed=True)

    async def _check_quota(self, conn: Connection, folder_id: str) -> None:
        """At most ``max_unfinished_per_folder`` unfinished operations per folder.

        Checked in the accepting transaction; calls racing in one folder can pass it
        together, so the limit may be exceeded by as many calls as race.
        """
        unfinished = await conn.fetchval(
            "SELECT count(*) FROM operations WHERE folder_id = $1 AND NOT done", folder_id
        )
        if unfinished >= self.max_unfinished_per_folder:
            raise ResourceExhausted(
                f"Too many unfinished operations in folder {folder_id}",
                quota=[
                    FieldViolation(
                        f"folder:{folder_id}",
                        f"at most {self.max_unfinished_per_folder} unfinished operations",
                    )
                ],
            )

    async def _insert_create(
        self, conn: Connection, image: Image, operation: Operation, request: NewImage
    ) -> Operation:
        await self._check_quota(conn, image.folder_id)
        try:
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
        except asyncpg.UniqueViolationError as exc:
            raise image_name_taken(image.name) from exc
        return await self._insert_operation(conn, operation, {"uri": request.uri})

    async def begin_update(
        self,
        operation: Operation,
        change: ImageChange,
        idempotency: IdempotencyKey | None = None,
        folders: list[str] | None = None,
    ) -> Accepted:
        """Move the image ``READY -> UPDATING`` and record the Update, in one transaction.

        ``folders`` limits which images the caller may see (``None``: all); any other image
        is "not found", exactly as one that does not exist.
        """

        async def begin(conn: Connection) -> Operation:
            return await self._begin_update(conn, operation, change, folders)

        return await self._accept(idempotency, operation.id, begin)

    async def begin_updates(self, updates: Sequence[NewUpdate]) -> list[Operation | None]:
        """Accept many Updates with one statement per folder filter (group commit).

        Each is accepted exactly as ``begin_update`` would accept it alone; one that is not
        (``None``) is left for ``begin_update`` to find out why. Two Updates of one
        image in a batch: one is accepted, the other finds the image ``UPDATING``.
        """
        results: dict[str, Operation] = {}
        by_filter: dict[tuple[str, ...] | None, list[NewUpdate]] = {}
        for update in updates:
            key = None if update.folders is None else tuple(update.folders)
            by_filter.setdefault(key, []).append(update)
        async with self._connection() as conn:
            for folders, group in by_filter.items():
                rows = await conn.fetch(
                    _BEGIN_UPDATES,
                    [u.operation.image_id for u in group],
                    [u.operation.id for u in group],
                    [u.change.name for u in group],
                    [u.operation.created_by for u in group],
                    [u.change.to_json() for u in group],
                    None if folders is None else list(folders),
                    self.max_unfinished_per_folder,
                    group[0].operation.description,
                    int(ImageStatus.UPDATING),
                    int(ImageStatus.READY),
                )
                by_id = {u.operation.id: u.operation for u in group}
                for row in rows:
                    results[row["id"]] = replace(
                        by_id[row["id"]],
                        folder_id=row["folder_id"],
                        created_at=row["created_at"],
                        modified_at=row["created_at"],
                    )
        return [results.get(u.operation.id) for u in updates]

    async def _begin_update(
        self,
        conn: Connection,
        operation: Operation,
        change: ImageChange,
        folders: list[str] | None,
    ) -> Operation:
        folder_id = await conn.fetchval(
            "UPDATE images SET status = $2 WHERE id = $1 AND status = $3"
            " AND ($4::text[] IS NULL OR folder_id = ANY($4)) RETURNING folder_id",
            operation.image_id,
            int(ImageStatus.UPDATING),
            int(ImageStatus.READY),
            folders,
        )
        if folder_id is None:
            row = await conn.fetchrow(
                "SELECT status, folder_id FROM images WHERE id = $1", operation.image_id
            )
            if row is None or (folders is not None and row["folder_id"] not in folders):
                raise image_not_found(operation.image_id)
            ensure_updatable(operation.image_id, ImageStatus(row["status"]))
            raise FailedPrecondition(f"Image {operation.image_id} is not READY")
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
        return await self._insert_operation(
            conn, replace(operation, folder_id=folder_id), change.to_json()
        )

    async def begin_delete(
        self,
        operation: Operation,
        idempotency: IdempotencyKey | None = None,
        folders: list[str] | None = None,
    ) -> Accepted:
        """Move the image to ``DELETING`` and record the Delete, in one transaction."""

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
            return await self._insert_operation(
                conn,
                replace(operation, folder_id=row["folder_id"]),
                {"status_before": int(status)},
            )

        return await self._accept(idempotency, operation.id, begin)

    @staticmethod
    async def _insert_operation(
        conn: Connection, operation: Operation, request: dict[str, Any]
    ) -> Operation:
        """Insert an unfinished operation; returns it with the database's timestamps."""
        created_at = await conn.fetchval(
            _INSERT_OPERATION,
            operation.id,
            operation.kind.value,
            operation.image_id,
            operation.folder_id,
            operation.description,
            operation.created_by,
            request,
        )
        return replace(operation, created_at=created_at, modified_at=created_at)

    async def mark_published(self, operation_ids: Sequence[str]) -> None:
        """Record confirmed publishes. An operation already done needs no mark (the relay
        looks at unfinished ones only), and is spared a row version."""
        async with self._connection() as conn:
            await conn.execute(
                "UPDATE operations SET published_at = now()"
                " WHERE id = ANY($1::text[]) AND published_at IS NULL AND NOT done",
                list(operation_ids),
            )

    async def get_image(self, image_id: str) -> Image | None:
        async with self._connection() as conn:
            row = await conn.fetchrow(
                f"SELECT {_IMAGE_COLUMNS} FROM images WHERE id = $1", image_id
            )
        return None if row is None else _image(row)

    async def list_images(self, query: ImageQuery, limit: int) -> list[Image]:
        """Up to ``limit`` images of a folder matching the query, after its keyset position.

        Column names come from fixed tables; every value the client sent is a parameter.
        """
        args: list[Any] = [query.folder_id]
        clauses = ["folder_id = $1"]
        for condition in query.conditions:
            args.append(condition.value)
            column = _FILTER_COLUMNS[condition.field]
            if condition.operator is Operator.EQUALS:
                clauses.append(f"{column} = ${len(args)}")
            else:
                clauses.append(f"strpos({column}, ${len(args)}) > 0")
        column = query.ordering.column
        direction = "DESC" if query.ordering.descending else "ASC"
        if query.after is not None:
            compare = "<" if query.ordering.descending else ">"
            if column in _UNIQUE_IN_FOLDER:
                args.append(query.after[0])
                clauses.append(f"{column} {compare} ${len(args)}")
            else:
                args += [query.after[0], query.after[1]]
                clauses.append(f"({column}, id) {compare} (${len(args) - 1}, ${len(args)})")
        args.append(limit)
        sql = (
            f"SELECT {_IMAGE_COLUMNS} FROM images WHERE {' AND '.join(clauses)}"
            f" ORDER BY {column} {direction}, id {direction} LIMIT ${len(args)}"
        )
        async with self._connection() as conn:
            rows = await conn.fetch(sql, *args)
        return [_image(row) for row in rows]

    async def list_operations(self, query: OperationQuery, limit: int) -> list[Operation]:
        """Up to ``limit`` operations of an image, newest first, after the keyset position."""
        async with self._connection() as conn:
            if query.after is None:
                rows = await conn.fetch(
                    f"SELECT {_OPERATION_COLUMNS} FROM operations WHERE image_id = $1"
                    " ORDER BY created_at DESC, id DESC LIMIT $2",
                    query.image_id,
                    limit,
                )
            else:
                rows = await conn.fetch(
                    f"SELECT {_OPERATION_COLUMNS} FROM operations WHERE image_id = $1"
                    " AND (created_at, id) < ($2, $3)"
                    " ORDER BY created_at DESC, id DESC LIMIT $4",
                    query.image_id,
                    query.after[0],
                    query.after[1],
                    limit,
                )
        return [_operation(row) for row in rows]

    async def image_folder(self, image_id: str) -> str | None:
        """The folder of an existing image, ``None`` if there is no such image."""
        async with self._connection() as conn:
            folder: str | None = await conn.fetchval(
                "SELECT folder_id FROM images WHERE id = $1", image_id
            )
        return folder

    async def get_operations(self, operation_ids: Sequence[str]) -> list[Operation | None]:
        """Several operations in one read, in the order asked (``None``: no such operation)."""
        async with self._connection() as conn:
            rows = await conn.fetch(
                f"SELECT {_OPERATION_COLUMNS} FROM operations WHERE id = ANY($1::text[])",
                list(operation_ids),
            )
        found = {row["id"]: _operation(row) for row in rows}
        return [found.get(operation_id) for operation_id in operation_ids]

    async def cancel_operation(
        self, operation_id: str, folders: list[str] | None = None
    ) -> Operation | None:
        """Finish an unfinished operation with ``CANCELLED`` and undo what it started.

        A Create's image is removed; an Update's image is ``READY`` again; a Delete's image
        gets back the status it had. A finished operation is returned unchanged. A worker in
        the middle of an Update holds the operation row, so the cancel waits and then finds
        it done. A running Create's worker sees its claim gone and stops downloading.
        """
        async with self._connection() as conn:
            async with conn.transaction():
                visible = await conn.fetchval(
                    "SELECT 1 FROM operations WHERE id = $1"
                    " AND ($2::text[] IS NULL OR folder_id = ANY($2))",
                    operation_id,
                    folders,
                )
                if not visible:
                    return None
                tx = Transaction(conn)
                claimed = await tx.lock_operation(operation_id)
                if claimed is not None:
                    image = await tx.lock_image(claimed.image_id)
                    if image is not None:
                        await _undo(tx, claimed, image)
                    await tx.finish(
                        operation_id,
                        error=OperationError(Code.CANCELLED, "Operation cancelled"),
                    )
            row = await conn.fetchrow(
                f"SELECT {_OPERATION_COLUMNS} FROM operations WHERE id = $1", operation_id
            )
        return None if row is None else _operation(row)

    # --- tokens -------------------------------------------------------------------------

    async def insert_token(self, token: StoredToken) -> None:
        async with self._connection() as conn:
            await conn.execute(
                "INSERT INTO api_tokens (id, subject, role, folders, secret_hash, expires_at)"
                " VALUES ($1, $2, $3, $4, $5, $6)",
                token.id,
                token.subject,
                token.role.value,
                sorted(token.folders),
                token.secret_hash,
                token.expires_at,
            )

    async def revoke_token(self, token_id: str) -> bool:
        async with self._connection() as conn:
            status = await conn.execute(
                "UPDATE api_tokens SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL",
                token_id,
            )
        return status.endswith(" 1")

    async def find_token(self, token_id: str) -> StoredToken | None:
        async with self._connection() as conn:
            row = await conn.fetchrow(
                "SELECT id, subject, role, folders, secret_hash, expires_at, revoked_at"
                " FROM api_tokens WHERE id = $1",
                token_id,
            )
        if row is None:
            return None
        return StoredToken(
            id=row["id"],
            subject=row["subject"],
            role=Role(row["role"]),
            folders=frozenset(row["folders"]),
            secret_hash=bytes(row["secret_hash"]),
            expires_at=row["expires_at"],
            revoked_at=row["revoked_at"],
        )

    async def delete_finished_operations(self, older_than_seconds: float, batch: int) -> int:
        """Remove up to ``batch`` operations finished more than ``older_than_seconds`` ago."""
        async with self._connection() as conn:
            status = await conn.execute(
                "DELETE FROM operations WHERE id IN (SELECT id FROM operations WHERE done"
                " AND modified_at < now() - make_interval(secs => $1) LIMIT $2)",
                older_than_seconds,
                batch,
            )
        return int(status.split()[-1])

    async def delete_expired_idempotency_keys(self, older_than_seconds: float) -> int:
        async with self._connection() as conn:
            status = await conn.execute(
                "DELETE FROM idempotency_keys WHERE created_at < now() - make_interval(secs => $1)",
                older_than_seconds,
            )
        return int(status.split()[-1])

    # --- the workers' side -------------------------------------------------------------

    async def apply_updates(self, operation_ids: Sequence[str]) -> list[bool]:
        """Apply and finish unfinished Updates of ``UPDATING`` images in one statement.

        The common case in one round trip and one commit for many, atomic, doing what the
        worker's transaction does. False for an operation it cannot do alone (another kind,
        done already, its image gone or not ``UPDATING``, a request of another shape), and for
        all of them when one's new name is taken: the transaction then finds out which and
        finishes each accordingly.
        """
        async with self._connection() as conn:
            try:
                rows = await conn.fetch(
                    _APPLY_UPDATES,
                    list(operation_ids),
                    int(ImageStatus.READY),
                    int(ImageStatus.UPDATING),
                )
            except asyncpg.UniqueViolationError:
                return [False] * len(operation_ids)
        finished = {row["id"] for row in rows}
        return [operation_id in finished for operation_id in operation_ids]

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        """One transaction on one connection; commits when the block ends without error."""
        async with self._connection() as conn, conn.transaction():
            yield Transaction(conn)

    async def claim_with_lease(
        self, operation_id: str, lease_seconds: float
    ) -> ClaimedOperation | None:
        """Take an unfinished operation that no live worker holds, for ``lease_seconds``.

        Committed at once, so a long step (a download) runs outside any transaction. ``None``
        when the operation is done or another worker's lease is still running.
        """
        async with self._connection() as conn:
            row = await conn.fetchrow(
                "UPDATE operations SET attempts = attempts + 1, modified_at = now(),"
                " lease_until = now() + make_interval(secs => $2)"
                " WHERE id = $1 AND NOT done AND (lease_until IS NULL OR lease_until < now())"
                " RETURNING id, kind, image_id, request, attempts",
                operation_id,
                lease_seconds,
            )
        return None if row is None else _claimed(row)

    async def extend_lease(self, claim: ClaimedOperation, lease_seconds: float) -> bool:
        """Keep holding a claimed operation; ``False`` once it is done or claimed again."""
        async with self._connection() as conn:
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
        async with self._connection() as conn:
            await conn.execute(
                "UPDATE operations SET lease_until = NULL"
                " WHERE id = $1 AND attempts = $2 AND NOT done",
                claim.id,
                claim.attempt,
            )

    async def requeue_abandoned(self, republish_after_seconds: float) -> list[str]:
        """Hand out again what a dead worker held or a lost message carried.

        An expired lease means the worker that claimed the operation died; an unfinished,
        unleased operation published long ago means its message was lost. Both are marked
        unpublished so the relay sends them again.
        """
        async with self._connection() as conn:
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


async def _claim_key(
    conn: Connection, idempotency: IdempotencyKey | None, operation_id: str
) -> str | None:
    """Record the key for ``operation_id``; returns the operation of an earlier call instead."""
    if idempotency is None:
        return None
    inserted = await conn.fetchval(
        "INSERT INTO idempotency_keys (caller, key, fingerprint, operation_id)"
        " VALUES ($1, $2, $3, $4) ON CONFLICT (caller, key) DO NOTHING RETURNING 1",
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


def _claimed(row: asyncpg.Record) -> ClaimedOperation:
    return ClaimedOperation(
        id=row["id"],
        kind=OperationKind(row["kind"]),
        image_id=row["image_id"],
        request=row["request"],
        attempt=row["attempts"],
    )


async def _undo(tx: Transaction, operation: ClaimedOperation, image: Image) -> None:
    if operation.kind is OperationKind.CREATE_IMAGE:
        await tx.delete_image(image.id)
    elif operation.kind is OperationKind.UPDATE_IMAGE and image.status is ImageStatus.UPDATING:
        await tx.set_image_status(image.id, ImageStatus.READY)
    elif operation.kind is OperationKind.DELETE_IMAGE and image.status is ImageStatus.DELETING:
        await tx.set_image_status(image.id, ImageStatus(operation.request["status_before"]))


class Transaction:
    """Statements of a worker's finishing transaction; all hold row locks until commit."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    async def lock_operation(
        self, operation_id: str, attempt: int | None = None
    ) -> ClaimedOperation | None:
        """Lock an unfinished operation (and, with ``attempt``, only if still that claim)."""
        row = await self.conn.fetchrow(
            "SELECT id, kind, image_id, request, attempts FROM operations"
            " WHERE id = $1 AND NOT done AND ($2::int IS NULL OR attempts = $2)"
            " FOR UPDATE",
            operation_id,
            attempt,
        )
        return None if row is None else _claimed(row)

    async def lock_image(self, image_id: str) -> Image | None:
        row = await self.conn.fetchrow(
            f"SELECT {_IMAGE_COLUMNS} FROM images WHERE id = $1 FOR UPDATE", image_id
        )
        return None if row is None else _image(row)

    async def save_image(self, image: Image) -> None:
        """Write an image's fields; a name taken in its folder raises ``AlreadyExists``."""
        try:
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
        except asyncpg.UniqueViolationError as exc:
            raise image_name_taken(image.name) from exc

    async def lock_unpublished(self, older_than_seconds: float, limit: int) -> list[str]:
        """Lock unfinished operations whose publish was never confirmed, oldest first.

        ``SKIP LOCKED`` lets several relays run at once without sending a row twice.
        """
        rows = await self.conn.fetch(
            "SELECT id FROM operations WHERE published_at IS NULL AND NOT done"
            " AND created_at < now() - make_interval(secs => $1)"
            " ORDER BY created_at LIMIT $2 FOR UPDATE SKIP LOCKED",
            older_than_seconds,
            limit,
        )
        return [row["id"] for row in rows]

    async def mark_published(self, operation_ids: Sequence[str]) -> None:
        await self.conn.execute(
            "UPDATE operations SET published_at = now() WHERE id = ANY($1::text[])",
            list(operation_ids),
        )

    async def delete_image(self, image_id: str) -> None:
        await self.conn.execute("DELETE FROM images WHERE id = $1", image_id)

    async def finish_deleted(self, operation_id: str) -> None:
        """Mark a Delete done; its response is ``google.protobuf.Empty``."""
        await self.conn.execute(
            "UPDATE operations SET done = true, modified_at = now(), lease_until = NULL,"
            " response = '{}'::jsonb WHERE id = $1 AND NOT done",
            operation_id,
        )

    async def set_image_status(self, image_id: str, status: ImageStatus) -> None:
        await self.conn.execute("UPDATE images SET status = $2 WHERE id = $1", image_id, status)

    async def finish(
        self,
        operation_id: str,
        *,
        response: Image | None = None,
        error: OperationError | None = None,
    ) -> None:
        """Mark an operation done with exactly one of a response or an error."""
        if (response is None) == (error is None):
            raise ValueError("an operation finishes with exactly one of response or error")
        await self.conn.execute(
            "UPDATE operations SET done = true, modified_at = now(), lease_until = NULL,"
            " response = $2, error_code = $3, error_message = $4 WHERE id = $1 AND NOT done",
            operation_id,
            None if response is None else response.snapshot(),
            None if error is None else int(error.code),
            None if error is None else error.message,
        )


def _set_event(event: asyncio.Event, *_: object) -> None:
    event.set()


class DoneListener:
    """Listens for finished operations (``NOTIFY operation_finished``) on a connection of its
    own.

    ``on_done(operation_id, operation)`` runs for each one, with the finished operation when
    the notification carries it (``None`` when it was too large to send). Notifications sent
    while the connection is down are lost, so after every (re)connection ``on_reconnect()``
    runs: listeners re-check whatever they wait for.
    """

    def __init__(
        self,
        dsn: str,
        on_done: Callable[[str, Operation | None], None],
        on_reconnect: Callable[[], None],
    ) -> None:
        self._dsn = dsn
        self._on_done = on_done
        self._on_reconnect = on_reconnect

    def _notified(self, payload: str) -> None:
        try:
            operation_id, operation = finished_operation(payload)
        except (ValueError, KeyError, TypeError) as exc:
            # Whose it was is unknown: every waiter looks again.
            log.warning("listener.bad_payload", error=type(exc).__name__)
            self._on_reconnect()
            return
        self._on_done(operation_id, operation)

    async def run(self) -> None:
        delay = 0.2
        while True:
            lost = asyncio.Event()
            try:
                conn = await asyncpg.connect(self._dsn, timeout=10)
            except (*_TRANSIENT, asyncpg.PostgresError) as exc:
                log.warning("listener.unreachable", error=type(exc).__name__, retry_in=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            delay = 0.2
            try:
                conn.add_termination_listener(functools.partial(_set_event, lost))
                await conn.add_listener(
                    "operation_finished", lambda _c, _p, _ch, payload: self._notified(payload)
                )
                self._on_reconnect()
                await lost.wait()
                log.warning("listener.connection_lost")
            except _TRANSIENT as exc:
                log.warning("listener.failed", error=type(exc).__name__)
            finally:
                if not conn.is_closed():
                    conn.terminate()


async def wait_for_database(settings: Settings, deadline: float) -> Store:
    """Connect, retrying while the database is unreachable, until ``deadline`` seconds pass."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + deadline
    delay = 0.2
    while True:
        try:
            return await Store.connect(
                str(settings.database_url),
                min_size=settings.db_pool_min,
                max_size=settings.db_pool_max,
                command_timeout=settings.db_command_timeout_seconds,
                max_unfinished_per_folder=settings.max_unfinished_operations_per_folder,
            )
        except Unavailable as exc:
            if loop.time() + delay > give_up:
                raise
            log.warning("database.unreachable", error=exc.message, retry_in=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
