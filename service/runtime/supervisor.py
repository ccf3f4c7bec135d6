"""Every long-running background task runs under one supervisor.

A bare ``asyncio.create_task`` whose exception nobody reads dies silently: the loop it ran
(an outbox publisher, a listener, a cleanup timer) just stops, and the process looks healthy.
Under the supervisor each task has a name, a crash is logged with its traceback, counted and
followed by a restart after a delay, and ``stop()`` ends them all in one place at shutdown.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog

from service.domain.errors import ServiceError

log = structlog.get_logger(__name__)

# After a crash the delay before the restart doubles, up to this cap ...
MAX_RESTART_DELAY = 30.0
# ... and falls back to the task's restart_delay once a run has lasted this long.
HEALTHY_RUN = 60.0


class Supervisor:
    """Runs named background tasks, restarts them when they crash, stops them all at once.

    Nothing runs until ``start`` or ``every`` is called, from inside a running event loop.
    """

    def __init__(self) -> None:
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._restarts: dict[str, int] = {}
        self._stopped = False

    def start(
        self, name: str, run: Callable[[], Awaitable[None]], *, restart_delay: float = 1.0
    ) -> None:
        """Run ``run()`` as the task ``name``; restart it whenever it raises.

        Any exception but ``asyncio.CancelledError`` is a crash: logged as ``task.crashed``
        with its traceback and counted, then ``run()`` is called again after a delay that
        starts at ``restart_delay``, doubles after each crash up to ``MAX_RESTART_DELAY``, and
        is back to ``restart_delay`` when the crashed run had lasted ``HEALTHY_RUN`` seconds.
        A ``run()`` that returns is finished and not restarted.
        """
        if self._stopped:
            raise RuntimeError(f"cannot start {name!r}: the supervisor is stopped")
        if self.is_running(name):
            raise ValueError(f"a task named {name!r} is already running")
        self._restarts.setdefault(name, 0)
        self._tasks[name] = asyncio.create_task(
            self._supervise(name, run, restart_delay), name=name
        )

    def every(
        self,
        name: str,
        interval: float,
        step: Callable[[], Awaitable[None]],
        *,
        restart_delay: float = 1.0,
    ) -> None:
        """Run ``step()`` forever as the task ``name``, waiting ``interval`` seconds after each.

        A step raising a ``ServiceError`` (expected: a dependency is unavailable) is logged as
        the warning ``task.step_failed`` and the loop goes on; any other exception is a crash,
        handled as in ``start``.
        """

        async def run_steps() -> None:
            while True:
                try:
                    await step()
                except ServiceError as exc:
                    log.warning("task.step_failed", task=name, error=exc.message)
                await asyncio.sleep(interval)

        self.start(name, run_steps, restart_delay=restart_delay)

    def restarts(self, name: str) -> int:
        """How many times the task ``name`` crashed and was (or is about to be) restarted."""
        return self._restarts.get(name, 0)

    def is_running(self, name: str) -> bool:
        """Whether the task ``name`` is running (or waiting to restart after a crash)."""
        task = self._tasks.get(name)
        return task is not None and not task.done()

    @property
    def names(self) -> list[str]:
        """The names of the tasks started so far, in order."""
        return list(self._tasks)

    async def stop(self, timeout: float = 10.0) -> None:
        """Cancel every task and wait up to ``timeout`` seconds for them; none restarts after.

        The cancellations are absorbed here; a task still running after ``timeout`` (it
        ignored the cancellation) is logged as ``task.stop_timed_out`` and left behind.
        """
        self._stopped = True
        tasks = [task for task in self._tasks.values() if not task.done()]
        for task in tasks:
            task.cancel()
        if not tasks:
            return
        # asyncio.wait neither raises the tasks' CancelledError nor cancels them on timeout.
        _, pending = await asyncio.wait(tasks, timeout=timeout)
        for task in pending:
            log.error("task.stop_timed_out", task=task.get_name(), timeout=timeout)

    async def _supervise(
        self, name: str, run: Callable[[], Awaitable[None]], restart_delay: float
    ) -> None:
        loop = asyncio.get_running_loop()
        delay = restart_delay
        while True:
            started = loop.time()
            try:
                await run()
            except Exception:
                # Broad on purpose: this is where an unexpected error is read and logged.
                log.exception("task.crashed", task=name)
                if self._stopped:
                    # The run turned our cancellation into another error; do not restart it.
                    return
                self._restarts[name] += 1
                if loop.time() - started >= HEALTHY_RUN:
                    delay = restart_delay
                await asyncio.sleep(min(delay, MAX_RESTART_DELAY))
                delay = min(delay * 2, MAX_RESTART_DELAY)
            else:
                log.info("task.finished", task=name)
                return
