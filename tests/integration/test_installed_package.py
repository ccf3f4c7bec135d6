"""A non-editable install (what the Docker image runs) carries its migrations and applies them.

The install is a fresh venv in a temporary folder holding ``pip install <checkout>``; every
command runs from a folder outside the checkout, so only the installed copy can be imported.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import tomllib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from service.adapters.postgres.migrations import (
    MigrationsNotFoundError,
    migrate,
    migrations_directory,
)
from tests.conftest import ADMIN_DATABASE_URL, database_url_for, drop_database
from tests.support import ROOT, base_env

MIGRATIONS = sorted(path.name for path in (ROOT / "migrations").glob("*.sql"))
TABLES = {"images", "operations", "idempotency_keys", "api_tokens"}
# Package directories and where pyproject.toml maps their import names from.
PACKAGE_ROOTS = {
    "service": ROOT / "service",
    "workers": ROOT / "workers",
    "yandex": ROOT / "gen/yandex",
}


def installed_env(**overrides: str) -> dict[str, str]:
    """The test environment, minus anything that could put the checkout on the import path."""
    env = base_env(**overrides)
    env.pop("PYTHONPATH", None)
    return env


@pytest.fixture(scope="module")
def outside(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A working directory outside the checkout."""
    return tmp_path_factory.mktemp("outside")


@pytest.fixture(scope="module")
def installed_python(tmp_path_factory: pytest.TempPathFactory, outside: Path) -> Path:
    """The interpreter of a fresh venv holding a non-editable install of this checkout."""
    base = tmp_path_factory.mktemp("installed")
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True)
    python = venv / "bin" / "python"
    # setuptools builds in the checkout's build/ by default, and that folder keeps deleted modules
    # for the next wheel; build in the temporary folder instead, leaving the checkout untouched.
    build_config = base / "build.cfg"
    build_config.write_text(
        f"[build]\nbuild_base = {base / 'build'}\n[egg_info]\negg_base = {base}\n"
    )
    install = subprocess.run(
        [
            *(python, "-m", "pip", "install", "--disable-pip-version-check", "--no-input"),
            *("--no-compile", "--quiet", str(ROOT)),
        ],
        cwd=outside,
        env=installed_env(DIST_EXTRA_CONFIG=str(build_config)),
        capture_output=True,
        text=True,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    return python


def run_installed(python: Path, cwd: Path, code: str) -> str:
    result = subprocess.run(
        [python, "-c", code], cwd=cwd, env=installed_env(), capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout.strip()


@pytest.fixture
async def fresh_database(run_id: str) -> AsyncIterator[tuple[str, str]]:
    """The name and URL of a database that does not exist yet; dropped at the end."""
    name = f"imgsvc_installed_{run_id}_{uuid.uuid4().hex[:6]}"
    yield name, database_url_for(name)
    await drop_database(name)


async def database_exists(name: str) -> bool:
    conn = await asyncpg.connect(ADMIN_DATABASE_URL)
    try:
        return bool(await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name))
    finally:
        await conn.close()


async def tables(url: str) -> set[str]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    finally:
        await conn.close()
    return {row["tablename"] for row in rows}


def test_the_installed_copy_is_imported_not_the_checkout(installed_python: Path, outside: Path):
    location = Path(
        run_installed(installed_python, outside, "import service; print(service.__file__)")
    )
    assert location.is_relative_to(installed_python.parent.parent), location


def test_the_installed_copy_ships_every_migration(installed_python: Path, outside: Path):
    shipped = run_installed(
        installed_python,
        outside,
        "from service.adapters.postgres.migrations import migrations_directory\n"
        "with migrations_directory() as d:\n"
        "    print(d)\n"
        "    print(*sorted(p.name for p in d.glob('*.sql')))",
    )
    directory, names = shipped.splitlines()
    assert Path(directory).is_relative_to(installed_python.parent.parent), directory
    assert names.split() == MIGRATIONS


async def test_migrate_from_the_installed_copy_creates_the_database_and_its_tables(
    installed_python: Path, outside: Path, fresh_database: tuple[str, str]
):
    _, url = fresh_database
    proc = await asyncio.create_subprocess_exec(
        installed_python,
        "-m",
        "service",
        "migrate",
        cwd=outside,
        env=installed_env(DATABASE_URL=url),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    assert proc.returncode == 0, out.decode()
    assert await tables(url) >= TABLES


async def test_migrate_refuses_a_folder_without_migrations_and_creates_no_database(
    tmp_path: Path, fresh_database: tuple[str, str]
):
    name, url = fresh_database
    (tmp_path / "README.txt").write_text("not a migration")
    with pytest.raises(MigrationsNotFoundError, match=re.escape(str(tmp_path))):
        migrate(url, migrations_dir=tmp_path)
    assert not await database_exists(name)


def test_the_checkout_finds_its_own_migrations_folder():
    with migrations_directory() as directory:
        assert sorted(path.name for path in directory.glob("*.sql")) == MIGRATIONS


def test_every_package_directory_is_listed_in_pyproject():
    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    on_disk = set()
    for name, root in PACKAGE_ROOTS.items():
        for directory, _, filenames in os.walk(root):
            if any(filename.endswith(".py") for filename in filenames):
                relative = Path(directory).relative_to(root).parts
                on_disk.add(".".join((name, *relative)))
    assert on_disk - listed == set(), "add these to [tool.setuptools] packages in pyproject.toml"
