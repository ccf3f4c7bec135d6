"""PostgreSQL access: the only module that imports asyncpg.

Driver errors are translated here: a lost or refused connection becomes ``Unavailable``
(retryable), a broken unique name constraint becomes ``AlreadyExists``. Callers see domain
types only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeAlias

import asyncpg
import structlog
from asyncpg.pool import PoolConnectionProxy

from service.domain.errors import (
    AlreadyExists,
    Code,
    FailedPrecondition,
    Unavailable,
    image_name_taken,
    image_not_found,
)
from service.domain.model import (
    Image,
    ImageChange,
    ImageStatus,
    NewImage,
    Operation,
    OperationError,
    OperationKind,
)
from service.domain.rules import ensure_updatable

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


def _operation(row: asyncpg.Record) -> Operation:
    error = None
    if row["error_code"] is not None:
        error = OperationError(code=Code(row["error_code"]), message=row["error_message"])
    response = row["response"]
    return Operation(
        id=row["id"],
        kind=OperationKind(row["kind"]),
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


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec(
        "jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog", format="text"
    )


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
                        modified_at, request, idempotency_key)
VALUES ($1, $2, $3, $4, $5, clock_timestamp(), $6, clock_timestamp(), $7, $8)
RETURNING created_at
"""


class Store:
    """Queries of the API and the workers over one connection pool."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @classmethod
    async def connect(
        cls, dsn: str, *, min_size: int, max_size: int, command_timeout: float
    ) -> Store:
        with _translate_errors():
            pool = await asyncpg.create_pool(
                dsn,
                min_size=min_size,
                max_size=max_size,
                command_timeout=command_timeout,
                init=_init_connection,
                server_settings={
                    # A backend waiting on a lock notices a dead client (a killed worker) and
                    # rolls back, instead of holding its row locks until the lock is granted.
                    "client_connection_check_interval": "1000",
                    "idle_in_transaction_session_timeout": "60000",
                },
            )
        return cls(pool)

    async def close(self) -> None:
        await self._pool.close()

    async def ping(self) -> None:
        with _translate_errors():
            await self._pool.fetchval("SELECT 1")

    # --- the API's side ---------------------------------------------------------------

    async def insert_create(
        self, image: Image, operation: Operation, request: NewImage
    ) -> Operation:
        """Record a new ``CREATING`` image and its Create operation in one transaction."""
        with _translate_errors():
            async with self._pool.acquire() as conn, conn.transaction():
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

    async def begin_update(self, operation: Operation, change: ImageChange) -> Operation:
        """Move the image ``READY -> UPDATING`` and record the Update, in one transaction.

        Returns the operation with the image's folder filled in.
        """
        with _translate_errors():
            async with self._pool.acquire() as conn, conn.transaction():
                folder_id = await conn.fetchval(
                    "UPDATE images SET status = $2 WHERE id = $1 AND status = $3"
                    " RETURNING folder_id",
                    operation.image_id,
                    int(ImageStatus.UPDATING),
                    int(ImageStatus.READY),
                )
                if folder_id is None:
                    status = await conn.fetchval(
                        "SELECT status FROM images WHERE id = $1", operation.image_id
                    )
                    if status is None:
                        raise image_not_found(operation.image_id)
                    ensure_updatable(operation.image_id, ImageStatus(status))
                    raise FailedPrecondition(f"Image {operation.image_id} is not READY")
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
            None,
        )
        return replace(operation, created_at=created_at, modified_at=created_at)

    async def mark_published(self, operation_ids: Sequence[str]) -> None:
        with _translate_errors():
            await self._pool.execute(
                "UPDATE operations SET published_at = now()"
                " WHERE id = ANY($1::text[]) AND published_at IS NULL",
                list(operation_ids),
            )

    async def get_image(self, image_id: str) -> Image | None:
        with _translate_errors():
            row = await self._pool.fetchrow(
                f"SELECT {_IMAGE_COLUMNS} FROM images WHERE id = $1", image_id
            )
        return None if row is None else _image(row)

    async def list_images(self, folder_id: str, after_id: str, limit: int) -> list[Image]:
        """One page of a folder's images in ID order, starting after ``after_id``."""
        with _translate_errors():
            rows = await self._pool.fetch(
                f"SELECT {_IMAGE_COLUMNS} FROM images WHERE folder_id = $1 AND id > $2"
                " ORDER BY id LIMIT $3",
                folder_id,
                after_id,
                limit,
            )
        return [_image(row) for row in rows]

    async def get_operation(self, operation_id: str) -> Operation | None:
        with _translate_errors():
            row = await self._pool.fetchrow(
                f"SELECT {_OPERATION_COLUMNS} FROM operations WHERE id = $1", operation_id
            )
        return None if row is None else _operation(row)

    # --- the workers' side -------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        """One transaction on one connection; commits when the block ends without error."""
        with _translate_errors():
            async with self._pool.acquire() as conn, conn.transaction():
                yield Transaction(conn)

    async def claim_with_lease(
        self, operation_id: str, lease_seconds: float
    ) -> ClaimedOperation | None:
        """Take an unfinished operation that no live worker holds, for ``lease_seconds``.

        Committed at once, so a long step (a download) runs outside any transaction. ``None``
        when the operation is done or another worker's lease is still running.
        """
        with _translate_errors():
            row = await self._pool.fetchrow(
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
        with _translate_errors():
            status = await self._pool.execute(
                "UPDATE operations SET lease_until = now() + make_interval(secs => $3)"
                " WHERE id = $1 AND attempts = $2 AND NOT done",
                claim.id,
                claim.attempt,
                lease_seconds,
            )
        return status.endswith(" 1")

    async def release_lease(self, claim: ClaimedOperation) -> None:
        """Give an operation back at once (a worker shutting down) for its requeued message."""
        with _translate_errors():
            await self._pool.execute(
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
        with _translate_errors():
            rows = await self._pool.fetch(
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


def _claimed(row: asyncpg.Record) -> ClaimedOperation:
    return ClaimedOperation(
        id=row["id"],
        kind=OperationKind(row["kind"]),
        image_id=row["image_id"],
        request=row["request"],
        attempt=row["attempts"],
    )


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


async def wait_for_database(
    dsn: str, *, min_size: int, max_size: int, command_timeout: float, deadline: float
) -> Store:
    """Connect, retrying while the database is unreachable, until ``deadline`` seconds pass."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + deadline
    delay = 0.2
    while True:
        try:
            return await Store.connect(
                dsn, min_size=min_size, max_size=max_size, command_timeout=command_timeout
            )
        except Unavailable as exc:
            if loop.time() + delay > give_up:
                raise
            log.warning("database.unreachable", error=exc.message, retry_in=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
