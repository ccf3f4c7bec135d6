"""What the operator's read-only views (``doctor``, ``ops``, ``token list``) need from the
database and the broker, as Protocols the adapters satisfy, and the records they answer with.

The request path's ports are in ``ports``; these are apart because only the operator's commands
use them (``usecases.ops``), never the API or the workers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol


@dataclass(frozen=True)
class TokenRecord:
    """What an operator may see of a stored token: never its secret or hash."""

    id: str
    subject: str
    role: str
    folders: tuple[str, ...]
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None


@dataclass(frozen=True)
class OperationRecord:
    """An operation as the operator's commands show it: its progress through the pipeline
    (published, claimed, leased) and its image's status."""

    id: str
    kind: str
    image_id: str
    folder_id: str
    created_at: datetime
    modified_at: datetime
    done: bool
    attempts: int
    published_at: datetime | None
    lease_until: datetime | None
    error_code: int | None
    error_message: str | None
    image_status: int | None  # None: the image is gone


class OpsQueries(Protocol):
    """The operator's read-only questions to the database."""

    async def list_tokens(self) -> list[TokenRecord]: ...

    async def unfinished_operations(
        self, older_than_seconds: float, limit: int
    ) -> list[OperationRecord]:
        """Unfinished operations created more than ``older_than_seconds`` ago, oldest first."""
        ...

    async def operation_records(self, operation_ids: Sequence[str]) -> dict[str, OperationRecord]:
        """The operations of these IDs that exist."""
        ...

    async def dead_lettered_operations(
        self, since_seconds: float, limit: int
    ) -> list[OperationRecord]:
        """Operations ended in the last ``since_seconds`` because their message was
        dead-lettered, newest first."""
        ...


@dataclass(frozen=True)
class QueueState:
    """What a look at one queue found: whether it exists as expected, and its counts."""

    name: str
    exists: bool
    matches: bool  # declared with the expected arguments
    detail: str  # the broker's words when it does not match
    messages: int
    consumers: int


@dataclass(frozen=True)
class PeekedMessage:
    """A message looked at and put back: the operation it names, how often it was delivered,
    and why it was dead-lettered (``""`` if the broker did not say)."""

    operation_id: str
    delivery_count: int
    death_reason: str


class QueueInspector(Protocol):
    """Looks at queues without changing them."""

    async def queue_state(self, queue: str, arguments: dict[str, Any]) -> QueueState:
        """Whether ``queue`` exists with these arguments; never creates it."""
        ...

    async def peek(self, queue: str, limit: int) -> list[PeekedMessage]:
        """Up to ``limit`` messages at the head of ``queue``, all left in it."""
        ...
