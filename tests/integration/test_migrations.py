"""``python -m service migrate``: creates the database, applies every file once, races safely."""

from __future__ import annotations

import asyncio
import sys
import uuid
from pathlib import Path

import asyncpg
import pytest
from yoyo import get_backend, read_migrations

from service.adapters.postgres.migrations import ensure_database
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


def migrate_up_to(url: str, last: str) -> None:
    """Apply the shipped migrations up to and including ``last``, as an older release did."""
    ensure_database(url)
    backend = get_backend(url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        older = read_migrations(str(ROOT / "migrations")).filter(lambda m: m.id <= last)
        with backend.lock():
            backend.apply_migrations(backend.to_apply(older))
    finally:
        backend.connection.close()


async def test_operations_dead_lettered_before_the_column_existed_are_marked_by_0011(
    fresh_database,
):
    _, url = fresh_database
    await asyncio.to_thread(migrate_up_to, url, "0010_notify_operation_finished")
    conn = await asyncpg.connect(url)
    try:
        insert = (
            "INSERT INTO operations (id, kind, image_id, folder_id, description, request, done,"
            " error_code, error_message, response)"
            " VALUES ($1, 'update_image', 'i', 'f', 'd', '{}', $2, $3, $4, $5)"
        )
        await conn.execute(
            insert, "opnbackfill000000dead", True, 13,
            "Operation failed after 5 delivery attempts", None,
        )  # fmt: skip
        # A Create that ran out of claims, another failure, a success, one still running.
        await conn.execute(
            insert, "opnbackfill0000claims", True, 13, "Operation failed after 3 attempts", None
        )
        await conn.execute(insert, "opnbackfill000000fail", True, 6, "name taken", None)
        await conn.execute(insert, "opnbackfill000000done", True, None, None, "{}")
        await conn.execute(insert, "opnbackfill000running", False, None, None, None)
    finally:
        await conn.close()

    code, out = await run_migrate(url)
    assert code == 0, out
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT id, dead_lettered_at = modified_at AS marked FROM operations"
            " WHERE dead_lettered_at IS NOT NULL"
        )
        counts = await conn.fetchval("SELECT unfinished FROM folder_unfinished")
    finally:
        await conn.close()
    assert [(r["id"], r["marked"]) for r in rows] == [("opnbackfill000000dead", True)]
    assert counts == 1, "the backfill moved no count"
