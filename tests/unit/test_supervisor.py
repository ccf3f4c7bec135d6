"""Supervisor: named background tasks, restarted when they crash, all stopped at once."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from structlog.testing import capture_logs

from service.domain.errors import Unavailable
from service.runtime.supervisor import Supervisor
from tests.support import eventually


async def until(condition: Callable[[], object], what: str) -> None:
    async def check() -> bool:
        return bool(condition())

    await eventually(check, timeout=5, interval=0.001, what=what)


class Job:
    """A task body that raises the given errors on its first calls, then does ``then``."""

    def __init__(self, *errors: Exception, then: str = "wait") -> None:
        self.errors = list(errors)
        self.then = then
        self.calls = 0
        self.forever = asyncio.Event()

    async def __call__(self) -> None:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        if self.then == "wait":
            await self.forever.wait()


@pytest.fixture
async def supervisor():
    supervisor = Supervisor()
    yield supervisor
    await supervisor.stop()


def events(logs: list[dict[str, object]], name: str) -> list[dict[str, object]]:
    return [entry for entry in logs if entry["event"] == name]


def test_constructing_a_supervisor_starts_nothing_and_needs_no_loop():
    supervisor = Supervisor()
    assert supervisor.names == []
    assert not supervisor.is_running("anything")


async def test_a_crashed_task_is_logged_counted_and_runs_again(supervisor):
    job = Job(RuntimeError("injected"))
    with capture_logs() as logs:
        supervisor.start("outbox", job, restart_delay=0.01)
        await until(lambda: job.calls == 2, "the task to run again")
    assert supervisor.restarts("outbox") == 1
    assert supervisor.is_running("outbox")
    [crash] = events(logs, "task.crashed")
    assert crash["task"] == "outbox"
    assert crash["log_level"] == "error"
    assert crash["exc_info"] is True


async def test_a_task_that_keeps_crashing_keeps_being_restarted(supervisor):
    job = Job(*(RuntimeError("injected") for _ in range(3)))
    supervisor.start("listener", job, restart_delay=0.001)
    await until(lambda: job.calls == 4, "the fourth run")
    assert supervisor.restarts("listener") == 3


async def test_a_task_that_returns_is_finished_and_not_restarted(supervisor):
    job = Job(then="return")
    with capture_logs() as logs:
        supervisor.start("migrate", job, restart_delay=0.001)
        await until(lambda: not supervisor.is_running("migrate"), "the task to finish")
    assert job.calls == 1
    assert supervisor.restarts("migrate") == 0
    assert events(logs, "task.finished") == [
        {"event": "task.finished", "log_level": "info", "task": "migrate"}
    ]


async def test_a_service_error_in_a_periodic_step_is_logged_and_the_loop_goes_on(supervisor):
    step = Job(Unavailable("database is down"), then="return")
    with capture_logs() as logs:
        supervisor.every("cleanup", 0.001, step, restart_delay=0.001)
        await until(lambda: step.calls >= 3, "two more steps")
    assert supervisor.restarts("cleanup") == 0
    assert events(logs, "task.crashed") == []
    assert events(logs, "task.step_failed") == [
        {
            "event": "task.step_failed",
            "log_level": "warning",
            "task": "cleanup",
            "error": "database is down",
        }
    ]


async def test_a_crash_in_a_periodic_step_restarts_the_loop(supervisor):
    step = Job(RuntimeError("injected"), then="return")
    with capture_logs() as logs:
        supervisor.every("cleanup", 0.001, step, restart_delay=0.001)
        await until(lambda: step.calls >= 3, "steps after the restart")
    assert supervisor.restarts("cleanup") == 1
    assert supervisor.is_running("cleanup")
    assert len(events(logs, "task.crashed")) == 1


async def test_stop_cancels_every_task_and_nothing_restarts_after_it():
    supervisor = Supervisor()
    waiting = Job()
    crashing = Job(*(RuntimeError("injected") for _ in range(1000)))
    step = Job(then="return")
    supervisor.start("waiting", waiting)
    supervisor.start("crashing", crashing, restart_delay=0.001)
    supervisor.every("periodic", 0.001, step)
    await until(lambda: waiting.calls and crashing.calls >= 2 and step.calls >= 2, "all to run")

    await supervisor.stop()

    assert supervisor.names == ["waiting", "crashing", "periodic"]
    # Their supervising tasks are done: nothing is left that could call a body again.
    assert not any(supervisor.is_running(name) for name in supervisor.names)
    with pytest.raises(RuntimeError, match="stopped"):
        supervisor.start("late", Job())


async def test_a_task_that_turns_cancellation_into_an_error_is_not_restarted_by_stop():
    calls = 0

    async def stubborn() -> None:
        nonlocal calls
        calls += 1
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            raise RuntimeError("cleanup failed") from None

    supervisor = Supervisor()
    supervisor.start("stubborn", stubborn, restart_delay=0.001)
    await until(lambda: calls == 1, "the task to start")
    await supervisor.stop()
    assert calls == 1
    assert supervisor.restarts("stubborn") == 0
    assert not supervisor.is_running("stubborn")


async def test_a_running_name_cannot_be_started_twice(supervisor):
    supervisor.start("outbox", Job())
    with pytest.raises(ValueError, match="already running"):
        supervisor.start("outbox", Job())
