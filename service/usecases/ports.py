"""What the use cases need from the outside world, as Protocols the adapters satisfy.

The PostgreSQL and RabbitMQ adapters implement these in production; ``tests/unit/fakes.py``
implements them in memory, so every use case is unit-tested without I/O. The operator's
read-only views (``doctor``, ``ops``) have theirs in ``ops_ports``.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol

from service.domain.accounts import KeyOfAccount, ServiceAccount, StoredKey
from service.domain.auth import StoredToken
from service.domain.listing import ImageQuery, OperationQuery
from service.domain.model import (
    ClaimedOperation,
    IdempotencyKey,
    Image,
    ImageChange,
    ImageStatus,
    NewImage,
    NewOperation,
    Operation,
    OperationError,
)


@dataclass(frozen=True)
class Accepted:
    """What an accepting transaction produced: a new operation, or the one an earlier call
    with the same idempotency key started (``replayed``)."""

    operation: Operation
    replayed: bool = False


@dataclass(frozen=True)
class NewUpdate:
    """An Update to accept: its new operation (as the call knows it), the change, the
    caller's folder filter, the call's W3C trace context (``traceparent``; ``None`` while
    tracing is off), kept with the operation, and the call's idempotency key, if it sent
    one."""

    operation: NewOperation
    change: ImageChange
    folders: list[str] | None
    trace_context: str | None = None
    idempotency: IdempotencyKey | None = None


class Accepts(Protocol):
    """Accepting operations: each records its operation and moves its image in one
    transaction, behind the idempotency key if one is given, and gives it back whole (its
    folder and its times are the database's). Refusals raise the domain's errors
    (``NotFound``, ``FailedPrecondition``, ``AlreadyExists``, ``ResourceExhausted``)."""

    async def insert_create(
        self,
        image: Image,
        operation: NewOperation,
        request: NewImage,
        idempotency: IdempotencyKey | None = None,
    ) -> Accepted: ...

    async def begin_update(
        self,
        operation: NewOperation,
        change: ImageChange,
        idempotency: IdempotencyKey | None = None,
        folders: list[str] | None = None,
    ) -> Accepted: ...

    async def begin_updates(self, updates: Sequence[NewUpdate]) -> list[Operation | None]:
        """Many Updates at once (group commit): each accepted exactly as ``begin_update``
        would accept it alone; ``None`` for one that would not be (``begin_update`` says
        why)."""
        ...

    async def begin_delete(
        self,
        operation: NewOperation,
        idempotency: IdempotencyKey | None = None,
        folders: list[str] | None = None,
    ) -> Accepted: ...


class Reads(Protocol):
    async def get_image(self, image_id: str) -> Image | None: ...

    async def list_images(self, query: ImageQuery, limit: int) -> list[Image]: ...

    async def list_operations(self, query: OperationQuery, limit: int) -> list[Operation]: ...

    async def image_folder(self, image_id: str) -> str | None: ...

    async def get_operations(self, operation_ids: Sequence[str]) -> list[Operation | None]:
        """Several operations in one read, in the order asked (``None``: no such one)."""
        ...

    async def recent_operations(self, folder_id: str, limit: int) -> list[RecentOperation]:
        """A folder's latest ``limit`` operations, newest first (the operations console)."""
        ...


@dataclass(frozen=True)
class RecentOperation:
    """An operation with how often a worker claimed it: claimed and unfinished is running."""

    operation: Operation
    attempts: int
    image_name: str = ""  # the image's name now; "" once the image is gone


class OperationTransaction(Protocol):
    """Statements of one transaction that finishes an operation; row locks held to commit."""

    async def lock_operation(
        self, operation_id: str, attempt: int | None = None
    ) -> ClaimedOperation | None:
        """Lock an unfinished operation (and, with ``attempt``, only if still that claim)."""
        ...

    async def lock_image(self, image_id: str) -> Image | None: ...

    async def save_image(self, image: Image) -> None:
        """Write an image's fields; a name taken in its folder raises ``AlreadyExists`` and
        leaves the rest of the transaction intact."""
        ...

    async def set_image_status(self, image_id: str, status: ImageStatus) -> None: ...

    async def delete_image(self, image_id: str) -> None: ...

    async def finish(
        self,
        operation_id: str,
        *,
        response: Image | None = None,
        error: OperationError | None = None,
        dead_lettered: bool = False,
    ) -> None:
        """Mark an operation done with exactly one of a response or an error; with
        ``dead_lettered``, record that it ended because its message was dead-lettered (an
        error is required)."""
        ...

    async def finish_deleted(self, operation_id: str) -> None:
        """Mark a Delete done; its response is ``google.protobuf.Empty``."""
        ...


class Finishes(Protocol):
    """What carrying out, cancelling and abandoning operations needs."""

    def transaction(self) -> AbstractAsyncContextManager[OperationTransaction]: ...

    async def apply_updates(self, operation_ids: Sequence[str]) -> list[bool]:
        """Apply and finish unfinished Updates of ``UPDATING`` images in one step, as the
        transaction would; ``False`` for each it leaves to the transaction."""
        ...

    async def claim_with_lease(
        self, operation_id: str, lease_seconds: float
    ) -> ClaimedOperation | None:
        """Take an unfinished operation no live worker holds, for ``lease_seconds``."""
        ...

    async def extend_lease(self, claim: ClaimedOperation, lease_seconds: float) -> bool:
        """Keep holding a claim; ``False`` once the operation is done or claimed again."""
        ...

    async def release_lease(self, claim: ClaimedOperation) -> None: ...


@dataclass(frozen=True)
class Unpublished:
    """An operation to send, with the W3C trace context (``traceparent``) it was accepted in
    (``None`` while tracing was off)."""

    operation_id: str
    trace_context: str | None = None


@dataclass(frozen=True)
class OutgoingMessage:
    """One message to the workers: operations sent together, with one publish and one confirm.

    ``id`` is the message's own (the broker's ``message_id``); the published mark records it
    on each operation, so the sweeper can count what waits in messages, as the broker does.
    """

    id: str
    operations: tuple[Unpublished, ...]

    @property
    def operation_ids(self) -> list[str]:
        return [operation.operation_id for operation in self.operations]


class Outbox(Protocol):
    """The operations table seen as the outbox of messages to the workers.

    Every statement here locks rows without waiting for them (``SKIP LOCKED``), or one at a
    time, so none of them takes part in a deadlock.
    """

    async def mark_published(self, messages: Sequence[OutgoingMessage]) -> None:
        """Record the confirmed publish of each unfinished operation in ``messages``, and the
        message it went in (one held by another transaction is left unmarked: at worst the
        relay sends it once more)."""
        ...

    async def claim_unpublished(
        self, older_than_seconds: float, limit: int, claim_seconds: float
    ) -> list[Unpublished]:
        """Unfinished operations whose publish was never confirmed, oldest first, that no
        other relay has claimed; claimed for ``claim_seconds`` (committed at once), so that
        no other relay sends them meanwhile."""
        ...

    async def release_claims(self, operation_ids: Sequence[str]) -> None:
        """Give claimed operations back before their claim runs out (they were not sent)."""
        ...

    async def requeue_expired_leases(self) -> list[str]:
        """Mark unpublished, for the relay to send again, what a dead worker held (its lease
        ran out)."""
        ...

    async def requeue_unclaimed(self, published_before_seconds: float, keep: int) -> list[str]:
        """Of the unfinished operations published more than ``published_before_seconds``
        ago and never claimed, counted in the messages they went in, mark those of all but
        the newest ``keep`` messages unpublished, for the relay to send again. An operation
        whose message is unknown (marked before messages were recorded) counts as a message
        of its own."""
        ...


@dataclass(frozen=True)
class QueueDepth:
    """The operation queue as the broker sees it."""

    ready: int  # messages waiting for a consumer
    consumers: int  # consumers subscribed to it


class MessageQueue(Protocol):
    async def queue_depth(self) -> QueueDepth:
        """The operation queue's depth now; ``Unavailable`` when the broker cannot say."""
        ...


class Retention(Protocol):
    async def delete_finished_operations(self, older_than_seconds: float, batch: int) -> int: ...

    async def delete_expired_idempotency_keys(self, older_than_seconds: float) -> int: ...

    async def delete_expired_tokens(self, older_than_seconds: float) -> int:
        """Remove tokens that expired more than ``older_than_seconds`` ago (IAM tokens, one
        an hour or so per SDK client, would otherwise pile up)."""
        ...


class Tokens(Protocol):
    async def insert_token(self, token: StoredToken) -> None: ...

    async def revoke_token(self, token_id: str) -> bool: ...

    async def find_token(self, token_id: str) -> StoredToken | None: ...


class ServiceAccounts(Protocol):
    """Service accounts, their keys, and the IAM tokens exchanged for a key's JWT."""

    async def find_key(self, key_id: str) -> KeyOfAccount | None: ...

    async def insert_iam_token(self, token: StoredToken) -> bool:
        """Store ``token`` (its ``key_id`` set) with the role and folders of the key's account,
        only while the key is active and its account not deleted; False if not stored."""
        ...

    async def insert_account(self, account: ServiceAccount) -> None: ...

    async def list_accounts(self) -> list[ServiceAccount]: ...

    async def delete_account(self, account_id: str) -> bool:
        """Delete the account and revoke its keys and their tokens; False if none was live."""
        ...

    async def insert_key(self, key: StoredKey) -> bool:
        """False if the key's account does not exist or is deleted."""
        ...

    async def list_keys(self, account_id: str | None) -> list[StoredKey]: ...

    async def revoke_key(self, key_id: str) -> bool:
        """Revoke the key and its tokens; False if it was not active."""
        ...


class Publisher(Protocol):
    """The message broker, as the API and the relay use it."""

    async def publish(self, message: OutgoingMessage, timeout: float) -> None:
        """Send one message and wait for the broker's confirm; ``Unavailable`` if not."""
        ...

    def is_healthy(self) -> bool: ...


@dataclass(frozen=True)
class Downloaded:
    md5: str
    size: int


class Downloader(Protocol):
    async def download(self, uri: str) -> Downloaded:
        """Fetch ``uri`` and return its MD5 and size. Raises ``Unavailable`` for what may
        pass (network, 5xx), another ``ServiceError`` for what will not."""
        ...


class Pingable(Protocol):
    async def ping(self) -> None: ...


class Schema(Protocol):
    """The database's schema as the migration tool records it."""

    def shipped_migrations(self) -> Sequence[str]:
        """IDs of the migrations this version ships, in order."""
        ...

    async def applied_migrations(self) -> frozenset[str] | None:
        """IDs of the applied migrations; ``None`` when the database has no migration table."""
        ...
