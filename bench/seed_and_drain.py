"""Rows ``python -m bench`` writes straight into its database (READY images, operations that
stay unfinished), and the wait until the workers have applied every real Update."""

from __future__ import annotations

import asyncio
import time

import asyncpg

from service.domain.ids import IMAGE_PREFIX, OPERATION_PREFIX, new_id


async def insert_images(url: str, count: int) -> list[str]:
    ids = [new_id(IMAGE_PREFIX) for _ in range(count)]
    conn = await asyncpg.connect(url)
    try:
        await conn.copy_records_to_table(
            "images",
            records=[(i, "bench", f"b-{i}", 2) for i in ids],
            columns=["id", "folder_id", "name", "status"],
        )
    finally:
        await conn.close()
    return ids


async def insert_unfinished(url: str, count: int) -> list[str]:
    ids = [new_id(OPERATION_PREFIX) for _ in range(count)]
    conn = await asyncpg.connect(url)
    try:
        # Published and never claimed: they stay unfinished for the whole run.
        await conn.executemany(
            "INSERT INTO operations (id, kind, image_id, folder_id, description, request,"
            " published_at) VALUES ($1, 'update_image', 'imgnone', 'bench', 'Update image',"
            " '{}', now())",
            [(i,) for i in ids],
        )
    finally:
        await conn.close()
    return ids


async def drain(url: str, timeout: float = 300) -> None:
    """Wait until the workers have finished every Update (the synthetic ones excepted)."""
    conn = await asyncpg.connect(url)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            left = await conn.fetchval(
                "SELECT count(*) FROM operations WHERE NOT done AND image_id <> 'imgnone'"
            )
            if left == 0:
                return
            await asyncio.sleep(0.2)
        raise SystemExit(f"the workers did not finish the backlog in {timeout}s")
    finally:
        await conn.close()
