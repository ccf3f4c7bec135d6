"""The data the service works on: images, the changes asked of them, and operations."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from service.domain.errors import Code, ServiceError


class ImageStatus(enum.IntEnum):
    """Numbers match ``Image.Status`` on the wire."""

    STATUS_UNSPECIFIED = 0
    CREATING = 1
    READY = 2
    ERROR = 3
    DELETING = 4
    UPDATING = 5


class OperationKind(enum.StrEnum):
    CREATE_IMAGE = "create_image"
    UPDATE_IMAGE = "update_image"
    DELETE_IMAGE = "delete_image"


DESCRIPTIONS = {
    OperationKind.CREATE_IMAGE: "Create image",
    OperationKind.UPDATE_IMAGE: "Update image",
    OperationKind.DELETE_IMAGE: "Delete image",
}


@dataclass(frozen=True, slots=True)
class Image:
    id: str
    folder_id: str
    name: str
    description: str
    checksum: str
    status: ImageStatus
    created_at: datetime
    labels: Mapping[str, str] = field(default_factory=dict)

    def snapshot(self) -> dict[str, Any]:
        """A JSON-ready copy, stored as an operation's response."""
        return {
            "id": self.id,
            "folder_id": self.folder_id,
            "name": self.name,
            "description": self.description,
            "checksum": self.checksum,
            "status": int(self.status),
            "created_at": self.created_at.isoformat(),
            "labels": dict(self.labels),
        }

    @classmethod
    def from_snapshot(cls, data: Mapping[str, Any]) -> Image:
        return cls(
            id=data["id"],
            folder_id=data["folder_id"],
            name=data["name"],
            description=data["description"],
            checksum=data["checksum"],
            status=ImageStatus(data["status"]),
            created_at=datetime.fromisoformat(data["created_at"]),
            labels=dict(data["labels"]),
        )


@dataclass(frozen=True, slots=True)
class ImageChange:
    """What an Update asks for; a field left ``None`` stays as it is."""

    name: str | None = None
    description: str | None = None
    labels: Mapping[str, str] | None = None

    def apply(self, image: Image) -> Image:
        """The image with this change applied; labels are replaced as a whole."""
        return replace(
            image,
            name=image.name if self.name is None else self.name,
            description=image.description if self.description is None else self.description,
            labels=dict(image.labels) if self.labels is None else dict(self.labels),
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.name is not None:
            out["name"] = self.name
        if self.description is not None:
            out["description"] = self.description
        if self.labels is not None:
            out["labels"] = dict(self.labels)
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ImageChange:
        labels = data.get("labels")
        return cls(
            name=data.get("name"),
            description=data.get("description"),
            labels=None if labels is None else dict(labels),
        )


@dataclass(frozen=True, slots=True)
class NewImage:
    """What a Create asks for."""

    folder_id: str
    name: str
    description: str
    uri: str
    labels: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class OperationError:
    """How a failed operation ended (``google.rpc.Status`` on the wire)."""

    code: Code
    message: str

    @classmethod
    def from_exception(cls, exc: ServiceError) -> OperationError:
        return cls(code=exc.code, message=exc.message)


@dataclass(frozen=True, slots=True)
class IdempotencyKey:
    """A client's ``idempotency-key`` for one call; ``fingerprint`` identifies the request."""

    caller: str
    key: str
    fingerprint: str


@dataclass(frozen=True, slots=True)
class ClaimedOperation:
    """An unfinished operation a worker (or a Cancel) holds: what it asks and which attempt
    this is."""

    id: str
    kind: OperationKind
    image_id: str
    folder_id: str
    request: Mapping[str, Any]
    attempt: int

    @property
    def status_before(self) -> ImageStatus | None:
        """The status a Delete found its image in (given back if the Delete does not happen)."""
        before = self.request.get("status_before")
        return None if before is None else ImageStatus(before)


@dataclass(frozen=True, slots=True)
class Operation:
    id: str
    kind: OperationKind
    image_id: str
    folder_id: str
    description: str
    created_at: datetime
    created_by: str
    modified_at: datetime
    done: bool
    # Set when a Create or Update finished well; a finished Delete has neither (Empty).
    response: Image | None = None
    error: OperationError | None = None


@dataclass(frozen=True, slots=True)
class NewOperation:
    """An operation a call is about to start, as the call knows it. Accepting it adds what
    only the database knows (the folder of an Update's or a Delete's image, the time) and
    gives the ``Operation`` (``accepted``)."""

    id: str
    kind: OperationKind
    image_id: str
    created_by: str

    @property
    def description(self) -> str:
        return DESCRIPTIONS[self.kind]

    def accepted(self, folder_id: str, created_at: datetime) -> Operation:
        """The operation as accepted: unfinished, in ``folder_id``, created (and last
        modified) at ``created_at``."""
        return Operation(
            id=self.id,
            kind=self.kind,
            image_id=self.image_id,
            folder_id=folder_id,
            description=self.description,
            created_at=created_at,
            created_by=self.created_by,
            modified_at=created_at,
            done=False,
        )


def utcnow() -> datetime:
    return datetime.now(UTC)
