"""Rows of the database as domain values: the one mapping of each table's columns."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeAlias

import asyncpg

from service.domain.errors import Code
from service.domain.model import (
    ClaimedOperation,
    Image,
    ImageStatus,
    Operation,
    OperationError,
    OperationKind,
)

IMAGE_COLUMNS = "id, folder_id, name, description, checksum, status, created_at, labels"
# The finished-operation notification (migrations/0006) sends these same columns.
OPERATION_COLUMNS = (
    "id, kind, image_id, folder_id, description, created_at, created_by, modified_at, done,"
    " response, error_code, error_message"
)
CLAIM_COLUMNS = "id, kind, image_id, folder_id, request, attempts"

# A fetched row, or the same columns decoded from a notification's JSON.
Row: TypeAlias = asyncpg.Record | Mapping[str, Any]


def image_from_row(row: Row) -> Image:
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


def operation_from_row(row: Row) -> Operation:
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


def claim_from_row(row: Row) -> ClaimedOperation:
    return ClaimedOperation(
        id=row["id"],
        kind=OperationKind(row["kind"]),
        image_id=row["image_id"],
        folder_id=row["folder_id"],
        request=row["request"],
        attempt=row["attempts"],
    )
