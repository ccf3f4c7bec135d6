"""``--help`` that tells what a command reads: each command lists the settings (environment
variables) it uses, with their defaults and descriptions, generated from the ``Settings``
model so the list cannot fall behind it.

Importing this loads click and the settings model only: ``--help`` never connects anywhere.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import click
from pydantic.fields import FieldInfo

from service.runtime.settings import Settings

# Read by the API only, or by the workers only; every other setting is read by both.
API_ONLY = frozenset(
    {
        "grpc_listen",
        "public_endpoint",
        "api_processes",
        "grpc_grace_seconds",
        "operation_cache_size",
        "tls_cert_file",
        "tls_key_file",
        "auth_cache_seconds",
        "grpc_max_message_bytes",
        "grpc_max_concurrent_rpcs",
        "rate_limit_per_second",
        "rate_limit_burst",
        "max_unfinished_operations_per_folder",
    }
)
WORKER_ONLY = frozenset(
    {
        "worker_concurrency",
        "worker_grace_seconds",
        "lease_seconds",
        "max_attempts",
        "retry_max_seconds",
        "consumer_watch_interval_seconds",
        "consumer_stall_seconds",
        "outbox_interval_seconds",
        "outbox_grace_seconds",
        "sweep_interval_seconds",
        "republish_after_seconds",
        "retention_interval_seconds",
        "download_timeout_seconds",
        "download_max_bytes",
        "download_stall_seconds",
        "worker_health_file",
    }
)
API_SETTINGS = tuple(name for name in Settings.model_fields if name not in WORKER_ONLY)
WORKER_SETTINGS = tuple(name for name in Settings.model_fields if name not in API_ONLY)
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


class SettingsCommand(click.Command):
    """A command whose help ends with the settings it reads (``settings=`` names them)."""

    def __init__(self, *args: Any, settings: Iterable[str] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.settings = tuple(settings)

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        _write_settings(formatter, self.settings)
        super().format_epilog(ctx, formatter)


class SettingsGroup(click.Group):
    """A group whose help ends with the settings it reads; its commands are
    ``SettingsCommand``s unless told otherwise."""

    command_class = SettingsCommand

    def __init__(self, *args: Any, settings: Iterable[str] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.settings = tuple(settings)

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        _write_settings(formatter, self.settings)
        super().format_epilog(ctx, formatter)


SettingsGroup.group_class = SettingsGroup
