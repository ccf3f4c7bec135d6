"""Operation use cases: get (from memory once finished), wait until done, cancel.

A finished operation never changes, so it is kept in memory and, with it, its encoded form,
made once, for the entry point that sends it as it is (``OperationService.Get`` of a finished
operation costs a dictionary lookup and no encoding). What "encoded" is belongs to the entry
point: the use case is generic over it (``Encoded``) and only calls the ``encode`` the
composition root hands it, never looking inside. The encoded form is kept in the same entry
as the operation, not in a cache of the entry point's keyed by operation ID, because it lives
and dies with that entry: made when a reader that sends it first asks (most operations the
database's notifications bring are never read by the process they reach), dropped when the
entry is evicted or passes the retention period. A second cache would need those rules again
(or a check that it holds the same operation) and a second lookup on every poll.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from datetime import timedelta
from typing import Generic, TypeVar

import structlog

from service.domain.auth import Principal
from service.domain.errors import Code, NotFound, Unavailable
from service.domain.model import Operation, OperationError, utcnow
from service.domain.validation import validate_operation_id
from service.runtime import metrics
from service.runtime.batching import MicroBatcher
from service.runtime.lru import Lru
from service.runtime.waiters import OperationWaiters
from service.usecases.ports import Finishes, Reads
from service.usecases.undo import end_with_error

log = structlog.get_logger(__name__)

# A waiter whose re-read found the database unavailable tries again after this long.
REREAD_PAUSE_SECONDS = 0.5

# An operation as an entry point sends it; opaque here.
Encoded = TypeVar("Encoded")


class FinishedOperations(Generic[Encoded]):
    """Finished operations never change, so they are kept in memory (least recent out), each
    with its encoded form, made once, for the entry point that sends it.

    One finished longer ago than the retention period is gone from the database, so it is
    forgotten here too: every API process answers NOT_FOUND for it alike.
    """

    def __init__(
        self, capacity: int, encode: Callable[[Operation], Encoded], retention_seconds: float
    ) -> None:
        self._retention = timedelta(seconds=min(retention_seconds, 1e9))
        self._encode = encode
        self._items: Lru[str, tuple[Operation, Encoded | None]] = Lru(capacity)

    def get(self, operation_id: str) -> tuple[Operation, Encoded | None] | None:
        """The operation, with its encoded form if a reader asked for it before."""
        entry = self._items.get(operation_id)
        if entry is None:
            metrics.CACHE_MISS.inc()
            return None
        if utcnow() - entry[0].modified_at > self._retention:
            self._items.pop(operation_id)
            metrics.CACHE_MISS.inc()
            return None
        metrics.CACHE_HIT.inc()
        return entry

    def put(self, operation: Operation) -> None:
        """Keep a finished operation, not yet encoded: most operations the database's
        notifications bring are never read by the process they reach. An unfinished one may
        change, and is not kept; one kept already (a poll read it before its notification
        arrived) is the same operation, and keeps the encoded form it may have."""
        if operation.done and self._items.get(operation.id) is None:
            self._items.put(operation.id, (operation, None))

    def encoded(self, operation: Operation) -> Encoded:
        """The operation's encoded form; a finished one's is kept with it, for every later
        reader."""
        encoded = self._encode(operation)
        if operation.done:
            self._items.put(operation.id, (operation, encoded))
        return encoded


def _operation_not_found(operation_id: str) -> NotFound:
    return NotFound(f"Operation {operation_id} not found")


class Operations(Generic[Encoded]):
    """What the API does with operations; servicers only convert protobuf around it.

    ``encode`` is the entry point's form of an operation on the wire: a finished one is
    encoded once and answered in that form ever after.
    """

    def __init__(
        self,
        reads: Reads,
        store: Finishes,
        waiters: OperationWaiters,
        *,
        encode: Callable[[Operation], Encoded],
        cache_size: int,
        retention_seconds: float = float("inf"),
    ) -> None:
        self._store = store
        self._waiters = waiters
        self._finished = FinishedOperations(cache_size, encode, retention_seconds)
        # Polls of unfinished operations arriving together are read together.
        self._reads = MicroBatcher(
            reads.get_operations, max_batch=512, max_in_flight=2, name="read_operations"
        )

    async def get_operation(self, operation_id: str, caller: Principal) -> Operation:
        return (await self._read(operation_id, caller))[0]

    async def get_operation_encoded(
        self, operation_id: str, caller: Principal
    ) -> tuple[Operation, Encoded]:
        """The operation and its encoded form (made once, when it is finished)."""
        operation, encoded = await self._read(operation_id, caller)
        return operation, self._finished.encoded(operation) if encoded is None else encoded

    async def _read(self, operation_id: str, caller: Principal) -> tuple[Operation, Encoded | None]:
        """From memory once finished, else from the database; the encoded form if kept."""
        validate_operation_id(operation_id)
        entry: tuple[Operation, Encoded | None] | None = self._finished.get(operation_id)
        if entry is None:
            operation = await self._reads.submit(operation_id)
            if operation is None:
                raise _operation_not_found(operation_id)
            self._finished.put(operation)
            entry = (operation, None)
        if not caller.sees(entry[0].folder_id):
            raise _operation_not_found(operation_id)
        return entry

    def operation_finished(self, operation_id: str, operation: Operation | None) -> None:
        """An operation finished (told by the database): kept, if known whole, and its
        waiters woken; they read it from memory then."""
        if operation is not None:
            self._finished.put(operation)
        self._waiters.done(operation_id)

    async def wait_operation(
        self, operation_id: str, timeout: float, caller: Principal
    ) -> Operation:
        """The operation once it is done, or as it stands after ``timeout`` seconds.

        The caller's future is woken by the database's notification that the operation
        finished; each wake-up costs one read at most.
        """
        loop = asyncio.get_running_loop()
        give_up = loop.time() + timeout
        first = True
        while True:
            future = self._waiters.register(operation_id)
            try:
                # Read after registering: a finish between the read and the wait is not missed.
                try:
                    operation = await self.get_operation(operation_id, caller)
                except Unavailable:
                    # A re-read after a wake-up (the listener reconnected: the database may be
                    # failing over) is tried again while the caller's time lasts; the first
                    # read's failure is the caller's to retry.
                    if first or give_up - loop.time() <= REREAD_PAUSE_SECONDS:
                        raise
                    await asyncio.sleep(REREAD_PAUSE_SECONDS)
                    continue
                first = False
                remaining = give_up - loop.time()
                if operation.done or remaining <= 0:
                    return operation
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(future, remaining)
            finally:
                self._waiters.unregister(operation_id, future)

    async def cancel_operation(self, operation_id: str, caller: Principal) -> Operation:
        """Finish an unfinished operation with ``CANCELLED`` and undo what it started.

        A finished operation is returned unchanged. A worker in the middle of an Update holds
        the operation row, so the cancel waits and then finds it done. A running Create's
        worker sees its claim gone and stops downloading.
        """
        caller.require_editor()
        validate_operation_id(operation_id)
        async with self._store.transaction() as tx:
            claimed = await tx.lock_operation(operation_id)
            if claimed is not None and caller.sees(claimed.folder_id):
                image = await tx.lock_image(claimed.image_id)
                cancelled = OperationError(Code.CANCELLED, "Operation cancelled")
                await end_with_error(tx, claimed, image, cancelled, cancelled=True)
        operation = await self._reads.submit(operation_id)
        if operation is None or not caller.sees(operation.folder_id):
            raise _operation_not_found(operation_id)
        log.info("operation.cancel_requested", operation_id=operation_id, done=operation.done)
        self._finished.put(operation)
        return operation
