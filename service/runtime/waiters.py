"""Server-side waiting for operations: each waiter sleeps on a future, woken by an event."""

from __future__ import annotations

import asyncio
from collections import defaultdict


class OperationWaiters:
    """Futures of callers waiting for operations, resolved when one is reported done.

    A waiter costs one future; nothing polls the database per waiter.
    """

    def __init__(self) -> None:
        self._waiting: defaultdict[str, set[asyncio.Future[None]]] = defaultdict(set)

    def register(self, operation_id: str) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting[operation_id].add(future)
        return future

    def unregister(self, operation_id: str, future: asyncio.Future[None]) -> None:
        futures = self._waiting.get(operation_id)
        if futures is not None:
            futures.discard(future)
            if not futures:
                del self._waiting[operation_id]

    def done(self, operation_id: str) -> None:
        for future in self._waiting.pop(operation_id, ()):
            if not future.done():
                future.set_result(None)

    def wake_all(self) -> None:
        """Every waiter looks again (after events may have been missed)."""
        for operation_id in list(self._waiting):
            self.done(operation_id)
