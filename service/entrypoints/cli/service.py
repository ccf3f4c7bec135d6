"""``python -m service``: the gRPC API (the default), ``migrate``, the operator's commands
(``token``, ``doctor``, ``ops``) and the command-line client of the API (``image``,
``operation``).

``--help`` of every command exits 0 without connecting to anything and lists the settings
(environment variables) the command reads. Expected failures are one line on stderr and
exit 1 (``service.entrypoints.cli.failures``).
"""

from __future__ import annotations

import asyncio
import time

import click
import structlog

from service.domain.setup import Unreachable
from service.entrypoints.cli.accounts import sa
from service.entrypoints.cli.failures import explained, fail, load_settings, run_cli
from service.entrypoints.cli.health import health
from service.entrypoints.cli.helptext import API_SETTINGS, SettingsGroup
from service.entrypoints.cli.listen import ensure_can_listen
from service.entrypoints.cli.ops import doctor, ops
from service.entrypoints.cli.tokens import token
from service.entrypoints.client import image, operation
from service.runtime import logs
from service.runtime.settings import Settings

RETRY_PAUSE_SECONDS = 1.0

log = structlog.get_logger(__name__)


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
@click.option(
    "--wait",
    "wait_seconds",
    type=click.FloatRange(min=0),
    default=0,
    show_default=True,
    help="Seconds to keep trying, once a second, while no server of DATABASE_URL takes "
    "writes (a cluster still electing its primary, say).",
)
def migrate(wait_seconds: float) -> None:
    """Create the database if it is missing and apply the migrations it lacks. Safe to run
    again, and from several places at once."""
    with explained():
        settings = load_settings()
        logs.configure(settings.log_level, component="migrate")
        from service.adapters.postgres.migrations import MigrationsNotFoundError
        from service.adapters.postgres.migrations import migrate as apply_migrations

        deadline = time.monotonic() + wait_seconds
        while True:
            try:
                apply_migrations(str(settings.database_url))
            except MigrationsNotFoundError as exc:
                fail(f"migrate: {exc}")
            except Unreachable as exc:
                if time.monotonic() + RETRY_PAUSE_SECONDS > deadline:
                    raise
                log.info("migrate.waiting", reason=str(exc))
                time.sleep(RETRY_PAUSE_SECONDS)
            else:
                return


cli.add_command(token)
cli.add_command(sa)
cli.add_command(doctor)
cli.add_command(health)
cli.add_command(ops)
cli.add_command(image)
cli.add_command(operation)


def main() -> None:
    """``python -m service``."""
    run_cli(cli, "python -m service")
