"""Start-up that a stop request interrupts.

A process waits at start-up for its database and broker (up to ``STARTUP_TIMEOUT_SECONDS``).
SIGTERM sets the process's stop event from the first moment; each wait of the start-up is
raced against that event, so a process asked to stop while it is still starting stops at once
(and exits 0) instead of finishing a start-up nobody wants any more.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


async def unless_stopped(stop: asyncio.Event | None, step: Awaitable[T]) -> T | None:
    """``step``'s result, or ``None`` once ``stop`` is set before it finished (``step`` is
    then cancelled, and awaited so that it has let go of what it held).

    ``step``'s exception propagates; a step that finished wins over a stop set in the same
    turn (the caller sees ``stop`` set and shuts down what the step started).
    """
    if stop is None:
        return await step
    task = asyncio.ensure_future(step)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    if task.cancelled():
        return None
    return task.result()
