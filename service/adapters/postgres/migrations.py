"""Schema migrations: the ordered plain-SQL files in ``migrations/``, applied by yoyo.

Safe to run again (applied files are skipped) and concurrently (yoyo holds a lock table row
while it applies, so a second run waits and then finds nothing to do).

Where the files are: an installed copy (``pip install .``, the Docker image) carries them as
package data in ``service/adapters/postgres/schema_migrations/``, mapped from the top-level
``migrations/`` folder by ``[tool.setuptools]`` in pyproject.toml. An editable install or a
source checkout reads that top-level folder itself (see :func:`migrations_directory`).
"""

from __future__ import annotations

import glob
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from importlib.resources import as_file, files
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import structlog
from psycopg import errors, sql
from yoyo import get_backend, read_migrations

from service.domain.setup import Unreachable

_SHIPPED_IN = "service.adapters.postgres"
_SHIPPED_FOLDER = "schema_migrations"

log = structlog.get_logger(__name__)


def _yoyo_url(database_url: str) -> str:
    """yoyo's URL for the one server of ``database_url`` to migrate.

    ``DATABASE_URL`` may name several hosts (``host1:port1,host2:port2``) with
    ``target_session_attrs`` (``read-write`` to find the primary), as asyncpg and libpq take
    it; yoyo parses its URL itself and takes one host only. So libpq (psycopg) picks the host
    first, by the URL's own rules, and yoyo is given that host alone.
    """
    parts = urlsplit(_chosen_host(database_url))
    return urlunsplit(parts._replace(scheme="postgresql+psycopg"))


def _chosen_host(database_url: str) -> str:
    """``database_url`` with the one host libpq connects to for it in place of its hosts
    (and without ``target_session_attrs``, which that host satisfies)."""
    parts = urlsplit(database_url)
    if "," not in parts.netloc and "target_session_attrs" not in parts.query:
        return database_url
    with psycopg.connect(database_url, autocommit=True) as conn:
        host, port = conn.info.host, conn.info.port
    userinfo, _, _ = parts.netloc.rpartition("@")
    if ":" in host:  # an IPv6 address
        host = f"[{host}]"
    netloc = f"{userinfo}@{host}:{port}" if userinfo else f"{host}:{port}"
    query = "&".join(
        pair
        for pair in parts.query.split("&")
        if pair and not pair.startswith("target_session_attrs=")
    )
    return urlunsplit(parts._replace(netloc=netloc, query=query))


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


class MigrationsNotFoundError(FileNotFoundError):
    """No migration files where this installation keeps them: a broken install or a wrong path.

    Raised instead of reporting success: applying nothing from nothing would leave a database
    without tables while every caller believed it migrated.
    """

    def __init__(self, looked_in: Sequence[Path]) -> None:
        self.looked_in = tuple(looked_in)
        places = ", ".join(str(path) for path in self.looked_in)
        super().__init__(f"no migration files (*.sql) found; looked in: {places}")


@contextmanager
def migrations_directory() -> Iterator[Path]:
    """The folder holding this installation's migration files, as a real path for yoyo.

    Raises MigrationsNotFoundError, naming every folder it looked in, when none holds a file.
    """
    looked_in: list[Path] = []
    with ExitStack() as stack:
        for candidate in _candidate_directories(stack):
            if candidate.is_dir() and any(candidate.glob("*.sql")):
                yield candidate
                return
            looked_in.append(candidate)
    raise MigrationsNotFoundError(looked_in)


def _candidate_directories(stack: ExitStack) -> Iterator[Path]:
    yield stack.enter_context(as_file(files(_SHIPPED_IN).joinpath(_SHIPPED_FOLDER)))
    # An editable install imports service/ from the checkout and ships nothing: setuptools'
    # editable finder cannot expose a folder mapped from outside the package (and Python 3.11's
    # importlib.resources rejects the namespace path it would produce). There the top-level
    # folder beside service/ is the one to read. Requiring pyproject.toml beside it keeps an
    # installed copy from reading some other distribution's top-level "migrations" folder.
    root = stack.enter_context(as_file(files("service"))).parent
    if (root / "pyproject.toml").is_file():
        yield root / "migrations"


def migrate(database_url: str, migrations_dir: Path | None = None) -> list[str]:
    """Apply every pending migration; returns the IDs applied by this run.

    Reads ``migrations_dir`` if given, else :func:`migrations_directory`. Raises
    MigrationsNotFoundError, before touching the database, when there is no migration to read.
    """
    with ExitStack() as stack:
        if migrations_dir is None:
            migrations_dir = stack.enter_context(migrations_directory())
        # yoyo globs its sources: escape so a path with [, * or ? is taken literally.
        migrations = read_migrations(glob.escape(str(migrations_dir)))
        if not migrations:
            raise MigrationsNotFoundError([migrations_dir])
        try:
            ensure_database(database_url)
            backend = get_backend(_yoyo_url(database_url))
            with backend.lock():
                pending = backend.to_apply(migrations)
                backend.apply_migrations(pending)
        except psycopg.OperationalError as exc:
            # psycopg's message names the server and the reason, never the password.
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise Unreachable(
                f"cannot migrate: {reason}; check DATABASE_URL and that PostgreSQL is running"
            ) from exc
    applied = [m.id for m in pending]
    log.info(
        "migrations.applied", applied=applied, total=len(migrations), directory=str(migrations_dir)
    )
    return applied
