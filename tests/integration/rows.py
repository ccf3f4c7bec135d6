"""Rows for the integration tests: images inserted directly, Updates to accept."""

from __future__ import annotations

from typing import Any

from service.domain import ids
from service.domain.model import ImageChange, NewOperation, OperationKind
from service.usecases.ports import NewUpdate

READY, UPDATING, CREATING = 2, 5, 1


async def add_image(db: Any, folder: str, name: str | None = None, status: int = READY) -> str:
    image_id = ids.new_id(ids.IMAGE_PREFIX)
    await db.execute(
        "INSERT INTO images (id, folder_id, name, status) VALUES ($1, $2, $3, $4)",
        image_id,
        folder,
        name or image_id,
        status,
    )
    return image_id


def update(image_id: str, change: ImageChange, folders: list[str] | None = None) -> NewUpdate:
    operation = NewOperation(
        ids.new_id(ids.OPERATION_PREFIX), OperationKind.UPDATE_IMAGE, image_id, "tester"
    )
    return NewUpdate(operation, change, folders)


def folder() -> str:
    return "fgc" + ids.new_id("fgc")[3:]
