"""Expected failures as one line: what is wrong and what to do, then a non-zero exit.

Every entry point loads its settings through ``load_settings`` and runs its work inside
``explained``. A ``SetupError`` (and a settings ``ValidationError``) is printed as one line on
stderr, ``error: <what> ...``, and the process exits 1; with ``LOG_LEVEL=DEBUG`` its traceback
is printed first. Anything else is a bug, and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import os
import sys
import traceback
from collections.abc import Iterator
from typing import NoReturn

import click
from pydantic import ValidationError

from service.domain.setup import BadSettings, SetupError
from service.runtime.settings import Settings

EXIT_FAILURE = 1


def describe_settings_error(exc: ValidationError) -> str:
    """One line naming each bad variable and what is wrong with it; never the value (URLs
    carry passwords)."""
    problems = []
    for error in exc.errors(include_url=False, include_input=False, include_context=False):
        variable = ".".join(str(part) for part in error["loc"]).upper()
        message = error["msg"].removeprefix("Value error, ")
        problems.append(f"{variable}: {message}" if variable else message)
    return f"bad setting: {'; '.join(problems)} (the command's --help lists the settings)"


def load_settings() -> Settings:
    """The settings from the environment; ``BadSettings`` (one line) if one is wrong."""
    try:
        return Settings()
    except ValidationError as exc:
        raise BadSettings(describe_settings_error(exc)) from None


def _debugging() -> bool:
    # Read directly: the failure may be that the settings could not be loaded.
    return os.environ.get("LOG_LEVEL", "").strip().upper() == "DEBUG"


def fail(message: str) -> NoReturn:
    """Print ``error: message`` on stderr and exit 1."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(EXIT_FAILURE)


@contextlib.contextmanager
def explained() -> Iterator[None]:
    """Turn an expected failure raised inside into one line on stderr and exit 1."""
    try:
        yield
    except SetupError as exc:
        if _debugging():
            traceback.print_exc()
        fail(str(exc))


def run_cli(command: click.Command, prog_name: str, args: list[str] | None = None) -> NoReturn:
    """Run a command line (``args``: ``sys.argv[1:]`` by default); a usage error is one line on
    stderr, naming the ``--help`` to read (click's own is four: usage, hint, a blank line, the
    error), and exit 2."""
    try:
        code = command.main(args=args, prog_name=prog_name, standalone_mode=False)
    except click.UsageError as exc:
        where = f" (see {exc.ctx.command_path} --help)" if exc.ctx is not None else ""
        print(f"error: {exc.format_message().rstrip('.')}{where}", file=sys.stderr)
        raise SystemExit(exc.exit_code) from None
    except click.ClickException as exc:
        print(f"error: {exc.format_message()}", file=sys.stderr)
        raise SystemExit(exc.exit_code) from None
    except click.exceptions.Abort:
        print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    raise SystemExit(code if isinstance(code, int) else 0)
