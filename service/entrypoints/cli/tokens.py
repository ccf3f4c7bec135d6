"""The operator's commands that work on the database directly: ``token create|list|revoke``.

Each command opens a small pool once (no retries: an unreachable database is one line at
once), checks the schema (``migrate`` first, or one line saying so), does its work and closes.
``service.entrypoints.cli.ops`` holds ``doctor`` and ``ops``.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import click

from service.domain.auth import Role
from service.domain.errors import Unavailable
from service.domain.setup import Unreachable
from service.entrypoints.cli.failures import explained, load_settings
from service.entrypoints.cli.helptext import DATABASE_SETTINGS, SettingsGroup
from service.entrypoints.cli.output import format_option, print_rows
from service.runtime import logs
from service.runtime.settings import Settings
from service.usecases.auth import create_token, revoke_token
from service.usecases.ops import list_tokens

if TYPE_CHECKING:
    from service.adapters.postgres.database import Database

# The adapters (asyncpg, aio-pika) are imported by the commands that use them, not here:
# --help, and the API client commands beside these, load no driver.

T = TypeVar("T")


@asynccontextmanager
async def migrated_database(settings: Settings) -> AsyncIterator[Database]:
    """The database for one command, its schema checked; a connection lost on the way is
    one line too."""
    from service.adapters.postgres.schema import (
        command_postgres,
        database_location,
        with_current_schema,
    )

    try:
        postgres = await with_current_schema(command_postgres(settings))
        try:
            yield postgres.db
        finally:
            await postgres.close()
    except Unavailable as exc:
        raise Unreachable(
            f"lost PostgreSQL at {database_location(settings)} ({exc.message}); try again"
        ) from exc


def run_command(component: str, work: Callable[[Settings], Coroutine[Any, Any, T]]) -> T:
    """Load the settings, set up logs, run ``work``; expected failures are one line."""
    with explained():
        settings = load_settings()
        logs.configure(settings.log_level, component=component)
        if settings.log_level.upper() != "DEBUG":
            # The drivers log what the command reports itself, in one line (aiormq logs a
            # refused connection as an error): their lines would only bury the output.
            logging.getLogger().setLevel(logging.CRITICAL)
        return asyncio.run(work(settings))
    raise AssertionError("unreachable")  # explained() exits on failure


@click.group(cls=SettingsGroup, settings=DATABASE_SETTINGS)
def token() -> None:
    """Create, list or revoke API tokens (in the database of DATABASE_URL)."""


@token.command(settings=DATABASE_SETTINGS)
@click.option("--subject", required=True, help="the user or service account ID the token acts as")
@click.option(
    "--folder",
    "folders",
    multiple=True,
    required=True,
    help="a folder the token may act in; repeat for several; '*' for every folder",
)
@click.option(
    "--role",
    required=True,
    type=click.Choice([role.value for role in Role]),
    help="viewer: read only; editor: also Create, Update, Delete and Cancel",
)
@click.option("--expires-in", type=float, help="lifetime in seconds  [default: never expires]")
def create(subject: str, folders: tuple[str, ...], role: str, expires_in: float | None) -> None:
    """Make a token and print it, alone on the last line.

    The token is shown once and stored nowhere: the database keeps its hash only.
    """

    async def work(settings: Settings) -> None:
        from service.adapters.postgres.tokens import PostgresTokens

        async with migrated_database(settings) as db:
            made = await create_token(
                PostgresTokens(db), subject, Role(role), frozenset(folders), expires_in
            )
        click.echo(f"token id: {made.id}")
        click.echo(f"subject: {subject}  role: {role}  folders: {','.join(folders)}")
        click.echo(made.text)

    run_command("token", work)


@token.command(name="list", settings=DATABASE_SETTINGS)
@format_option
def list_command(output_format: str) -> None:
    """List every token: ID, subject, role, folders and when it was made, expires and was
    revoked. Secrets are not stored, and their hashes are not shown."""

    async def work(settings: Settings) -> None:
        from service.adapters.postgres.ops import PostgresOps

        async with migrated_database(settings) as db:
            tokens = await list_tokens(PostgresOps(db))
        rows = [
            {
                "id": t.id,
                "subject": t.subject,
                "role": t.role,
                "folders": list(t.folders),
                "created": t.created_at,
                "expires": t.expires_at,
                "revoked": t.revoked_at,
            }
            for t in tokens
        ]
        print_rows(
            rows,
            ("id", "subject", "role", "folders", "created", "expires", "revoked"),
            output_format,
        )

    run_command("token", work)


@token.command(settings=DATABASE_SETTINGS)
@click.argument("token_or_id", metavar="TOKEN")
def revoke(token_or_id: str) -> None:
    """Revoke a token, given by its ID or whole. The API stops accepting it at once (within
    AUTH_CACHE_SECONDS should it miss the database's notice)."""

    async def work(settings: Settings) -> int:
        from service.adapters.postgres.tokens import PostgresTokens

        async with migrated_database(settings) as db:
            revoked = await revoke_token(PostgresTokens(db), token_or_id)
        if revoked is not None:
            click.echo(f"revoked {revoked}")
            return 0
        print(f"no active token {token_or_id.split('.', 1)[0]}", file=sys.stderr)
        return 1

    raise SystemExit(run_command("token", work))
