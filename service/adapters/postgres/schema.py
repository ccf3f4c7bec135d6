"""Connecting for a start-up or an operator's command, checking the schema it finds, and what
the migration tool recorded.

Driver failures that mean "set up first" become the one-line ``SetupError``s of
``service.domain.setup``: a database that does not exist, credentials refused, a server out of
reach after the deadline.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Sequence
from contextlib import asynccontextmanager

import asyncpg

from service.adapters.postgres import Postgres
from service.adapters.postgres.database import Database, translate_errors
from service.adapters.postgres.migrations import migrations_directory
from service.domain.errors import Unavailable
from service.domain.setup import MIGRATE_HINT, Refused, SchemaMissing, Unreachable
from service.runtime.settings import Settings
from service.usecases.schema import ensure_schema_current

# An operator's command tries once, and waits this long for the server to answer.
COMMAND_CONNECT_TIMEOUT_SECONDS = 5.0
# yoyo's record of applied migrations.
MIGRATION_TABLE = "_yoyo_migration"


def database_location(settings: Settings) -> str:
    """host:port/database of ``DATABASE_URL``, for messages (never the credentials)."""
    url = settings.database_url
    hosts = ",".join(f"{h.get('host') or 'localhost'}:{h.get('port') or 5432}" for h in url.hosts())
    return f"{hosts}{url.path or ''}"


def _setup_error(exc: BaseException, settings: Settings) -> Exception | None:
    """The ``SetupError`` a connection failure stands for, if it stands for one."""
    where = database_location(settings)
    if isinstance(exc, asyncpg.InvalidCatalogNameError):
        return SchemaMissing(f"the database {where} does not exist; {MIGRATE_HINT} (it creates it)")
    if isinstance(
        exc, asyncpg.InvalidAuthorizationSpecificationError | asyncpg.InvalidPasswordError
    ):
        return Refused(f"PostgreSQL at {where} refused the credentials; check DATABASE_URL")
    if isinstance(exc, Unavailable):
        return Unreachable(
            f"cannot reach PostgreSQL at {where} ({exc.message}); check DATABASE_URL and"
            " that the server is running"
        )
    return None


async def connect_database(
    settings: Settings, *, deadline: float, generic_plans: bool = False
) -> Postgres:
    """``Postgres.connect`` (retrying an unreachable server for ``deadline`` seconds), its
    expected failures raised as ``SetupError``s."""
    try:
        return await Postgres.connect(settings, deadline=deadline, generic_plans=generic_plans)
    except (asyncpg.PostgresError, Unavailable) as exc:
        error = _setup_error(exc, settings)
        if error is None:
            raise
        raise error from exc


async def with_current_schema(
    connecting: Awaitable[Postgres], *, retry_for: float | None = None
) -> Postgres:
    """The database ``connecting`` opens (``connect_database`` for a process's start-up,
    ``command_postgres`` for an operator's command), once it has this version's schema:
    ``SchemaMissing`` or ``SchemaBehind`` if not, saying to migrate. ``retry_for``: how long
    the check waits for an unreachable server (``None``: not at all).

    The pool is closed again on any failure, and when cancelled.
    """
    postgres = await connecting
    try:
        await ensure_schema_current(PostgresSchema(postgres.db), timeout=retry_for)
    except BaseException:
        await postgres.close()
        raise
    return postgres


async def command_postgres(settings: Settings) -> Postgres:
    """A small pool for one operator's command: one attempt, no retries (a command should
    say at once that the database is out of reach, not log warnings for a minute)."""
    try:
        with translate_errors():
            pool = await asyncpg.create_pool(
                str(settings.database_url),
                min_size=1,
                max_size=2,
                timeout=COMMAND_CONNECT_TIMEOUT_SECONDS,
                command_timeout=settings.db_command_timeout_seconds,
            )
    except (asyncpg.PostgresError, Unavailable) as exc:
        error = _setup_error(exc, settings)
        if error is None:
            raise
        raise error from exc
    return Postgres.over(Database(pool, acquire_timeout=COMMAND_CONNECT_TIMEOUT_SECONDS))


@asynccontextmanager
async def command_database(settings: Settings) -> AsyncIterator[Database]:
    """``command_postgres``'s database, closed at the end."""
    postgres = await command_postgres(settings)
    try:
        yield postgres.db
    finally:
        await postgres.close()


class PostgresSchema:
    """``usecases.ports.Schema``: the shipped migration files and yoyo's table."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def shipped_migrations(self) -> Sequence[str]:
        with migrations_directory() as directory:
            # yoyo's own naming: a migration is NAME.sql, its undo NAME.rollback.sql.
            return sorted(
                path.stem
                for path in directory.glob("*.sql")
                if not path.name.endswith(".rollback.sql")
            )

    async def applied_migrations(self) -> frozenset[str] | None:
        async with self._db.connection() as conn:
            if await conn.fetchval("SELECT to_regclass($1)", MIGRATION_TABLE) is None:
                return None
            rows = await conn.fetch(f"SELECT migration_id FROM {MIGRATION_TABLE}")
        return frozenset(row["migration_id"] for row in rows)
