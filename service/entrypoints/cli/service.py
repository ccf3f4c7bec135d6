"""``python -m service``: the gRPC API (the default), ``migrate``, the operator's commands
(``token``, ``doctor``, ``ops``) and the command-line client of the API (``image``,
``operation``).

``--help`` of every command exits 0 without connecting to anything and lists the settings
(environment variables) the command reads. Expected failures are one line on stderr and
exit 1 (``service.entrypoints.cli.failures``).
"""

from __future__ import annotations

import asyncio

import click

from service.entrypoints.cli.failures import explained, fail, load_settings
from service.entrypoints.cli.helptext import API_SETTINGS, SettingsGroup
from service.entrypoints.cli.listen import ensure_can_listen
from service.entrypoints.cli.ops import doctor, ops
from service.entrypoints.cli.tokens import token
from service.entrypoints.client import image, operation
from service.runtime import logs
from service.runtime.settings import Settings


async def _check_database(settings: Settings) -> None:
    """The start-up checks of one API process, made once before ``API_PROCESSES`` children
    start: each would fail alike."""
    from service.adapters.postgres.schema import connect_database, with_current_schema

    timeout = settings.startup_timeout_seconds
    postgres = await with_current_schema(
        connect_database(settings, deadline=timeout), retry_for=timeout
    )
    await postgres.close()


def _serve() -> None:
    with explained():
        settings = load_settings()
        ensure_can_listen(settings.grpc_listen, shared=settings.api_processes > 1)
        if settings.http_listen:
            shared = settings.api_processes > 1
            ensure_can_listen(settings.http_listen, shared=shared, setting="HTTP_LISTEN")
        if settings.api_processes > 1:
            from service.entrypoints.api_processes import run_processes

            logs.configure(settings.log_level, component="api")
            asyncio.run(_check_database(settings))
            raise SystemExit(run_processes(settings.api_processes, settings))
        from service.entrypoints.api import serve_api

        serve_api(settings)


@click.group(
    cls=SettingsGroup,
    settings=API_SETTINGS,
    invoke_without_command=True,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.pass_context
def cli(ctx: click.Context) -> None:
    """The BareMetal image service. Without a command: run the gRPC API (as serve does).

    First time: migrate, then token create, then start the workers (python -m workers) and
    the API.
    """
    if ctx.invoked_subcommand is None:
        _serve()


@cli.command(settings=API_SETTINGS)
def serve() -> None:
    """Run the gRPC API on GRPC_LISTEN until SIGTERM or Ctrl-C (the default command)."""
    _serve()


@cli.command(settings=("database_url", "log_level"))
def migrate() -> None:
    """Create the database if it is missing and apply the migrations it lacks. Safe to run
    again, and from several places at once."""
    with explained():
        settings = load_settings()
        logs.configure(settings.log_level, component="migrate")
        from service.adapters.postgres.migrations import MigrationsNotFoundError
        from service.adapters.postgres.migrations import migrate as apply_migrations

        try:
            apply_migrations(str(settings.database_url))
        except MigrationsNotFoundError as exc:
            fail(f"migrate: {exc}")


cli.add_command(token)
cli.add_command(doctor)
cli.add_command(ops)
cli.add_command(image)
cli.add_command(operation)


def main() -> None:
    """``python -m service``."""
    cli(prog_name="python -m service")
