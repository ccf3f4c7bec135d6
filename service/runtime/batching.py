"""Micro-batching: many concurrent calls, one round trip to the database.

Calls submitted while earlier batches are in flight wait and go together in the next batch, so
under load one statement (and one commit) serves many calls, while a lone call goes at once and
waits for nobody. This is group commit for accepts and one ``= ANY`` read for many polls.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from service.runtime import metrics

Item = TypeVar("Item")
Result = TypeVar("Result")


class MicroBatcher(Generic[Item, Result]):
    """Runs ``run(items)`` for batches of submitted items, ``max_in_flight`` batches at a time.

    ``run`` answers one result per item, in order. If it raises, every caller of that batch
    gets the exception. A caller cancelled before its batch starts is left out of it. A
    ``name`` has each batch's size recorded in the metric ``image_service_batch_size``.
    """

    def __init__(
        self,
        run: Callable[[Sequence[Item]], Awaitable[Sequence[Result]]],
        *,
        max_batch: int = 256,
        max_in_flight: int = 2,
        name: str | None = None,
    ) -> None:
        self._run = run
        self._record_size = None if name is None else metrics.batch_size(name)
        self._max_batch = max_batch
        self._max_in_flight = max_in_flight
        self._waiting: list[tuple[Item, asyncio.Future[Result]]] = []
        self._in_flight = 0
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, item: Item) -> Result:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Result] = loop.create_future()
        self._waiting.append((item, future))
        if not self._scheduled:
            # Start on the next turn of the loop, with whatever else arrived in this one.
            self._scheduled = True
            loop.call_soon(self._start)
        return await future

    def _start(self) -> None:
        self._scheduled = False
        while self._waiting and self._in_flight < self._max_in_flight:
            batch = [entry for entry in self._waiting[: self._max_batch] if not entry[1].done()]
            del self._waiting[: self._max_batch]
            if not batch:
                continue
            self._in_flight += 1
            if self._record_size is not None:
                self._record_size(len(batch))
            task = asyncio.create_task(self._run_batch(batch), name="micro-batch")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run_batch(self, batch: list[tuple[Item, asyncio.Future[Result]]]) -> None:
        try:
            results = await self._run([item for item, _ in batch])
        except asyncio.CancelledError:
            for _, future in batch:
                future.cancel()
            raise
        except Exception as exc:  # every caller of the batch learns what happened
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
        else:
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)
        finally:
            self._in_flight -= 1
            if self._waiting:
                self._start()
