"""What the command-line tools print: a table for people, JSON or YAML for scripts.

Results go to stdout; progress, notices and errors go to stderr, so ``--format json`` output
can be piped as it is.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import click
import yaml
from rich.console import Console
from rich.table import Table

FORMATS = ("table", "json", "yaml")

format_option = click.option(
    "--format",
    "output_format",
    type=click.Choice(FORMATS),
    default="table",
    show_default=True,
    help="how to print the result: a table for people, json or yaml for scripts",
)


def stdout() -> Console:
    console = Console()
    if not console.is_terminal:
        # Piped or captured: no terminal width to fit, so rows are never folded.
        console = Console(width=1000)
    return console


def stderr() -> Console:
    return Console(stderr=True, soft_wrap=True)


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def cell(value: Any) -> str:
    """How a value looks in a table cell."""
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={v}" for k, v in value.items()) or "-"
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value) or "-"
    return str(value)


def print_rows(
    rows: Sequence[Mapping[str, Any]], columns: Sequence[str], output_format: str
) -> None:
    """A list of records: a table with these columns (keys of the records), or all of each
    record as JSON or YAML."""
    if output_format != "table":
        print_data([dict(row) for row in rows], output_format)
        return
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in columns:
        table.add_column(column.upper().replace("_", " "), overflow="fold")
    for row in rows:
        table.add_row(*(cell(row.get(column)) for column in columns))
    print_table(table)


def print_table(table: Table) -> None:
    """A table on stdout, each line without the spaces that pad its last column."""
    console = stdout()
    with console.capture() as captured:
        console.print(table)
    for line in captured.get().splitlines():
        print(line.rstrip())


def print_record(record: Mapping[str, Any], output_format: str) -> None:
    """One record: a two-column table of its fields, or JSON or YAML."""
    if output_format != "table":
        print_data(dict(record), output_format)
        return
    table = Table(box=None, show_header=False, pad_edge=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for key, value in record.items():
        table.add_row(key.replace("_", " "), cell(value))
    print_table(table)


def print_data(data: Any, output_format: str) -> None:
    """``data`` as JSON or YAML on stdout."""
    plain = _plain(data)
    if output_format == "yaml":
        click.echo(yaml.safe_dump(plain, sort_keys=False, allow_unicode=True), nl=False)
    else:
        click.echo(json.dumps(plain, indent=2, ensure_ascii=False))
