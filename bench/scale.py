"""``python -m bench.scale``: does an Update cost more when the database and the broker hold more?

One stack (a fresh database and queue on the local PostgreSQL and RabbitMQ, the API and one
worker process) goes through four phases. Each sets its state up on top of the one before,
with SQL in the service's own schema (never through the API):

1. ``100 images``: one folder of 100 READY images;
2. ``100,000 images``: 99,900 more, over 10 folders;
3. ``10,000 queued``: 10,000 unfinished Updates waiting in the queue: rows inserted as an API
   that stopped before publishing them leaves them, then sent by the service's outbox relay;
4. ``1,000,000 finished``: a million finished operations over the folders and images.

Each phase measures two steps, by the CPU time of the processes of the stack (the API, the
worker, this database's PostgreSQL processes, RabbitMQ):

- *accept*: the worker held back, N Updates of READY images by two load processes with 16
  in flight each; CPU per accepted Update, and the accept rate (from the operations' own
  timestamps). In phase 3 the 10,000 wait in the queue meanwhile.
- *apply*: the worker let go until every unfinished operation is finished (in phase 3 the
  10,000 too); CPU per operation applied. The API's share (the finished operations it is
  told of) is counted here as well.

Each phase is measured three times, N/3 Updates each (phase 3 queues its 10,000 again each
time), and the repeat with the median total stands for it: the machine may be shared.

The worker is held back with SIGSTOP and let go with SIGCONT: one process throughout, so no
step pays for a worker's start. Phase 1 has 100 images, so it takes its N Updates in rounds
of 100, each applied before the next. ``--restart-worker`` terminates the worker instead and
starts a new one for each apply, whose start is then counted in it.

Before each phase is measured, the database is vacuumed and analyzed and a checkpoint taken,
so no step pays for the setup's writes (autovacuum may be off on the server).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from bench.load import Job, Result
from bench.stack import (
    ADMIN_URL,
    AMQP_URL,
    ROOT,
    CpuSample,
    Process,
    _env,
    cpu_between,
    drop_database,
    migrate_and_token,
    run_phase,
    split,
    stack_sample,
)
from service.adapters.postgres.database import Database
from service.adapters.postgres.outbox import PostgresOutbox
from service.adapters.rabbitmq import Broker
from service.domain.ids import IMAGE_PREFIX, OPERATION_PREFIX, new_id
from service.runtime import logs as service_logs
from service.runtime.settings import Settings
from service.usecases.outbox import publish_pending

PROCESSES = 2  # load generator processes
CONCURRENCY = 16  # Updates in flight in each
TARGET_RATIO = 1.2  # every phase's total within this factor of every other's
POLL_SECONDS = 0.02
APPLY_TIMEOUT_SECONDS = 900.0
READY, UPDATING = 2, 5  # Image.Status numbers (migrations/0001)
# Outbox relays sending the backlog side by side, as relays in several worker processes do
# (each claims its batches): the worker is held back meanwhile, and not for long.
RELAYS = 8
# Each phase is measured this many times (N/REPEATS Updates each) and its median kept: the
# machine may be shared, and a burst of someone else's work lands in one of them.
REPEATS = 3
CONSUMING = 64  # WORKER_CONCURRENCY: the worker's prefetch


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
    """The worker process, held back while the API accepts (see the module's docstring)."""

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

    sizes: Sizes
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

    async def insert_images(self, count: int, folders: int) -> list[str]:
        start = len(self.images)
        ids = [new_id(IMAGE_PREFIX) for _ in range(count)]
        await self.conn.copy_records_to_table(
            "images",
            records=[
                (image_id, f"scale-{(start + n) % folders}", f"s-{start + n}", READY)
                for n, image_id in enumerate(ids)
            ],
            columns=["id", "folder_id", "name", "status"],
        )
        self.images += ids
        return ids

    async def queue_backlog(self, image_ids: list[str]) -> dict[str, float]:
        """Unfinished Updates of ``image_ids`` as an API leaves them that stopped before
        publishing: images UPDATING, operations recorded and never published. Then the
        service's outbox relay (its use case, adapters and settings, run here: in the worker
        process it runs beside a consumer) sends them to the queue."""
        started = time.perf_counter()
        operation_ids = [new_id(OPERATION_PREFIX) for _ in image_ids]
        async with self.conn.transaction():
            await self.conn.execute(
                "UPDATE images SET status = $2 WHERE id = ANY($1::text[])", image_ids, UPDATING
            )
            await self.conn.execute(
                "INSERT INTO operations (id, kind, image_id, folder_id, description, created_at,"
                " created_by, modified_at, request)"
                " SELECT o.id, 'update_image', i.id, i.folder_id, 'Update image', o.at, 'scale',"
                " o.at, jsonb_build_object('description', 'queued')"
                " FROM (SELECT id, image_id,"
                "       now() - interval '1 minute' + n * interval '1 millisecond' AS at"
                "       FROM unnest($1::text[], $2::text[])"
                "       WITH ORDINALITY AS u(id, image_id, n)) o"
                " JOIN images i ON i.id = o.image_id",
                operation_ids,
                image_ids,
            )
        inserted = time.perf_counter()
        settings = self.settings
        db = await Database.connect(self.url, min_size=1, max_size=RELAYS, command_timeout=60)
        try:
            async with connected(settings) as broker:

                async def relay() -> int:
                    published = 0
                    while sent := await publish_pending(
                        PostgresOutbox(db),
                        broker,
                        older_than=settings.outbox_grace_seconds,
                        publish_timeout=settings.publish_timeout_seconds,
                    ):
                        published += sent
                    return published

                published = sum(await asyncio.gather(*(relay() for _ in range(RELAYS))))
                if published != len(image_ids):
                    raise SystemExit(f"the relays sent {published} of {len(image_ids)}")

                async def queued() -> bool:
                    # A held-back worker holds a full prefetch of them, unacknowledged.
                    depth = await broker.queue_depth()
                    held = depth.consumers * settings.worker_concurrency
                    return depth.ready + held >= len(image_ids)

                if not await poll(queued, 30):
                    raise SystemExit("the queue does not hold the operations the relay sent")
        finally:
            await db.close()
        return {
            "insert": round(inserted - started, 2),
            "relay": round(time.perf_counter() - inserted, 2),
        }

    async def insert_finished(self, count: int) -> dict[str, float]:
        """``count`` finished Updates over the images (and so their folders), in one
        statement, their times spread over the last three days."""
        started = time.perf_counter()
        await self.conn.execute(
            "INSERT INTO operations (id, kind, image_id, folder_id, description, created_at,"
            " created_by, modified_at, done, request, response, published_at)"
            " SELECT 'opn' || substr(md5(g.n::text), 1, 17), 'update_image', i.id, i.folder_id,"
            "  'Update image', g.at, 'scale', g.at + interval '20 milliseconds', true,"
            "  jsonb_build_object('description', 'finished ' || g.n),"
            "  jsonb_build_object('id', i.id, 'folder_id', i.folder_id, 'name', i.name,"
            "   'description', 'finished ' || g.n, 'checksum', i.checksum, 'status', $2::int,"
            "   'created_at', to_char(i.created_at AT TIME ZONE 'UTC',"
            '                         \'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"\'),'
            "   'labels', i.labels),"
            "  g.at"
            " FROM (SELECT n, now() - random() * interval '3 days' AS at"
            "       FROM generate_series(1, $1) AS n) g"
            " JOIN (SELECT row_number() OVER (ORDER BY id) - 1 AS nth, * FROM images) i"
            "   ON i.nth = g.n % (SELECT count(*) FROM images)",
            count,
            READY,
        )
        return {"insert": round(time.perf_counter() - started, 2)}

    async def settle(self) -> dict[str, float]:
        """Vacuum, analyze and checkpoint: the next step pays for none of the setup's writes."""
        started = time.perf_counter()
        await self.conn.execute("VACUUM ANALYZE")
        await self.conn.execute("CHECKPOINT")
        return {"vacuum_analyze_checkpoint": round(time.perf_counter() - started, 2)}


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


Pick = Callable[[], Awaitable[tuple[list[str], dict[str, float]]]]


async def run_phases(stack: Stack) -> list[dict[str, Any]]:
    sizes = stack.sizes
    share = math.ceil(sizes.updates / REPEATS)
    phases: list[dict[str, Any]] = []

    async def phase(name: str, setup: dict[str, float], pick: Pick) -> None:
        """``REPEATS`` measurements of ``share`` Updates each, of the images ``pick`` gives
        (after preparing what each repeat needs); the one with the median total stands for
        the phase."""
        repeats = []
        for _ in range(REPEATS):
            images, prepared = await pick()
            prepared |= await stack.settle()
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
    first = await stack.insert_images(sizes.first_images, 1)
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
    await stack.insert_images(sizes.images - sizes.first_images, sizes.folders)
    setup = {"insert": round(time.perf_counter() - started, 2)}
    await phase(f"{sizes.images:,} images", setup, anywhere)

    async def behind_backlog() -> tuple[list[str], dict[str, float]]:
        backlog = random.sample(stack.images, sizes.queued)
        stack.workers.stop()  # the relay's messages wait for the accept step
        prepared = await stack.queue_backlog(backlog)
        waiting = set(backlog)
        return random.sample([i for i in stack.images if i not in waiting], share), prepared

    await phase(f"{sizes.queued:,} queued", {}, behind_backlog)

    setup = await stack.insert_finished(sizes.finished)
    await phase(f"{sizes.finished:,} finished", setup, anywhere)

    base = phases[0]["total_us"]
    for figures in phases:
        figures["ratio_to_first"] = round(figures["total_us"] / base, 2)
    return phases


async def _measure(
    sizes: Sizes, names: tuple[str, str, str], api: Process, token: str, workers: Workers
) -> list[dict[str, Any]]:
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
                sizes,
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
            return await run_phases(stack)
    finally:
        await conn.close()


def run(
    smoke: bool = False, *, restart_worker: bool = False, logs: Path | None = None
) -> dict[str, Any]:
    """Run the scale phases on a stack of their own (removed after, also on failure); the
    figures, for JSON and ``table``."""
    started = time.perf_counter()
    sizes = SMOKE if smoke else FULL
    run_id = uuid.uuid4().hex[:8]
    logs = logs or Path(f"/tmp/bench-scale-{run_id}")
    logs.mkdir(parents=True, exist_ok=True)
    database = f"imgsvc_scale_{run_id}"
    url = ADMIN_URL.rsplit("/", 1)[0] + f"/{database}"
    queue = f"scale-{run_id}"
    env = _env(
        DATABASE_URL=url,
        AMQP_URL=AMQP_URL,
        AMQP_QUEUE=queue,
        GRPC_LISTEN="127.0.0.1:0",
        LOG_LEVEL="INFO",
        WORKER_CONCURRENCY=str(CONSUMING),
        RATE_LIMIT_PER_SECOND="1000000",
        RATE_LIMIT_BURST="1000000",
        MAX_UNFINISHED_OPERATIONS_PER_FOLDER="10000000",
        DB_POOL_MAX="20",
        METRICS_LISTEN="",
    )
    workers = Workers(env, logs, restart_worker)
    api: Process | None = None
    try:
        token = migrate_and_token(env, "scale")
        api = Process([sys.executable, "-m", "service"], env, logs / "api.log")
        phases = asyncio.run(_measure(sizes, (database, url, queue), api, token, workers))
    finally:
        workers.close()
        if api is not None:
            api.stop()
        asyncio.run(drop_database(database))
        for name in (queue, f"{queue}.dead"):
            subprocess.run(["rabbitmqctl", "-q", "delete_queue", name], capture_output=True)
    totals = [p["total_us"] for p in phases]
    return {
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "sizes": asdict(sizes),
        "worker_held_back_by": "restart" if restart_worker else "SIGSTOP",
        "load": {"processes": PROCESSES, "in_flight_each": CONCURRENCY},
        "phases": phases,
        "spread": round(max(totals) / min(totals), 2),
        "target_ratio": TARGET_RATIO,
        "target_met": max(totals) <= TARGET_RATIO * min(totals),
        # A worker held back longer than the broker's heartbeat timeout loses its connection.
        "worker_reconnects": sum(
            log.read_text(errors="replace").count('"broker.connection_lost"')
            for log in logs.glob("worker-*.log")
        ),
        "seconds": round(time.perf_counter() - started, 1),
        "logs": str(logs),
    }


def _split(cpu: dict[str, int], roles: tuple[str, ...]) -> str:
    return "/".join(str(cpu.get(role, 0)) for role in roles)


def table(figures: dict[str, Any]) -> str:
    """The phases side by side (each its median repeat), the verdict, and what each setup
    took."""
    header = (
        f"{'phase':<20} {'accept µs/Update':>16} {'(api/pg/rmq)':>15} {'accepted/s':>10}"
        f" {'apply µs/op':>11} {'(worker/pg/rmq/api)':>20} {'total µs':>8} {'ratio':>5}"
        "  totals of the repeats"
    )
    lines = [header]
    for p in figures["phases"]:
        accept, apply = p["accept"], p["apply"]
        rate = accept["per_second"]
        lines.append(
            f"{p['phase']:<20} {accept['cpu_us_total']:>16}"
            f" {_split(accept['cpu_us'], ('api', 'postgres', 'rabbitmq')):>15}"
            f" {'-' if rate is None else f'{rate:.0f}':>10} {apply['cpu_us_total']:>11}"
            f" {_split(apply['cpu_us'], ('worker', 'postgres', 'rabbitmq', 'api')):>20}"
            f" {p['total_us']:>8} {p['ratio_to_first']:>5.2f}  "
            + " ".join(str(total) for total in p["total_us_repeats"])
        )
    verdict = "met" if figures["target_met"] else "missed"
    lines.append(
        f"target: every total within {figures['target_ratio']}x of the others: {verdict}"
        f" (largest/smallest {figures['spread']:.2f})"
    )
    for p in figures["phases"]:
        setup = ", ".join(f"{step} {s:.1f} s" for step, s in p["setup_seconds"].items())
        errors: dict[str, int] = {}
        for repeat in p["repeats"]:
            for code, n in repeat["accept"]["errors"].items():
                errors[code] = errors.get(code, 0) + n
        problems = {
            k: v
            for k, v in (
                ("errors", errors),
                ("images not READY", max(r["images_not_ready_after"] for r in p["repeats"])),
                ("operations failed", p["repeats"][-1]["operations_failed"]),
            )
            if v
        }
        lines.append(
            f"{p['phase']}: setup {setup}; {len(p['repeats'])} x {p['accept']['updates']}"
            f" Updates ({p['accept']['rounds']} round(s) each); the median one applied"
            f" {p['apply']['operations']}, queue after its accept {p['queue_after_accept']}"
            + (f"; {problems}" if problems else "")
        )
    lines.append(
        f"worker held back by {figures['worker_held_back_by']}"
        f" (reconnects: {figures['worker_reconnects']}); whole run {figures['seconds']} s"
    )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.scale", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--smoke", action="store_true", help="small state, 300 Updates a phase")
    parser.add_argument(
        "--restart-worker",
        action="store_true",
        help="terminate the worker while accepting, start a new one to apply (counted)",
    )
    parser.add_argument("--out", type=Path, default=None, help="JSON output file")
    args = parser.parse_args()
    out = args.out or ROOT / "bench" / "results" / f"scale-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    figures = run(args.smoke, restart_worker=args.restart_worker)
    out.write_text(json.dumps(figures, indent=2))
    print(table(figures))
    print(f"JSON: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
