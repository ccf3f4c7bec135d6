"""The two measured steps of a scale phase: the stack's CPU per Update accepted (the worker
held back) and per operation applied (the worker let go); see ``bench.scale`` for the method.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from bench.load import Job, Result
from bench.stack import CpuSample, Process, cpu_between, run_phase, split, stack_sample
from service.adapters.rabbitmq import Broker
from service.runtime.settings import Settings

PROCESSES = 2  # load generator processes
CONCURRENCY = 16  # Updates in flight in each
POLL_SECONDS = 0.02
APPLY_TIMEOUT_SECONDS = 900.0
READY, UPDATING = 2, 5  # Image.Status numbers (migrations/0001)
CONSUMING = 64  # WORKER_CONCURRENCY: the worker's prefetch


@dataclass
class Tally:
    """CPU seconds by process over one or more measured windows, and the calls they served."""

    count: int = 0
    cpu: dict[str, float] = field(default_factory=dict)
    intervals: int = 0  # accepted Updates after the first one of each round...
    span: float = 0.0  # ...over the seconds from a round's first to its last
    wall: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)

    def add(self, count: int, cpu: dict[str, float]) -> None:
        self.count += count
        for role, seconds in cpu.items():
            self.cpu[role] = self.cpu.get(role, 0.0) + seconds

    def us(self) -> dict[str, int]:
        return {role: round(s / max(self.count, 1) * 1e6) for role, s in sorted(self.cpu.items())}

    def total_us(self) -> int:
        return round(sum(self.cpu.values()) / max(self.count, 1) * 1e6)


class Workers:
    """The worker process, held back while the API accepts (see ``bench.scale``)."""

    def __init__(self, env: dict[str, str], logs: Path, restart: bool) -> None:
        self._env = env
        self._logs = logs
        self.restart = restart
        self.process: Process | None = None
        self.running = False
        self._started = 0

    def start(self) -> None:
        if self.running:
            return
        if self.process is None:
            self._started += 1
            log = self._logs / f"worker-{self._started}.log"
            self.process = Process([sys.executable, "-m", "workers"], self._env, log)
            self.process.wait_for('"workers.started"')
        else:
            os.kill(self.process.proc.pid, signal.SIGCONT)
        self.running = True

    def stop(self) -> None:
        if not self.running or self.process is None:
            return
        if self.restart:
            self.process.stop()
            self.process = None
        else:
            os.kill(self.process.proc.pid, signal.SIGSTOP)
        self.running = False

    def check_alive(self) -> None:
        if self.process is not None and self.process.proc.poll() is not None:
            raise SystemExit(f"the worker exited:\n{self.process.log.read_text()[-2000:]}")

    def own(self) -> dict[str, Process]:
        return {} if self.process is None else {"worker": self.process}

    def close(self) -> None:
        if self.process is not None:
            if not self.running:
                os.kill(self.process.proc.pid, signal.SIGCONT)  # so that it sees SIGTERM
            self.process.stop()
            self.process = None


@dataclass
class Stack:
    """The stack under test and the benchmark's own database connection."""

    database: str
    url: str
    queue: str
    conn: asyncpg.Connection
    pool: ProcessPoolExecutor
    api: Process
    address: str
    token: str
    workers: Workers
    settings: Settings
    images: list[str] = field(default_factory=list)
    rate_guess: float = 250.0  # Updates accepted per second, to size a load job's length

    def sample(self, skip: frozenset[int]) -> CpuSample:
        return stack_sample({"api": self.api, **self.workers.own()}, self.database, skip)

    async def unfinished(self) -> int:
        """Every unfinished operation, from the folders' counts (one row per folder)."""
        return int(
            await self.conn.fetchval("SELECT coalesce(sum(unfinished), 0) FROM folder_unfinished")
        )

    async def unpublished(self) -> int:
        return int(
            await self.conn.fetchval(
                "SELECT count(*) FROM operations WHERE published_at IS NULL AND NOT done"
            )
        )

    async def accept(self, image_ids: list[str], tally: Tally) -> asyncio.Future[Result]:
        """Update each image once, the worker held back; counted until the last Update is
        accepted and published. The load processes go on idling to the end of their time:
        ``record_rate`` waits for them."""
        self.workers.stop()
        skip = frozenset({self.conn.get_server_pid()})
        base = await self.unfinished()
        seconds = 0.5 + 3.0 * len(image_ids) / self.rate_guess
        jobs = [
            Job("update", self.address, self.token, seconds, CONCURRENCY, image_ids=part)
            for part in split(image_ids, PROCESSES)
        ]
        started = time.perf_counter()
        before = self.sample(skip)
        task = asyncio.ensure_future(asyncio.to_thread(run_phase, self.pool, jobs))

        async def accepted() -> bool:
            return task.done() or await self.unfinished() >= base + len(image_ids)

        async def published() -> bool:  # the broker's confirms, then their marks
            return not await self.unpublished()

        await poll(accepted, APPLY_TIMEOUT_SECONDS)
        await poll(published, 10)
        after = self.sample(skip)
        tally.wall += time.perf_counter() - started
        tally.add(await self.unfinished() - base, cpu_between(before, after))
        return task

    async def record_rate(self, task: asyncio.Future[Result], tally: Tally) -> None:
        """The accept rate, from the database's clock at each acceptance, and the errors."""
        result = await task
        for code, n in result.error_codes.items():
            tally.errors[code] = tally.errors.get(code, 0) + n
        count, span = await self.conn.fetchrow(
            "SELECT count(*), extract(epoch FROM max(created_at) - min(created_at))::float8"
            " FROM operations WHERE id = ANY($1::text[])",
            result.operation_ids,
        )
        if count > 1 and span:
            tally.intervals += count - 1
            tally.span += span
            self.rate_guess = (count - 1) / span

    async def apply(self, tally: Tally) -> None:
        """Let the worker go until no operation is unfinished."""
        skip = frozenset({self.conn.get_server_pid()})
        operations = await self.unfinished()
        started = time.perf_counter()
        before = self.sample(skip)
        self.workers.start()
        deadline = time.monotonic() + APPLY_TIMEOUT_SECONDS
        while await self.unfinished():
            self.workers.check_alive()
            if time.monotonic() > deadline:
                raise SystemExit(f"operations unfinished after {APPLY_TIMEOUT_SECONDS:.0f} s")
            await asyncio.sleep(POLL_SECONDS)
        after = self.sample(skip)
        tally.wall += time.perf_counter() - started
        tally.add(operations, cpu_between(before, after))

    async def measure(self, images: list[str], updates: int) -> dict[str, Any]:
        """Accept then apply ``updates`` Updates, in rounds of at most ``len(images)``."""
        accept, apply = Tally(), Tally()
        rounds = math.ceil(updates / len(images))
        for n in range(rounds):
            left = updates - n * len(images)
            accepting = await self.accept(images[:left], accept)
            queued = await queue_depth(self.settings) if n == rounds - 1 else None
            await self.apply(apply)
            await self.record_rate(accepting, accept)
        checks = await self.conn.fetchrow(
            "SELECT (SELECT count(*) FROM images WHERE status <> $1) AS not_ready,"
            " (SELECT count(*) FROM operations WHERE error_code IS NOT NULL) AS failed",
            READY,
        )
        return {
            "accept": {
                "updates": accept.count,
                "rounds": rounds,
                "per_second": round(accept.intervals / accept.span, 1) if accept.span else None,
                "cpu_us": accept.us(),
                "cpu_us_total": accept.total_us(),
                "seconds": round(accept.wall, 2),
                "errors": accept.errors,
            },
            "queue_after_accept": queued,
            "apply": {
                "operations": apply.count,
                "cpu_us": apply.us(),
                "cpu_us_total": apply.total_us(),
                "seconds": round(apply.wall, 2),
            },
            "total_us": accept.total_us() + apply.total_us(),
            "images_not_ready_after": checks["not_ready"],
            "operations_failed": checks["failed"],
        }


async def poll(condition: Callable[[], Awaitable[bool]], timeout: float) -> bool:
    """Ask ``condition`` every ``POLL_SECONDS`` until it holds (True) or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(POLL_SECONDS)
    return True


@contextlib.asynccontextmanager
async def connected(settings: Settings) -> AsyncIterator[Broker]:
    """The service's broker connection, for the relay and for reading the queue's depth."""
    broker = Broker(settings.amqp_url, settings.amqp_queue, settings.amqp_delivery_limit)
    connecting = asyncio.create_task(broker.keep_connected())
    try:
        await broker.wait_connected(30)
        yield broker
    finally:
        connecting.cancel()
        await broker.close()


async def queue_depth(settings: Settings) -> dict[str, int]:
    """Messages ready in the queue (those a held-back worker holds are not), and consumers."""
    async with connected(settings) as broker:
        depth = await broker.queue_depth()
    return {"ready": depth.ready, "consumers": depth.consumers}
