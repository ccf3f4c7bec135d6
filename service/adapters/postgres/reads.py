"""Reads of images and operations: what Get, List and the pollers ask."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from service.adapters.postgres.database import Database
from service.adapters.postgres.rows import (
    IMAGE_COLUMNS,
    OPERATION_COLUMNS,
    image_from_row,
    operation_from_row,
)
from service.domain.listing import ImageQuery, OperationQuery, Operator
from service.domain.model import Image, Operation
from service.usecases.ports import RecentOperation

_FILTER_COLUMNS = {"id": "id", "name": "name"}
# Sort columns unique within a folder need no ID tie-break in the keyset comparison.
_UNIQUE_IN_FOLDER = {"id", "name"}


class PostgresReads:
    """``usecases.ports.Reads`` over PostgreSQL."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def get_image(self, image_id: str) -> Image | None:
        async with self._db.connection() as conn:
            row = await conn.fetchrow(f"SELECT {IMAGE_COLUMNS} FROM images WHERE id = $1", image_id)
        return None if row is None else image_from_row(row)

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
            f"SELECT {IMAGE_COLUMNS} FROM images WHERE {' AND '.join(clauses)}"
            f" ORDER BY {column} {direction}, id {direction} LIMIT ${len(args)}"
        )
        async with self._db.connection() as conn:
            rows = await conn.fetch(sql, *args)
        return [image_from_row(row) for row in rows]

    async def list_operations(self, query: OperationQuery, limit: int) -> list[Operation]:
        """Up to ``limit`` operations of an image, newest first, after the keyset position."""
        async with self._db.connection() as conn:
            if query.after is None:
                rows = await conn.fetch(
                    f"SELECT {OPERATION_COLUMNS} FROM operations WHERE image_id = $1"
                    " ORDER BY created_at DESC, id DESC LIMIT $2",
                    query.image_id,
                    limit,
                )
            else:
                rows = await conn.fetch(
                    f"SELECT {OPERATION_COLUMNS} FROM operations WHERE image_id = $1"
                    " AND (created_at, id) < ($2, $3)"
                    " ORDER BY created_at DESC, id DESC LIMIT $4",
                    query.image_id,
                    query.after[0],
                    query.after[1],
                    limit,
                )
        return [operation_from_row(row) for row in rows]

    async def image_folder(self, image_id: str) -> str | None:
        """The folder of an existing image, ``None`` if there is no such image."""
        async with self._db.connection() as conn:
            folder: str | None = await conn.fetchval(
                "SELECT folder_id FROM images WHERE id = $1", image_id
            )
        return folder

    async def get_operations(self, operation_ids: Sequence[str]) -> list[Operation | None]:
        """Several operations in one read, in the order asked (``None``: no such operation)."""
        async with self._db.connection() as conn:
            rows = await conn.fetch(
                f"SELECT {OPERATION_COLUMNS} FROM operations WHERE id = ANY($1::text[])",
                list(operation_ids),
            )
        found = {row["id"]: operation_from_row(row) for row in rows}
        return [found.get(operation_id) for operation_id in operation_ids]

    async def recent_operations(self, folder_id: str, limit: int) -> list[RecentOperation]:
        """A folder's latest operations, newest first, with their claim counts and their
        images' names.

        For the operations console of a small deployment: no index serves this order within
        a folder, so it reads the folder's operations (retention bounds them).
        """
        async with self._db.connection() as conn:
            rows = await conn.fetch(
                "SELECT o.*, (SELECT name FROM images WHERE id = o.image_id) AS image_name"
                f" FROM (SELECT {OPERATION_COLUMNS}, attempts FROM operations"
                "  WHERE folder_id = $1 ORDER BY created_at DESC, id DESC LIMIT $2) o"
                " ORDER BY o.created_at DESC, o.id DESC",
                folder_id,
                limit,
            )
        return [
            RecentOperation(operation_from_row(row), row["attempts"], row["image_name"] or "")
            for row in rows
        ]
