"""``doctor`` (is everything this service needs in place?) and ``ops`` (what is stuck, what
was dead-lettered): the operator's read-only views of the database and the broker."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import click

from service.entrypoints.cli.helptext import (
    BROKER_SETTINGS,
    DATABASE_SETTINGS,
    SettingsCommand,
    SettingsGroup,
)
from service.entrypoints.cli.output import cell, format_option, print_data, print_rows, stdout
from service.entrypoints.cli.tokens import migrated_database, run_command
from service.runtime.settings import Settings
from service.usecases.ops import (
    Check,
    check_broker,
    check_database,
    dead_letters,
    outcome,
    pipeline_state,
    stuck_operations,
)

# The adapters are imported by the commands that use them: --help loads no driver.

IMAGE_STATUS = {1: "CREATING", 2: "READY", 3: "ERROR", 4: "DELETING", 5: "UPDATING"}
DOCTOR_SETTINGS = (*DATABASE_SETTINGS, *BROKER_SETTINGS)
# The dead-letter queue is named for the queue; its messages' delivery limit is not read.
DEAD_LETTERS_SETTINGS = (*DATABASE_SETTINGS, "amqp_url", "amqp_queue")


def _print_checks(checks: list[Check]) -> None:
    width = max(len(check.name) for check in checks)
    console = stdout()
    for check in checks:
        mark = "[green]ok  [/]" if check.ok else "[bold red]FAIL[/]"
        console.print(f"{mark}  {check.name.ljust(width)}  {check.detail}", highlight=False)


@click.command(cls=SettingsCommand, settings=DOCTOR_SETTINGS)
def doctor() -> None:
    """Check what the API and the workers need: the database is reachable, its migrations
    are current, the broker is reachable, and the queues are declared with the expected
    arguments. One line per check (ok or FAIL); exits 1 if any fails."""

    async def work(settings: Settings) -> bool:
        from service.adapters.postgres.schema import (
            PostgresSchema,
            command_database,
            database_location,
        )
        from service.adapters.rabbitmq.inspect import (
            broker_location,
            expected_queues,
            inspect_queues,
        )

        @contextlib.asynccontextmanager
        async def open_schema() -> AsyncIterator[PostgresSchema]:
            async with command_database(settings) as db:
                yield PostgresSchema(db)

        checks = await check_database(open_schema, database_location(settings))
        checks += await check_broker(
            lambda: inspect_queues(settings.amqp_url),
            broker_location(settings.amqp_url),
            expected_queues(settings.amqp_queue, settings.amqp_delivery_limit),
        )
        _print_checks(checks)
        return all(check.ok for check in checks)

    raise SystemExit(0 if run_command("doctor", work) else 1)


@click.group(cls=SettingsGroup, settings=DEAD_LETTERS_SETTINGS)
def ops() -> None:
    """Look into the pipeline: operations that do not finish, messages that were
    dead-lettered."""


@ops.group(cls=SettingsGroup, settings=DATABASE_SETTINGS)
def operations() -> None:
    """Operations seen from the database."""


def _age(moment: datetime | None, now: datetime) -> str:
    if moment is None:
        return "-"
    seconds = int((now - moment).total_seconds())
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


@operations.command(settings=DATABASE_SETTINGS)
@click.option(
    "--older-than",
    type=click.FloatRange(min=0),
    default=300.0,
    show_default=True,
    help="seconds since the operation was accepted",
)
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True)
@format_option
def stuck(older_than: float, limit: int, output_format: str) -> None:
    """Unfinished operations accepted more than --older-than seconds ago, oldest first, with
    their attempts, lease and where they are in the pipeline."""

    async def work(settings: Settings) -> None:
        from service.adapters.postgres.ops import PostgresOps

        async with migrated_database(settings) as db:
            found = await stuck_operations(PostgresOps(db), older_than, limit)
        now = datetime.now(UTC)
        rows = [
            {
                "id": r.id,
                "kind": r.kind,
                "image_id": r.image_id,
                "image_status": IMAGE_STATUS.get(r.image_status or 0, "gone"),
                "age": _age(r.created_at, now),
                "created_at": r.created_at,
                "published_at": r.published_at,
                "attempts": r.attempts,
                "lease_until": r.lease_until,
                "state": pipeline_state(r, now),
            }
            for r in found
        ]
        print_rows(
            rows,
            ("id", "kind", "image_id", "image_status", "age", "attempts", "lease_until", "state"),
            output_format,
        )
        if output_format == "table" and not rows:
            stdout().print(f"no unfinished operation older than {older_than:g} s")

    run_command("ops", work)


@ops.command(name="dead-letters", cls=SettingsCommand, settings=DEAD_LETTERS_SETTINGS)
@click.option(
    "--limit",
    type=click.IntRange(min=1, max=1000),
    default=50,
    show_default=True,
    help="messages to look at, and finished operations to list",
)
@click.option(
    "--since",
    type=click.FloatRange(min=0),
    default=86400.0,
    show_default=True,
    help="list operations ended after dead-lettering in the last this many seconds",
)
@format_option
def dead_letters_command(limit: int, since: float, output_format: str) -> None:
    """What reached the dead-letter queue: the messages waiting in it now (looked at and
    left in place) and what became of their operations, then the operations the workers
    already ended because their message was dead-lettered."""

    async def work(settings: Settings) -> None:
        from service.adapters.postgres.ops import PostgresOps
        from service.adapters.rabbitmq.inspect import inspect_queues
        from service.adapters.rabbitmq.topology import dead_letter_queue

        queue = dead_letter_queue(settings.amqp_queue)
        async with migrated_database(settings) as db, inspect_queues(settings.amqp_url) as broker:
            report = await dead_letters(
                broker, PostgresOps(db), queue, limit=limit, since_seconds=since
            )
        waiting = [
            {
                "operation_id": message.operation_id,
                "deliveries": message.delivery_count,
                "reason": message.death_reason or "-",
                "kind": record.kind if record else "-",
                "image_id": record.image_id if record else "-",
                "outcome": outcome(record),
            }
            for message, record in report.waiting
        ]
        ended = [
            {
                "operation_id": r.id,
                "kind": r.kind,
                "image_id": r.image_id,
                "image_status": IMAGE_STATUS.get(r.image_status or 0, "gone"),
                "ended_at": r.modified_at,
                "outcome": outcome(r),
            }
            for r in report.ended
        ]
        if output_format != "table":
            print_data({"waiting": waiting, "ended": ended}, output_format)
            return
        console = stdout()
        console.print(f"[bold]In {queue}[/] ({len(waiting)} message(s), left in place)")
        if waiting:
            print_rows(waiting, tuple(waiting[0]), "table")
        console.print(
            f"[bold]Ended after dead-lettering[/] (last {cell(round(since))} s:"
            f" {len(ended)} operation(s))"
        )
        if ended:
            print_rows(ended, tuple(ended[0]), "table")

    run_command("ops", work)
