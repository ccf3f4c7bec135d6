"""``python -m service migrate``: creates the database, applies every file once, races safely."""

from __future__ import annotations

import asyncio
import sys
import uuid
from pathlib import Path

import asyncpg
import pytest

from tests.conftest import database_url_for, drop_database
from tests.support import ROOT, base_env

MIGRATIONS = sorted(p.stem for p in (ROOT / "migrations").glob("*.sql"))


async def run_migrate(url: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "service",
        "migrate",
        cwd=ROOT,
        env=base_env(DATABASE_URL=url),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode()


@pytest.fixture
async def fresh_database():
    name = f"imgsvc_migrate_{uuid.uuid4().hex[:10]}"
    yield name, database_url_for(name)
    await drop_database(name)


async def applied(url: str) -> list[str]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT migration_id FROM _yoyo_migration ORDER BY migration_id")
    finally:
        await conn.close()
    return [r["migration_id"] for r in rows]


async def test_migrate_creates_the_database_and_applies_every_migration(fresh_database):
    _, url = fresh_database
    code, out = await run_migrate(url)
    assert code == 0, out
    assert await applied(url) == MIGRATIONS


async def test_migrate_twice_applies_nothing_the_second_time(fresh_database):
    _, url = fresh_database
    assert (await run_migrate(url))[0] == 0
    code, out = await run_migrate(url)
    assert code == 0, out
    assert '"applied": []' in out
    assert await applied(url) == MIGRATIONS


async def test_concurrent_migrate_runs_are_safe(fresh_database):
    _, url = fresh_database
    results = await asyncio.gather(*(run_migrate(url) for _ in range(4)))
    assert [code for code, _ in results] == [0, 0, 0, 0], [out for _, out in results]
    assert await applied(url) == MIGRATIONS


async def test_the_database_enforces_one_name_per_folder(db):
    await db.execute(
        "INSERT INTO images (id, folder_id, name, status)"
        " VALUES ('imgdbunique000000001', 'f', 'n', 2)"
    )
    with pytest.raises(asyncpg.UniqueViolationError):
        await db.execute(
            "INSERT INTO images (id, folder_id, name, status)"
            " VALUES ('imgdbunique000000002', 'f', 'n', 2)"
        )


async def test_a_done_operation_must_have_exactly_one_result(db):
    with pytest.raises(asyncpg.CheckViolationError):
        await db.execute(
            "INSERT INTO operations (id, kind, image_id, folder_id, description, request, done)"
            " VALUES ('opndbcheck0000000001', 'update_image', 'i', 'f', 'd', '{}', true)"
        )


def test_migration_files_are_ordered_plain_sql():
    files = sorted((ROOT / "migrations").glob("*"))
    assert files, "no migrations"
    for path in files:
        assert path.suffix == ".sql", path
        assert Path(path).stem[:4].isdigit(), path
