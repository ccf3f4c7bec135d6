"""Every background task of the API and the workers comes back after an unexpected exception.

Each task's function is made to raise once, in the real processes' code run in this test's
event loop against the real PostgreSQL and RabbitMQ; the supervisor must log the crash and
run the function again.
"""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from service.adapters.postgres.listener import DoneListener
from service.adapters.rabbitmq import Broker
from service.entrypoints import api, worker
from service.runtime.settings import Settings
from service.usecases.outbox import PublishedMarks
from tests.conftest import AMQP_URL
from tests.integration.conftest import own_database_fixtures
from tests.support import eventually

# A database of this module's own, not the run's shared one (see conftest.own_database).
# The workers' relay, sweeper and retention run here over every operation of the
# database: on the shared one they would take the end-to-end tests' operations.
own, database_url, db = own_database_fixtures("supervised")


def crash_once(
    monkeypatch: pytest.MonkeyPatch, calls: Counter[str], name: str, owner: Any, attribute: str
) -> None:
    """Make ``owner.attribute`` raise on its first call, then behave as before."""
    original = getattr(owner, attribute)

    async def wrapped(*args: Any, **kwargs: Any) -> Any:
        calls[name] += 1
        if calls[name] == 1:
            raise RuntimeError(f"injected into {name}")
        return await original(*args, **kwargs)

    monkeypatch.setattr(owner, attribute, wrapped)


@pytest.fixture
def settings(database_url: str, queue_names: Callable[[str], str], tmp_path: Path) -> Settings:
    return Settings(
        database_url=database_url,
        amqp_url=AMQP_URL,
        amqp_queue=queue_names("-supervised"),
        grpc_listen="127.0.0.1:0",
        health_interval_seconds=0.05,
        outbox_interval_seconds=0.05,
        sweep_interval_seconds=0.05,
        retention_interval_seconds=0.05,
        worker_health_file=str(tmp_path / "healthy"),
    )


@pytest.fixture
async def stop() -> AsyncIterator[asyncio.Event]:
    event = asyncio.Event()
    yield event
    event.set()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):  # installed by serve(); ours to remove
        loop.remove_signal_handler(signum)


async def run_until_every_task_came_back(
    serve: Any,
    settings: Settings,
    stop: asyncio.Event,
    calls: Counter[str],
    names: list[str],
    then: Callable[[], Awaitable[bool]] | None = None,
) -> None:
    running = asyncio.create_task(serve(settings, stop))

    async def all_came_back() -> bool:
        if running.done():
            running.result()  # a start-up failure, raised here
        return all(calls[name] >= 2 for name in names)

    try:
        await eventually(all_came_back, timeout=30, what=f"{names} to run again after a crash")
        if then is not None:
            await eventually(then, timeout=30, what="the restarted task to do its work")
    finally:
        stop.set()
        await asyncio.wait_for(running, 30)


async def test_every_api_task_runs_again_after_a_crash(monkeypatch, settings, stop):
    calls: Counter[str] = Counter()
    crash_once(monkeypatch, calls, "broker-connect", Broker, "connect")
    crash_once(monkeypatch, calls, "published-marks", PublishedMarks, "run")
    crash_once(monkeypatch, calls, "done-listener", DoneListener, "run")
    crash_once(monkeypatch, calls, "health", api, "dependencies_ok")
    await run_until_every_task_came_back(
        api.serve,
        settings,
        stop,
        calls,
        ["broker-connect", "published-marks", "done-listener", "health"],
    )


async def test_every_worker_task_runs_again_after_a_crash(monkeypatch, settings, stop):
    calls: Counter[str] = Counter()
    crash_once(monkeypatch, calls, "broker-connect", Broker, "connect")
    crash_once(monkeypatch, calls, "outbox", worker.WorkerPool, "relay_outbox")
    crash_once(monkeypatch, calls, "sweeper", worker.WorkerPool, "sweep")
    crash_once(monkeypatch, calls, "retention", worker.WorkerPool, "purge_expired")
    crash_once(monkeypatch, calls, "health", worker.WorkerPool, "report_health")
    await run_until_every_task_came_back(
        worker.serve,
        settings,
        stop,
        calls,
        ["broker-connect", "outbox", "sweeper", "retention", "health"],
        # The restarted health loop works: it writes the health file (a ping slower than the
        # short interval under load may count as unhealthy once; the next one writes it).
        then=lambda: asyncio.to_thread(Path(settings.worker_health_file).exists),
    )
