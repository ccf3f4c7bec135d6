"""Schema migrations: the ordered plain-SQL files in ``migrations/``, applied by yoyo.

Safe to run again (applied files are skipped) and concurrently (yoyo holds a lock table row
while it applies, so a second run waits and then finds nothing to do).
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import structlog
from psycopg import errors, sql
from yoyo import get_backend, read_migrations

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"

log = structlog.get_logger(__name__)


def _yoyo_url(database_url: str) -> str:
    parts = urlsplit(database_url)
    return urlunsplit(parts._replace(scheme="postgresql+psycopg"))


def ensure_database(database_url: str) -> None:
    """Create the database named in the URL if it does not exist yet."""
    parts = urlsplit(database_url)
    name = parts.path.lstrip("/")
    maintenance = urlunsplit(parts._replace(path="/postgres"))
    with psycopg.connect(maintenance, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if exists:
            return
        try:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            log.info("database.created", database=name)
        except (errors.DuplicateDatabase, errors.UniqueViolation):
            pass  # created by a concurrent run


def migrate(database_url: str, migrations_dir: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply every pending migration; returns the IDs applied by this run."""
    ensure_database(database_url)
    backend = get_backend(_yoyo_url(database_url))
    migrations = read_migrations(str(migrations_dir))
    with backend.lock():
        pending = backend.to_apply(migrations)
        backend.apply_migrations(pending)
    applied = [m.id for m in pending]
    log.info("migrations.applied", applied=applied, total=len(migrations))
    return applied
