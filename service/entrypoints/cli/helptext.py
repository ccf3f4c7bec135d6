"""``--help`` that tells what a command reads: each command lists the settings (environment
variables) it uses, with their defaults and descriptions, generated from the ``Settings``
model. Which process reads which setting is declared beside the model (``READ_BY_*``);
``tests/unit/test_settings_in_help.py`` finds the reads in the code and fails when a command's
help lists a setting the command does not read, or leaves out one it does.

Importing this loads click and the settings model only: ``--help`` never connects anywhere.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import click
from pydantic.fields import FieldInfo

from service.runtime.settings import (
    READ_BY_API_ONLY,
    READ_BY_BOTH,
    READ_BY_WORKERS_ONLY,
    Settings,
)

# In the order of the Settings class.
API_SETTINGS = tuple(
    name for name in Settings.model_fields if name in READ_BY_BOTH | READ_BY_API_ONLY
)
WORKER_SETTINGS = tuple(
    name for name in Settings.model_fields if name in READ_BY_BOTH | READ_BY_WORKERS_ONLY
)
# What the operator's commands read: the database's; doctor and dead-letters the broker's too.
DATABASE_SETTINGS = ("database_url", "db_command_timeout_seconds", "log_level")
BROKER_SETTINGS = ("amqp_url", "amqp_queue", "amqp_delivery_limit")


def _default(field: FieldInfo) -> str:
    value: Any = field.get_default(call_default_factory=True)
    text = str(value)
    return text if text else "(empty)"


def settings_rows(names: Iterable[str]) -> list[tuple[str, str]]:
    """(VARIABLE, "description [default: value]") for each named setting."""
    rows = []
    for name in names:
        field = Settings.model_fields[name]
        rows.append((name.upper(), f"{field.description or ''} [default: {_default(field)}]"))
    return rows


def _write_settings(formatter: click.HelpFormatter, names: tuple[str, ...]) -> None:
    if names:
        with formatter.section("Settings (environment variables)"):
            formatter.write_dl(settings_rows(names))


class _ListsSettings:
    """Ends a command's help with the settings it reads (``settings=`` names them)."""

    def __init__(self, *args: Any, settings: Iterable[str] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.settings = tuple(settings)

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        _write_settings(formatter, self.settings)
        super().format_epilog(ctx, formatter)  # type: ignore[misc]


class SettingsCommand(_ListsSettings, click.Command):
    """A command whose help ends with the settings it reads."""


class SettingsGroup(_ListsSettings, click.Group):
    """A group whose help ends with the settings it reads; its commands are
    ``SettingsCommand``s unless told otherwise."""

    command_class = SettingsCommand


SettingsGroup.group_class = SettingsGroup
