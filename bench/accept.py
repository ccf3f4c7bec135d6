"""``python -m bench.accept``: the API's accepting statement alone, keyed as the SDKs send.

A fresh migrated database with READY images in one folder; then batches of ``--batch`` keyed
Updates (``PostgresAccepts.begin_updates``, what the API's micro-batcher runs), two batches in
flight, so that statements meet on the folder's rows as those of two API processes do, until
``--images`` are used. Printed per Update: the wall time, this process's CPU (the API's share
of an accept: asyncpg and the adapter) and the CPU of the database's backends. Nothing else
runs, so the figures move with the statement and the round trips around it, not with the rest
of the stack.

To compare two trees (one virtualenv), copy this file into the other tree's ``bench/`` and run
``python -m bench.accept`` in each, one after the other.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid
from dataclasses import replace

import asyncpg

from bench.stack import ADMIN_URL, cpu_seconds
from service.adapters.postgres import Postgres
from service.adapters.postgres.database import Database
from service.domain import ids
from service.domain.model import (
    IdempotencyKey,
    ImageChange,
    NewOperation,
    OperationKind,
)
from service.usecases.ports import NewUpdate

FOLDER = "fbenchaccept000000000"


def _update(image_id: str) -> NewUpdate:
    operation = NewOperation(
        ids.new_id(ids.OPERATION_PREFIX), OperationKind.UPDATE_IMAGE, image_id, "bench"
    )
    key = IdempotencyKey("bench", str(uuid.uuid4()), "request")
    return replace(NewUpdate(operation, ImageChange(description="d"), None), idempotency=key)


async def _backends_cpu(conn: asyncpg.Connection) -> float:
    pids = await conn.fetch(
        "SELECT pid FROM pg_stat_activity"
        " WHERE datname = current_database() AND pid <> pg_backend_pid()"
    )
    return sum(cpu_seconds(row["pid"]) for row in pids)


async def measure(batch: int, images: int) -> dict[str, float]:
    name = f"imgsvc_bench_accept_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(ADMIN_URL)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        migrate = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "service",
            "migrate",
            env={**os.environ, "DATABASE_URL": url},
            stdout=asyncio.subprocess.DEVNULL,
        )
        if await migrate.wait() != 0:
            raise SystemExit("python -m service migrate failed")
        db = await Database.connect(url, min_size=2, max_size=2, command_timeout=60)
        accepts = Postgres.over(db, max_unfinished_per_folder=10**9).accepts
        watch = await asyncpg.connect(url)
        image_ids = [ids.new_id(ids.IMAGE_PREFIX) for _ in range(images)]
        await watch.copy_records_to_table(
            "images",
            records=[(i, FOLDER, i, 2) for i in image_ids],
            columns=["id", "folder_id", "name", "status"],
        )
        await watch.execute("ANALYZE images")
        warm, image_ids = image_ids[: 20 * batch], image_ids[20 * batch :]
        for start in range(0, len(warm), batch):
            await accepts.begin_updates([_update(i) for i in warm[start : start + batch]])
        done = 0
        pg_before = await _backends_cpu(watch)
        cpu_before, wall_before = time.process_time(), time.perf_counter()
        for start in range(0, len(image_ids) - 2 * batch + 1, 2 * batch):
            pair = image_ids[start : start + 2 * batch]
            accepted = await asyncio.gather(
                accepts.begin_updates([_update(i) for i in pair[:batch]]),
                accepts.begin_updates([_update(i) for i in pair[batch:]]),
            )
            done += sum(1 for part in accepted for op in part if op is not None)
        wall = time.perf_counter() - wall_before
        cpu = time.process_time() - cpu_before
        pg = await _backends_cpu(watch) - pg_before
        await watch.close()
        await db.close()
    finally:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()
    return {
        "updates": done,
        "wall_us": wall / done * 1e6,
        "client_cpu_us": cpu / done * 1e6,
        "postgres_cpu_us": pg / done * 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=6, help="keyed Updates per statement")
    parser.add_argument("--images", type=int, default=6000)
    args = parser.parse_args()
    got = asyncio.run(measure(args.batch, args.images))
    print(
        f"batches of {args.batch} keyed Updates, two in flight: {got['updates']:.0f} accepted;"
        f" per Update: wall {got['wall_us']:.0f} µs, this process's CPU"
        f" {got['client_cpu_us']:.0f} µs, PostgreSQL's {got['postgres_cpu_us']:.0f} µs"
    )


if __name__ == "__main__":
    main()
