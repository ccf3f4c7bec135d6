"""The scale phases in order (see ``bench.scale``): the state each adds, the repeats each is
measured in, and the stack they run on.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import random
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import asyncpg

from bench import scale_state
from bench.scale_measure import CONSUMING, PROCESSES, Stack, Tally, Workers
from bench.stack import AMQP_URL, Process
from service.runtime import logs as service_logs
from service.runtime.settings import Settings

# Each phase is measured this many times (N/REPEATS Updates each) and its median kept: the
# machine may be shared, and a burst of someone else's work lands in one of them.
REPEATS = 3


@dataclass(frozen=True)
class Sizes:
    """The state each phase adds, and the Updates each measures."""

    first_images: int = 100
    images: int = 100_000
    folders: int = 10
    queued: int = 10_000
    finished: int = 1_000_000
    updates: int = 3000


FULL = Sizes()
SMOKE = Sizes(images=1000, queued=200, finished=20_000, updates=300)


Pick = Callable[[], Awaitable[tuple[list[str], dict[str, float]]]]


async def run_phases(stack: Stack, sizes: Sizes) -> list[dict[str, Any]]:
    """The four phases, each on top of the state of the one before, after a warm-up; each
    phase's figures with its ratio to the first's."""
    share = math.ceil(sizes.updates / REPEATS)
    phases: list[dict[str, Any]] = []

    async def phase(name: str, setup: dict[str, float], pick: Pick) -> None:
        """``REPEATS`` measurements of ``share`` Updates each, of the images ``pick`` gives
        (after preparing what each repeat needs); the one with the median total stands for
        the phase."""
        repeats = []
        for _ in range(REPEATS):
            images, prepared = await pick()
            prepared |= await scale_state.settle(stack)
            repeats.append({"setup_seconds": prepared} | await stack.measure(images, share))
        median = sorted(repeats, key=lambda r: r["total_us"])[REPEATS // 2]
        phases.append(
            median
            | {
                "phase": name,
                "setup_seconds": setup | repeats[0]["setup_seconds"],
                "total_us_repeats": [r["total_us"] for r in repeats],
                "repeats": repeats,
            }
        )

    async def anywhere() -> tuple[list[str], dict[str, float]]:
        return random.sample(stack.images, share), {}

    started = time.perf_counter()
    first = await scale_state.insert_images(stack, sizes.first_images, 1)
    setup = {"insert": round(time.perf_counter() - started, 2)}
    stack.workers.start()
    warm_up = Tally()  # not counted
    accepting = await stack.accept(first, warm_up)
    await stack.apply(Tally())
    await stack.record_rate(accepting, warm_up)

    async def first_folder() -> tuple[list[str], dict[str, float]]:
        return first, {}

    await phase(f"{sizes.first_images:,} images", setup, first_folder)

    started = time.perf_counter()
    await scale_state.insert_images(stack, sizes.images - sizes.first_images, sizes.folders)
    setup = {"insert": round(time.perf_counter() - started, 2)}
    await phase(f"{sizes.images:,} images", setup, anywhere)

    async def behind_backlog() -> tuple[list[str], dict[str, float]]:
        backlog = random.sample(stack.images, sizes.queued)
        stack.workers.stop()  # the relay's messages wait for the accept step
        prepared = await scale_state.queue_backlog(stack, backlog)
        waiting = set(backlog)
        return random.sample([i for i in stack.images if i not in waiting], share), prepared

    await phase(f"{sizes.queued:,} queued", {}, behind_backlog)

    setup = await scale_state.insert_finished(stack, sizes.finished)
    await phase(f"{sizes.finished:,} finished", setup, anywhere)

    base = phases[0]["total_us"]
    for figures in phases:
        figures["ratio_to_first"] = round(figures["total_us"] / base, 2)
    return phases


async def measure_phases(
    sizes: Sizes, names: tuple[str, str, str], api: Process, token: str, workers: Workers
) -> list[dict[str, Any]]:
    """The phases on the stack whose API ``api`` is starting: the benchmark's own database
    connection, the service's settings for the relay, and the load processes' pool."""
    database, url, queue = names
    port = json.loads(api.wait_for('"api.started"'))["port"]
    service_logs.configure("WARNING", component="bench")  # the relay's and the broker's logs
    settings = Settings(
        database_url=url, amqp_url=AMQP_URL, amqp_queue=queue, worker_concurrency=CONSUMING
    )
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("SET synchronous_commit = off")  # this session's setup only
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(PROCESSES, mp_context=context) as pool:
            stack = Stack(
                database,
                url,
                queue,
                conn,
                pool,
                api,
                f"127.0.0.1:{port}",
                token,
                workers,
                settings,
            )
            return await run_phases(stack, sizes)
    finally:
        await conn.close()
