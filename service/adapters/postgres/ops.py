"""The operator's read-only queries (``usecases.ops_ports.OpsQueries``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from service.adapters.postgres.database import Database
from service.usecases.ops_ports import OperationRecord, TokenRecord

_OPERATION = (
    "SELECT o.id, o.kind, o.image_id, o.folder_id, o.created_at, o.modified_at, o.done,"
    " o.attempts, o.published_at, o.lease_until, o.error_code, o.error_message,"
    " i.status AS image_status"
    " FROM operations o LEFT JOIN images i ON i.id = o.image_id"
)


def _operation(row: Any) -> OperationRecord:
    return OperationRecord(
        id=row["id"],
        kind=row["kind"],
        image_id=row["image_id"],
        folder_id=row["folder_id"],
        created_at=row["created_at"],
        modified_at=row["modified_at"],
        done=row["done"],
        attempts=row["attempts"],
        published_at=row["published_at"],
        lease_until=row["lease_until"],
        error_code=row["error_code"],
        error_message=row["error_message"],
        image_status=row["image_status"],
    )


class PostgresOps:
    """``usecases.ops_ports.OpsQueries`` over PostgreSQL."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def list_tokens(self) -> list[TokenRecord]:
        # The hash is not selected: what is not read cannot be shown.
        async with self._db.connection() as conn:
            rows = await conn.fetch(
                "SELECT id, subject, role, folders, created_at, expires_at, revoked_at"
                " FROM api_tokens ORDER BY created_at, id"
            )
        return [
            TokenRecord(
                id=row["id"],
                subject=row["subject"],
                role=row["role"],
                folders=tuple(row["folders"]),
                created_at=row["created_at"],
                expires_at=row["expires_at"],
                revoked_at=row["revoked_at"],
            )
            for row in rows
        ]

    async def unfinished_operations(
        self, older_than_seconds: float, limit: int
    ) -> list[OperationRecord]:
        async with self._db.connection() as conn:
            rows = await conn.fetch(
                f"{_OPERATION} WHERE NOT o.done"
                " AND o.created_at < now() - make_interval(secs => $1)"
                " ORDER BY o.created_at, o.id LIMIT $2",
                older_than_seconds,
                limit,
            )
        return [_operation(row) for row in rows]

    async def operation_records(self, operation_ids: Sequence[str]) -> dict[str, OperationRecord]:
        if not operation_ids:
            return {}
        async with self._db.connection() as conn:
            rows = await conn.fetch(f"{_OPERATION} WHERE o.id = ANY($1::text[])", operation_ids)
        return {row["id"]: _operation(row) for row in rows}

    async def dead_lettered_operations(
        self, since_seconds: float, limit: int
    ) -> list[OperationRecord]:
        # The column the dead-letter path sets (migration 0011), with its partial index: only
        # dead-lettered rows are read.
        async with self._db.connection() as conn:
            rows = await conn.fetch(
                f"{_OPERATION} WHERE o.dead_lettered_at > now() - make_interval(secs => $1)"
                " ORDER BY o.dead_lettered_at DESC, o.id LIMIT $2",
                since_seconds,
                limit,
            )
        return [_operation(row) for row in rows]
