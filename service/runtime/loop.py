"""The event loop a process runs on: uvloop by default (faster I/O), or plain asyncio."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any


def run_loop(main: Coroutine[Any, Any, None], event_loop: str) -> None:
    """Run the process's main coroutine on the configured event loop."""
    if event_loop == "uvloop":
        import uvloop

        uvloop.run(main)
    else:
        asyncio.run(main)
