"""Marks published operations in batches, off the request path.

After the broker confirms a publish, the operation's outbox row must say so, or the relay
would send it again. One UPDATE per request would double the database work of an Update; a
batch every few milliseconds costs one statement for many. A mark lost in a crash only means
the relay sends that operation once more, and a repeated message is harmless (the workers
apply each operation once).
"""

from __future__ import annotations

import asyncio
import contextlib

import structlog

from service.adapters.store import Store
from service.domain.errors import ServiceError

log = structlog.get_logger(__name__)


class PublishedMarks:
    def __init__(self, store: Store, interval: float = 0.01, batch: int = 1000) -> None:
        self._store = store
        self._interval = interval
        self._batch = batch
        self._pending: list[str] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="published-marks")

    def add(self, operation_id: str) -> None:
        self._pending.append(operation_id)
        self._wakeup.set()

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            await asyncio.sleep(self._interval)  # gather what arrives meanwhile
            await self.flush()

    async def flush(self) -> None:
        self._wakeup.clear()
        while self._pending:
            batch, self._pending = self._pending[: self._batch], self._pending[self._batch :]
            try:
                await self._store.mark_published(batch)
            except ServiceError as exc:
                # Left unmarked: the relay publishes them again, which is harmless.
                log.warning("outbox.mark_failed", error=exc.message, count=len(batch))

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.flush()
