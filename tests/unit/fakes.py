"""In-memory fakes of the ports (``service.usecases.ports``), for unit tests of the use cases.

``FakeStore`` is the database: it satisfies ``Accepts``, ``Reads``, ``Finishes``, ``Outbox``,
``Retention`` and ``Tokens`` with the semantics the PostgreSQL adapters document. The state
rules are the domain's own functions (``service.domain.rules``), called, not copied.

Transactions work on a copy of the state and commit it when their block ends without an
exception. One lock stands in for the row locks: whatever changes state takes it, so a
transaction never commits over a change made while it ran. Time is the store's own clock
(``now``, moved by ``advance``); every write stamps a moment one microsecond later than the
last, so rows are ordered as the database's ``clock_timestamp()`` orders them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from service.domain import ids
from service.domain.auth import Principal, Role, StoredToken
from service.domain.errors import (
    AlreadyExists,
    Code,
    FieldViolation,
    InvalidArgument,
    ServiceError,
    Unavailable,
    image_name_taken,
    image_not_found,
)
from service.domain.listing import Condition, ImageQuery, OperationQuery, Operator
from service.domain.model import (
    DESCRIPTIONS,
    ClaimedOperation,
    IdempotencyKey,
    Image,
    ImageChange,
    ImageStatus,
    NewImage,
    NewOperation,
    Operation,
    OperationError,
    OperationKind,
    utcnow,
)
from service.domain.rules import ensure_deletable, ensure_updatable, ensure_within_quota
from service.runtime import tracing
from service.usecases.ports import (
    Accepted,
    Accepts,
    Downloaded,
    Downloader,
    Finishes,
    MessageQueue,
    NewUpdate,
    OperationTransaction,
    Outbox,
    OutgoingMessage,
    Pingable,
    Publisher,
    QueueDepth,
    Reads,
    RecentOperation,
    Retention,
    Tokens,
    Unpublished,
)

FOLDER = "fld-a"
OTHER_FOLDER = "fld-b"
SUBJECT = "alice"


# --- callers --------------------------------------------------------------------------------


def editor(*folders: str, subject: str = SUBJECT) -> Principal:
    """An editor of ``folders`` (``FOLDER`` if none is named; ``"*"`` for every folder)."""
    return Principal(subject, Role.EDITOR, frozenset(folders or (FOLDER,)))


def viewer(*folders: str, subject: str = SUBJECT) -> Principal:
    return Principal(subject, Role.VIEWER, frozenset(folders or (FOLDER,)))


# --- the store's rows -----------------------------------------------------------------------


@dataclass(frozen=True)
class OperationRow:
    """An ``operations`` row: the operation as read, plus the columns only the store sees."""

    operation: Operation
    request: Mapping[str, Any]
    attempts: int = 0
    lease_until: datetime | None = None
    published_at: datetime | None = None
    message_id: str | None = None  # the message it was sent in, recorded with published_at
    relay_claimed_until: datetime | None = None
    dead_lettered_at: datetime | None = None  # ended because its message was dead-lettered
    trace_context: str | None = None  # the accepting call's, sent on by the relay

    def claim(self) -> ClaimedOperation:
        op = self.operation
        return ClaimedOperation(
            op.id, op.kind, op.image_id, op.folder_id, dict(self.request), self.attempts
        )


@dataclass(frozen=True)
class KeyRow:
    fingerprint: str
    operation_id: str
    created_at: datetime


@dataclass
class State:
    """Every row of the store; values are immutable, so a copy of the dicts is a snapshot."""

    images: dict[str, Image] = field(default_factory=dict)
    operations: dict[str, OperationRow] = field(default_factory=dict)
    keys: dict[tuple[str, str], KeyRow] = field(default_factory=dict)

    def copy(self) -> State:
        return State(dict(self.images), dict(self.operations), dict(self.keys))

    def ensure_within_quota(self, folder_id: str, limit: int) -> None:
        unfinished = sum(
            1
            for row in self.operations.values()
            if row.operation.folder_id == folder_id and not row.operation.done
        )
        ensure_within_quota(folder_id, unfinished, limit)

    def ensure_name_free(self, folder_id: str, name: str, image_id: str) -> None:
        """The unique (folder_id, name) constraint of the images table."""
        for other in self.images.values():
            if other.folder_id == folder_id and other.name == name and other.id != image_id:
                raise image_name_taken(name)

    def visible_image(self, image_id: str, folders: list[str] | None) -> Image:
        image = self.images.get(image_id)
        if image is None or (folders is not None and image.folder_id not in folders):
            raise image_not_found(image_id)
        return image

    def finish(
        self,
        operation_id: str,
        now: datetime,
        response: Image | None,
        error: OperationError | None,
        dead_lettered: bool = False,
    ) -> None:
        """Mark an unfinished operation done (a done one is left as it is)."""
        row = self.operations.get(operation_id)
        if row is None or row.operation.done:
            return
        done = replace(row.operation, done=True, modified_at=now, response=response, error=error)
        self.operations[operation_id] = replace(
            row,
            operation=done,
            lease_until=None,
            dead_lettered_at=now if dead_lettered else None,
        )

    def mark_published(self, messages: Sequence[OutgoingMessage], now: datetime) -> None:
        for message in messages:
            for operation_id in message.operation_ids:
                row = self.operations.get(operation_id)
                if row is not None and row.published_at is None and not row.operation.done:
                    self.operations[operation_id] = replace(
                        row, published_at=now, message_id=message.id
                    )


def _well_shaped(request: Mapping[str, Any]) -> bool:
    """A request of the shape the API writes (what ``apply_updates.sql`` checks)."""
    labels = request.get("labels", {})
    return (
        isinstance(request.get("name", ""), str)
        and isinstance(request.get("description", ""), str)
        and isinstance(labels, dict)
        and all(isinstance(value, str) for value in labels.values())
    )


def _matches(image: Image, condition: Condition) -> bool:
    value = str(getattr(image, condition.field))
    if condition.operator is Operator.EQUALS:
        return value == condition.value
    return condition.value in value


def _after(image: Image, query: ImageQuery) -> bool:
    """Whether ``image`` comes after the query's keyset position."""
    assert query.after is not None
    column = query.ordering.column
    if column in ("id", "name"):  # unique in a folder: no ID tie-break
        mine, theirs = getattr(image, column), query.after[0]
    else:
        mine, theirs = (getattr(image, column), image.id), query.after
    return bool(mine < theirs if query.ordering.descending else mine > theirs)


# --- the store ------------------------------------------------------------------------------


class FakeStore:
    """The database in memory: ``Accepts``, ``Reads``, ``Finishes``, ``Outbox``,
    ``Retention`` and ``Tokens``.

    ``calls`` counts each port method called; ``operation_reads`` counts the operation IDs read
    by ``get_operations``; ``update_batches`` holds the size of each ``begin_updates`` batch and
    ``mark_batches`` the IDs of each ``mark_published`` call.
    ``decline_updates`` makes ``apply_updates`` leave everything to the transaction;
    ``failing_marks`` is how many of the next ``mark_published`` calls raise ``Unavailable``.
    """

    def __init__(self, max_unfinished_per_folder: int = 1000) -> None:
        self.state = State()
        self.tokens: dict[str, StoredToken] = {}
        self.max_unfinished_per_folder = max_unfinished_per_folder
        self.now = utcnow()
        self.calls: Counter[str] = Counter()
        self.operation_reads = 0
        self.update_batches: list[int] = []
        self.mark_batches: list[list[str]] = []
        self.decline_updates = False
        self.failing_marks = 0
        self.failing_reads = 0  # how many of the next get_operations raise Unavailable
        self._lock = asyncio.Lock()

    # --- time and test set-up ---------------------------------------------------------------

    def stamp(self) -> datetime:
        """The store's clock at a write: later than every earlier write."""
        self.now += timedelta(microseconds=1)
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)

    def add_image(
        self,
        folder_id: str = FOLDER,
        *,
        name: str | None = None,
        status: ImageStatus = ImageStatus.READY,
        description: str = "",
        labels: Mapping[str, str] | None = None,
    ) -> Image:
        image_id = ids.new_id(ids.IMAGE_PREFIX)
        image = Image(
            id=image_id,
            folder_id=folder_id,
            name=name or f"img-{image_id[3:]}",
            description=description,
            checksum="",
            status=status,
            created_at=self.stamp(),
            labels=dict(labels or {}),
        )
        self.state.images[image.id] = image
        return image

    def add_operation(
        self,
        kind: OperationKind,
        image_id: str,
        folder_id: str = FOLDER,
        *,
        request: Mapping[str, Any] | None = None,
        done: bool = False,
        response: Image | None = None,
        error: OperationError | None = None,
        attempts: int = 0,
        published: bool = False,
    ) -> Operation:
        now = self.stamp()
        operation = Operation(
            id=ids.new_id(ids.OPERATION_PREFIX),
            kind=kind,
            image_id=image_id,
            folder_id=folder_id,
            description=DESCRIPTIONS[kind],
            created_at=now,
            created_by=SUBJECT,
            modified_at=now,
            done=done,
            response=response,
            error=error,
        )
        self.state.operations[operation.id] = OperationRow(
            operation, dict(request or {}), attempts, published_at=now if published else None
        )
        return operation

    def add_key(self, key: IdempotencyKey, operation_id: str) -> None:
        self.state.keys[(key.caller, key.key)] = KeyRow(key.fingerprint, operation_id, self.stamp())

    def image(self, image_id: str) -> Image | None:
        return self.state.images.get(image_id)

    def status(self, image_id: str) -> ImageStatus | None:
        image = self.state.images.get(image_id)
        return None if image is None else image.status

    def error_code(self, operation_id: str) -> Code | None:
        error = self.operation(operation_id).error
        return None if error is None else error.code

    def operation(self, operation_id: str) -> Operation:
        return self.state.operations[operation_id].operation

    def row(self, operation_id: str) -> OperationRow:
        return self.state.operations[operation_id]

    # --- Accepts ----------------------------------------------------------------------------

    async def insert_create(
        self,
        image: Image,
        operation: NewOperation,
        request: NewImage,
        idempotency: IdempotencyKey | None = None,
    ) -> Accepted:
        self.calls["insert_create"] += 1

        def insert(state: State) -> Operation:
            state.ensure_name_free(image.folder_id, image.name, image.id)
            state.ensure_within_quota(image.folder_id, self.max_unfinished_per_folder)
            # Stamped on acceptance, by the store's clock (the column's default, ``now()``).
            state.images[image.id] = replace(image, created_at=self.stamp())
            return self._insert_operation(
                state, operation, image.folder_id, {"uri": request.uri}, tracing.traceparent()
            )

        return await self._accept(idempotency, operation.id, insert)

    async def begin_update(
        self,
        operation: NewOperation,
        change: ImageChange,
        idempotency: IdempotencyKey | None = None,
        folders: list[str] | None = None,
    ) -> Accepted:
        self.calls["begin_update"] += 1
        trace_context = tracing.traceparent()
        return await self._accept(
            idempotency,
            operation.id,
            lambda state: self._begin(state, operation, change, folders, trace_context),
        )

    async def begin_updates(self, updates: Sequence[NewUpdate]) -> list[Operation | None]:
        """Each Update accepted exactly as ``begin_update`` would, in order; ``None`` where
        that would raise."""
        self.calls["begin_updates"] += 1
        self.update_batches.append(len(updates))
        async with self._lock:
            seen: set[tuple[str, str]] = set()
            accepted: list[Operation | None] = []
            for u in updates:
                key = None if u.idempotency is None else (u.idempotency.caller, u.idempotency.key)
                if key is not None and (key in seen or key in self.state.keys):
                    accepted.append(None)  # replayed (or refused) by begin_update
                else:
                    accepted.append(self._begin_alone(u.operation, u.change, u.folders, u))
                if key is not None:
                    seen.add(key)
            return accepted

    async def begin_delete(
        self,
        operation: NewOperation,
        idempotency: IdempotencyKey | None = None,
        folders: list[str] | None = None,
    ) -> Accepted:
        self.calls["begin_delete"] += 1

        def begin(state: State) -> Operation:
            image = state.visible_image(operation.image_id, folders)
            ensure_deletable(image.id, image.status)
            state.ensure_within_quota(image.folder_id, self.max_unfinished_per_folder)
            state.images[image.id] = replace(image, status=ImageStatus.DELETING)
            before = {"status_before": int(image.status)}
            return self._insert_operation(
                state, operation, image.folder_id, before, tracing.traceparent()
            )

        return await self._accept(idempotency, operation.id, begin)

    def _begin_alone(
        self,
        operation: NewOperation,
        change: ImageChange,
        folders: list[str] | None,
        update: NewUpdate,
    ) -> Operation | None:
        state = self.state.copy()
        try:
            accepted = self._begin(state, operation, change, folders, update.trace_context)
        except ServiceError:
            return None
        self._claim_key(state, update.idempotency, operation.id)
        self.state = state
        return accepted

    def _begin(
        self,
        state: State,
        operation: NewOperation,
        change: ImageChange,
        folders: list[str] | None,
        trace_context: str | None,
    ) -> Operation:
        """``READY -> UPDATING`` and the Update recorded, in the adapter's order of checks."""
        image = state.visible_image(operation.image_id, folders)
        ensure_updatable(image.id, image.status)
        state.ensure_within_quota(image.folder_id, self.max_unfinished_per_folder)
        if change.name is not None:
            state.ensure_name_free(image.folder_id, change.name, image.id)
        state.images[image.id] = replace(image, status=ImageStatus.UPDATING)
        return self._insert_operation(
            state, operation, image.folder_id, change.to_json(), trace_context
        )

    async def _accept(
        self,
        idempotency: IdempotencyKey | None,
        operation_id: str,
        step: Callable[[State], Operation],
    ) -> Accepted:
        """One transaction: the key first (an earlier call's operation is replayed), then
        ``step``; nothing is kept if either raises."""
        async with self._lock:
            state = self.state.copy()
            earlier = self._claim_key(state, idempotency, operation_id)
            if earlier is not None:
                row = state.operations.get(earlier)
                if row is None:
                    raise Unavailable("the operation of this idempotency key was removed; retry")
                return Accepted(row.operation, replayed=True)
            accepted = step(state)
            self.state = state
            return Accepted(accepted)

    def _claim_key(
        self, state: State, idempotency: IdempotencyKey | None, operation_id: str
    ) -> str | None:
        if idempotency is None:
            return None
        key = (idempotency.caller, idempotency.key)
        row = state.keys.get(key)
        if row is None:
            state.keys[key] = KeyRow(idempotency.fingerprint, operation_id, self.stamp())
            return None
        if row.fingerprint != idempotency.fingerprint:
            raise InvalidArgument(
                [
                    FieldViolation(
                        "idempotency-key",
                        "was already used for a different request by this caller",
                    )
                ]
            )
        return row.operation_id

    def _insert_operation(
        self,
        state: State,
        operation: NewOperation,
        folder_id: str,
        request: Mapping[str, Any],
        trace_context: str | None,
    ) -> Operation:
        """An unfinished operation in ``folder_id``, stamped with the store's clock."""
        stored = operation.accepted(folder_id, self.stamp())
        state.operations[stored.id] = OperationRow(
            stored, dict(request), trace_context=trace_context
        )
        return stored

    # --- Reads ------------------------------------------------------------------------------

    async def get_image(self, image_id: str) -> Image | None:
        self.calls["get_image"] += 1
        return self.state.images.get(image_id)

    async def list_images(self, query: ImageQuery, limit: int) -> list[Image]:
        self.calls["list_images"] += 1
        images = [
            image
            for image in self.state.images.values()
            if image.folder_id == query.folder_id
            and all(_matches(image, condition) for condition in query.conditions)
            and (query.after is None or _after(image, query))
        ]
        column = query.ordering.column
        images.sort(key=lambda i: (getattr(i, column), i.id), reverse=query.ordering.descending)
        return images[:limit]

    async def list_operations(self, query: OperationQuery, limit: int) -> list[Operation]:
        self.calls["list_operations"] += 1
        operations = [
            row.operation
            for row in self.state.operations.values()
            if row.operation.image_id == query.image_id
            and (query.after is None or (row.operation.created_at, row.operation.id) < query.after)
        ]
        operations.sort(key=lambda o: (o.created_at, o.id), reverse=True)
        return operations[:limit]

    async def image_folder(self, image_id: str) -> str | None:
        self.calls["image_folder"] += 1
        image = self.state.images.get(image_id)
        return None if image is None else image.folder_id

    async def get_operations(self, operation_ids: Sequence[str]) -> list[Operation | None]:
        self.calls["get_operations"] += 1
        if self.failing_reads > 0:
            self.failing_reads -= 1
            raise Unavailable("database unreachable")
        self.operation_reads += len(operation_ids)
        rows = [self.state.operations.get(operation_id) for operation_id in operation_ids]
        return [None if row is None else row.operation for row in rows]

    async def recent_operations(self, folder_id: str, limit: int) -> list[RecentOperation]:
        self.calls["recent_operations"] += 1
        rows = [r for r in self.state.operations.values() if r.operation.folder_id == folder_id]
        rows.sort(key=lambda r: (r.operation.created_at, r.operation.id), reverse=True)
        return [
            RecentOperation(row.operation, row.attempts, self._image_name(row.operation.image_id))
            for row in rows[:limit]
        ]

    def _image_name(self, image_id: str) -> str:
        image = self.state.images.get(image_id)
        return image.name if image else ""

    # --- Finishes ----------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[FakeTransaction]:
        """Commits the transaction's copy when the block ends without an exception."""
        self.calls["transaction"] += 1
        async with self._lock:
            tx = FakeTransaction(self, self.state.copy())
            yield tx
            self.state = tx.state

    async def apply_updates(self, operation_ids: Sequence[str]) -> list[bool]:
        """All at once or nothing: ``False`` for what it cannot do alone, and for every one
        when a new name is taken."""
        self.calls["apply_updates"] += 1
        if self.decline_updates:
            return [False] * len(operation_ids)
        async with self._lock:
            state = self.state.copy()
            try:
                finished = {i for i in dict.fromkeys(operation_ids) if self._apply(state, i)}
            except AlreadyExists:
                return [False] * len(operation_ids)
            self.state = state
        return [operation_id in finished for operation_id in operation_ids]

    def _apply(self, state: State, operation_id: str) -> bool:
        row = state.operations.get(operation_id)
        if (
            row is None
            or row.operation.done
            or row.operation.kind is not OperationKind.UPDATE_IMAGE
        ):
            return False
        image = state.images.get(row.operation.image_id)
        if (
            image is None
            or image.status is not ImageStatus.UPDATING
            or not _well_shaped(row.request)
        ):
            return False
        updated = replace(ImageChange.from_json(row.request).apply(image), status=ImageStatus.READY)
        state.ensure_name_free(updated.folder_id, updated.name, updated.id)
        state.images[image.id] = updated
        state.finish(operation_id, self.stamp(), updated, None)
        return True

    async def claim_with_lease(
        self, operation_id: str, lease_seconds: float
    ) -> ClaimedOperation | None:
        self.calls["claim_with_lease"] += 1
        async with self._lock:
            row = self.state.operations.get(operation_id)
            if row is None or row.operation.done:
                return None
            if row.lease_until is not None and row.lease_until >= self.now:
                return None
            now = self.stamp()
            row = replace(
                row,
                attempts=row.attempts + 1,
                lease_until=now + timedelta(seconds=lease_seconds),
                operation=replace(row.operation, modified_at=now),
            )
            self.state.operations[operation_id] = row
            return row.claim()

    async def extend_lease(self, claim: ClaimedOperation, lease_seconds: float) -> bool:
        self.calls["extend_lease"] += 1
        async with self._lock:
            row = self._held_row(claim)
            if row is None:
                return False
            lease_until = self.now + timedelta(seconds=lease_seconds)
            self.state.operations[claim.id] = replace(row, lease_until=lease_until)
            return True

    async def release_lease(self, claim: ClaimedOperation) -> None:
        self.calls["release_lease"] += 1
        async with self._lock:
            row = self._held_row(claim)
            if row is not None:
                self.state.operations[claim.id] = replace(row, lease_until=None)

    def _held_row(self, claim: ClaimedOperation) -> OperationRow | None:
        row = self.state.operations.get(claim.id)
        if row is None or row.operation.done or row.attempts != claim.attempt:
            return None
        return row

    # --- Outbox -----------------------------------------------------------------------------

    async def mark_published(self, messages: Sequence[OutgoingMessage]) -> None:
        self.calls["mark_published"] += 1
        self.mark_batches.append([i for message in messages for i in message.operation_ids])
        if self.failing_marks > 0:
            self.failing_marks -= 1
            raise Unavailable("database unreachable")
        async with self._lock:
            self.state.mark_published(messages, self.stamp())

    async def claim_unpublished(
        self, older_than_seconds: float, limit: int, claim_seconds: float
    ) -> list[Unpublished]:
        """Oldest first, skipping what another relay's claim holds; claimed at once."""
        self.calls["claim_unpublished"] += 1
        async with self._lock:
            cutoff = self.now - timedelta(seconds=older_than_seconds)
            rows = sorted(
                (
                    row
                    for row in self.state.operations.values()
                    if row.published_at is None
                    and not row.operation.done
                    and row.operation.created_at < cutoff
                    and (row.relay_claimed_until is None or row.relay_claimed_until < self.now)
                    and (row.lease_until is None or row.lease_until < self.now)
                ),
                key=lambda row: row.operation.created_at,
            )[:limit]
            until = self.now + timedelta(seconds=claim_seconds)
            for row in rows:
                self.state.operations[row.operation.id] = replace(row, relay_claimed_until=until)
            return [Unpublished(row.operation.id, row.trace_context) for row in rows]

    async def release_claims(self, operation_ids: Sequence[str]) -> None:
        self.calls["release_claims"] += 1
        async with self._lock:
            for operation_id in operation_ids:
                row = self.state.operations.get(operation_id)
                if row is not None and row.published_at is None:
                    self.state.operations[operation_id] = replace(row, relay_claimed_until=None)

    async def requeue_expired_leases(self) -> list[str]:
        self.calls["requeue_expired_leases"] += 1
        async with self._lock:
            expired = [
                operation_id
                for operation_id, row in self.state.operations.items()
                if not row.operation.done
                and row.lease_until is not None
                and row.lease_until < self.now
            ]
            return self._requeue(expired)

    async def requeue_unclaimed(self, published_before_seconds: float, keep: int) -> list[str]:
        """Those published long ago and never claimed, of all but the newest ``keep`` of the
        messages they went in (one with no message recorded is a message of its own)."""
        self.calls["requeue_unclaimed"] += 1
        async with self._lock:
            cutoff = self.now - timedelta(seconds=published_before_seconds)
            messages: dict[str, list[tuple[datetime, str]]] = {}
            for operation_id, row in self.state.operations.items():
                if (
                    not row.operation.done
                    and row.lease_until is None
                    and row.published_at is not None
                    and row.published_at < cutoff
                ):
                    message = row.message_id or operation_id
                    messages.setdefault(message, []).append((row.published_at, operation_id))
            oldest_first = sorted(
                messages, key=lambda message: (max(messages[message])[0], message)
            )
            lost = oldest_first[: max(len(oldest_first) - keep, 0)]
            return self._requeue([i for _, i in sorted(p for m in lost for p in messages[m])])

    def _requeue(self, operation_ids: list[str]) -> list[str]:
        for operation_id in operation_ids:
            row = self.state.operations[operation_id]
            touched = replace(row.operation, modified_at=self.stamp())
            self.state.operations[operation_id] = replace(
                row,
                operation=touched,
                published_at=None,
                lease_until=None,
                relay_claimed_until=None,
            )
        return operation_ids

    # --- Retention --------------------------------------------------------------------------

    async def delete_finished_operations(self, older_than_seconds: float, batch: int) -> int:
        self.calls["delete_finished_operations"] += 1
        async with self._lock:
            cutoff = self.now - timedelta(seconds=older_than_seconds)
            victims = [
                operation_id
                for operation_id, row in self.state.operations.items()
                if row.operation.done and row.operation.modified_at < cutoff
            ][:batch]
            for operation_id in victims:
                del self.state.operations[operation_id]
            return len(victims)

    async def delete_expired_idempotency_keys(self, older_than_seconds: float) -> int:
        self.calls["delete_expired_idempotency_keys"] += 1
        async with self._lock:
            cutoff = self.now - timedelta(seconds=older_than_seconds)
            expired = [key for key, row in self.state.keys.items() if row.created_at < cutoff]
            for key in expired:
                del self.state.keys[key]
            return len(expired)

    async def delete_expired_tokens(self, older_than_seconds: float) -> int:
        self.calls["delete_expired_tokens"] += 1
        cutoff = self.now - timedelta(seconds=older_than_seconds)
        expired = [
            token_id
            for token_id, token in self.tokens.items()
            if token.expires_at is not None and token.expires_at < cutoff
        ]
        for token_id in expired:
            del self.tokens[token_id]
        return len(expired)

    # --- Tokens -----------------------------------------------------------------------------

    async def insert_token(self, token: StoredToken) -> None:
        self.calls["insert_token"] += 1
        if token.id in self.tokens:
            raise ValueError(f"token {token.id} exists")  # the primary key
        self.tokens[token.id] = token

    async def revoke_token(self, token_id: str) -> bool:
        """Revoke an active token; ``False`` for an unknown or already revoked one."""
        self.calls["revoke_token"] += 1
        token = self.tokens.get(token_id)
        if token is None or token.revoked_at is not None:
            return False
        self.tokens[token_id] = replace(token, revoked_at=self.stamp())
        return True

    async def find_token(self, token_id: str) -> StoredToken | None:
        self.calls["find_token"] += 1
        return self.tokens.get(token_id)


class FakeTransaction:
    """``OperationTransaction`` over a copy of the store's state (``state``)."""

    def __init__(self, store: FakeStore, state: State) -> None:
        self.store = store
        self.state = state

    async def lock_operation(
        self, operation_id: str, attempt: int | None = None
    ) -> ClaimedOperation | None:
        """Only an unfinished operation, and with ``attempt`` only if still that claim."""
        row = self.state.operations.get(operation_id)
        if row is None or row.operation.done:
            return None
        if attempt is not None and row.attempts != attempt:
            return None
        return row.claim()

    async def lock_image(self, image_id: str) -> Image | None:
        return self.state.images.get(image_id)

    async def save_image(self, image: Image) -> None:
        """The fields an UPDATE writes; a taken name raises and changes nothing."""
        current = self.state.images.get(image.id)
        if current is None:
            return
        self.state.ensure_name_free(current.folder_id, image.name, image.id)
        self.state.images[image.id] = replace(
            current,
            name=image.name,
            description=image.description,
            labels=dict(image.labels),
            status=image.status,
            checksum=image.checksum,
        )

    async def set_image_status(self, image_id: str, status: ImageStatus) -> None:
        image = self.state.images.get(image_id)
        if image is not None:
            self.state.images[image_id] = replace(image, status=status)

    async def delete_image(self, image_id: str) -> None:
        self.state.images.pop(image_id, None)

    async def finish(
        self,
        operation_id: str,
        *,
        response: Image | None = None,
        error: OperationError | None = None,
        dead_lettered: bool = False,
    ) -> None:
        if (response is None) == (error is None):
            raise ValueError("an operation finishes with exactly one of response or error")
        if dead_lettered and error is None:
            raise ValueError("a dead-lettered operation finishes with an error")
        self.state.finish(operation_id, self.store.stamp(), response, error, dead_lettered)

    async def finish_deleted(self, operation_id: str) -> None:
        self.state.finish(operation_id, self.store.stamp(), None, None)


# --- the broker, the downloads, the database's ping -----------------------------------------


class FakePublisher:
    """Records what it published: ``messages``, and their operations in ``published``.
    ``healthy`` is what ``is_healthy`` says; with ``fail_after`` set, publishes beyond that
    many messages raise ``Unavailable``."""

    def __init__(self) -> None:
        self.messages: list[OutgoingMessage] = []
        self.published: list[str] = []
        self.healthy = True
        self.fail_after: int | None = None

    def go_down(self) -> None:
        self.healthy = False
        self.fail_after = len(self.messages)

    async def publish(self, message: OutgoingMessage, timeout: float) -> None:
        if self.fail_after is not None and len(self.messages) >= self.fail_after:
            raise Unavailable("broker unreachable")
        self.messages.append(message)
        self.published.extend(message.operation_ids)

    def is_healthy(self) -> bool:
        return self.healthy


class FakeQueue:
    """``MessageQueue``: answers ``depth``, or raises ``Unavailable`` while ``depth`` is
    ``None``."""

    def __init__(self, ready: int = 0, consumers: int = 0) -> None:
        self.depth: QueueDepth | None = QueueDepth(ready, consumers)

    async def queue_depth(self) -> QueueDepth:
        if self.depth is None:
            raise Unavailable("broker unreachable")
        return self.depth


class FakeDownloader:
    """Raises ``errors`` in order, one per call, then returns ``result``. With ``gate`` set,
    each download waits for it first; ``started`` is set when a download begins and
    ``cancelled`` once one was cancelled."""

    def __init__(
        self,
        result: Downloaded | None = None,
        errors: Sequence[ServiceError] = (),
        *,
        gate: asyncio.Event | None = None,
    ) -> None:
        self.result = result or Downloaded(md5="9e107d9d372bb6826bd81d3542a419d6", size=1024)
        self.errors = list(errors)
        self.gate = gate
        self.uris: list[str] = []
        self.started = asyncio.Event()
        self.cancelled = False

    async def download(self, uri: str) -> Downloaded:
        self.uris.append(uri)
        self.started.set()
        try:
            if self.gate is not None:
                await self.gate.wait()
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        if self.errors:
            raise self.errors.pop(0)
        return self.result


class FakeDatabase:
    """``Pingable``: answers, raises ``error``, or (``hang``) never answers."""

    def __init__(self, error: ServiceError | None = None, *, hang: bool = False) -> None:
        self.error = error
        self.hang = hang

    async def ping(self) -> None:
        if self.hang:
            await asyncio.Event().wait()
        if self.error is not None:
            raise self.error


class FakeClock:
    """A monotonic clock moved by hand."""

    def __init__(self) -> None:
        self.value = 1000.0

    def __call__(self) -> float:
        return self.value

    def advance(self, seconds: float) -> None:
        self.value += seconds


async def until(condition: Callable[[], bool], timeout: float = 2.0, what: str = "it") -> None:
    """Yield to the loop until ``condition`` holds; fail after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0)


if TYPE_CHECKING:
    # Each fake is the port it stands for (mypy checks this module): a signature that drifts
    # from its Protocol fails the type check, not a use case's test at run time.
    _store = FakeStore()
    _accepts: Accepts = _store
    _reads: Reads = _store
    _finishes: Finishes = _store
    _outbox: Outbox = _store
    _retention: Retention = _store
    _tokens: Tokens = _store
    _transaction: OperationTransaction = FakeTransaction(_store, State())
    _publisher: Publisher = FakePublisher()
    _queue: MessageQueue = FakeQueue()
    _downloader: Downloader = FakeDownloader()
    _database: Pingable = FakeDatabase()
