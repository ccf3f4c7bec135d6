"""What the use cases hand the ports: new operations, images to create, keys, tokens."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

from service.domain import ids
from service.domain.auth import TOKEN_PREFIX, Role, StoredToken
from service.domain.model import (
    IdempotencyKey,
    Image,
    ImageChange,
    ImageStatus,
    NewImage,
    NewOperation,
    OperationKind,
    utcnow,
)
from service.usecases.ports import NewUpdate

FOLDER = "fld-contract"
OTHER_FOLDER = "fld-other"
CALLER = "alice"


def new_operation(kind: OperationKind, image_id: str) -> NewOperation:
    """An operation as a use case makes it before the store accepts it (the store adds the
    folder and the time)."""
    return NewOperation(
        id=ids.new_id(ids.OPERATION_PREFIX), kind=kind, image_id=image_id, created_by=CALLER
    )


def update_of(image_id: str) -> NewOperation:
    return new_operation(OperationKind.UPDATE_IMAGE, image_id)


def delete_of(image_id: str) -> NewOperation:
    return new_operation(OperationKind.DELETE_IMAGE, image_id)


def new_update(
    image_id: str,
    change: ImageChange,
    *,
    folders: list[str] | None = None,
    key: IdempotencyKey | None = None,
) -> NewUpdate:
    return NewUpdate(update_of(image_id), change, folders, idempotency=key)


def create_request(name: str, folder_id: str = FOLDER) -> tuple[Image, NewOperation, NewImage]:
    """The image, operation and request of a Create, as ``Images.create_image`` makes them."""
    request = NewImage(
        folder_id=folder_id,
        name=name,
        description="a disk",
        uri="https://blobs.example/disk.img",
        labels={"env": "test"},
    )
    image = Image(
        id=ids.new_id(ids.IMAGE_PREFIX),
        folder_id=folder_id,
        name=name,
        description=request.description,
        checksum="",
        status=ImageStatus.CREATING,
        created_at=utcnow(),
        labels=dict(request.labels),
    )
    return image, new_operation(OperationKind.CREATE_IMAGE, image.id), request


def key(name: str, request: str = "the same request") -> IdempotencyKey:
    return IdempotencyKey(CALLER, name, hashlib.sha256(request.encode()).hexdigest())


def stored_token(*folders: str, expires_in_days: int | None = 30) -> StoredToken:
    """A token row as ``usecases.auth`` stores it (the hash of a secret, never the secret)."""
    # Whole seconds: the database keeps microseconds, the comparison needs no rounding.
    now = datetime.now(UTC).replace(microsecond=0)
    return StoredToken(
        id=ids.new_id(TOKEN_PREFIX),
        subject="operator",
        role=Role.EDITOR,
        folders=frozenset(folders or (FOLDER,)),
        secret_hash=hashlib.sha256(b"secret").digest(),
        expires_at=None if expires_in_days is None else now + timedelta(days=expires_in_days),
        revoked_at=None,
    )
