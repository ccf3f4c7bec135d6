"""``unless_stopped``: a start-up step raced against the process's stop event."""

from __future__ import annotations

import asyncio

import pytest

from service.runtime.startup import unless_stopped


async def test_a_step_that_finishes_gives_its_result():
    assert await unless_stopped(asyncio.Event(), asyncio.sleep(0, "ready")) == "ready"


async def test_without_a_stop_event_the_step_is_simply_awaited():
    assert await unless_stopped(None, asyncio.sleep(0, "ready")) == "ready"


async def test_a_stop_during_the_step_cancels_it_and_gives_none():
    stop, cancelled = asyncio.Event(), asyncio.Event()

    async def forever() -> str:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "never"

    racing = asyncio.create_task(unless_stopped(stop, forever()))
    await asyncio.sleep(0)
    stop.set()
    assert await asyncio.wait_for(racing, 1) is None
    assert cancelled.is_set(), "cancelled, and awaited until it let go"


async def test_a_stop_set_before_the_start_gives_none_at_once():
    stop = asyncio.Event()
    stop.set()
    assert await asyncio.wait_for(unless_stopped(stop, asyncio.Event().wait()), 1) is None


async def test_the_steps_error_propagates():
    async def failing() -> None:
        raise ValueError("no schema")

    with pytest.raises(ValueError, match="no schema"):
        await unless_stopped(asyncio.Event(), failing())
