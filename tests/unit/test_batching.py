"""MicroBatcher: calls that arrive while a batch is in flight go together in the next one."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from service.runtime.batching import MicroBatcher
from tests.support import eventually


class Recorder:
    """A batch runner that records its batches and holds each until released."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.batches: list[list[int]] = []
        self.release = asyncio.Event()
        self.running = 0
        self.most_running = 0
        self._fail_on = fail_on

    async def run(self, items: Sequence[int]) -> list[int]:
        self.batches.append(list(items))
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            await self.release.wait()
        finally:
            self.running -= 1
        if self._fail_on is not None and self._fail_on in items:
            raise ValueError(f"batch with {self._fail_on} failed")
        return [item * 10 for item in items]


async def until(condition, what: str) -> None:
    async def check() -> bool:
        return bool(condition())

    await eventually(check, timeout=5, interval=0.001, what=what)


async def test_calls_that_arrive_during_a_batch_go_together_in_the_next():
    recorder = Recorder()
    batcher = MicroBatcher(recorder.run, max_in_flight=1)
    first = asyncio.create_task(batcher.submit(1))
    await until(lambda: recorder.batches, "the first batch to start")
    rest = [asyncio.create_task(batcher.submit(n)) for n in range(2, 7)]
    await asyncio.sleep(0)
    recorder.release.set()
    assert await first == 10
    assert [await task for task in rest] == [20, 30, 40, 50, 60]
    assert recorder.batches == [[1], [2, 3, 4, 5, 6]]


async def test_a_lone_call_waits_for_nobody():
    recorder = Recorder()
    recorder.release.set()
    batcher = MicroBatcher(recorder.run)
    assert await batcher.submit(7) == 70
    assert recorder.batches == [[7]]


async def test_batches_are_at_most_max_batch_long_and_at_most_max_in_flight_run_at_once():
    recorder = Recorder()
    batcher = MicroBatcher(recorder.run, max_batch=3, max_in_flight=2)
    tasks = [asyncio.create_task(batcher.submit(n)) for n in range(10)]
    await until(lambda: len(recorder.batches) == 2, "two batches to start")
    await asyncio.sleep(0)
    assert len(recorder.batches) == 2, "a third batch started while two were running"
    recorder.release.set()
    assert [await task for task in tasks] == [n * 10 for n in range(10)]
    assert [len(batch) for batch in recorder.batches] == [3, 3, 3, 1]
    assert recorder.most_running == 2


async def test_a_failed_batch_fails_its_callers_only():
    recorder = Recorder(fail_on=1)
    batcher = MicroBatcher(recorder.run, max_in_flight=1)
    first = asyncio.create_task(batcher.submit(1))
    await until(lambda: recorder.batches, "the first batch to start")
    second = asyncio.create_task(batcher.submit(2))
    await asyncio.sleep(0)
    recorder.release.set()
    with pytest.raises(ValueError, match="batch with 1 failed"):
        await first
    assert await second == 20


async def test_a_caller_cancelled_before_its_batch_starts_is_left_out():
    recorder = Recorder()
    batcher = MicroBatcher(recorder.run, max_in_flight=1)
    first = asyncio.create_task(batcher.submit(1))
    await until(lambda: recorder.batches, "the first batch to start")
    gone = asyncio.create_task(batcher.submit(2))
    kept = asyncio.create_task(batcher.submit(3))
    await asyncio.sleep(0)
    gone.cancel()
    recorder.release.set()
    assert await first == 10
    assert await kept == 30
    assert gone.cancelled()
    assert recorder.batches == [[1], [3]]
