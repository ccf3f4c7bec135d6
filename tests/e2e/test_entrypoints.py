"""Entry points that help: every command's --help exits 0 without connecting to anything and
lists the settings it reads; every expected failure is one line on stderr saying what is
wrong and what to do, a non-zero exit, and no traceback (unless LOG_LEVEL=DEBUG).

Most commands are called in this process (click's ``CliRunner``, ``in_process``): what is
checked is what the command prints and its exit code, which a child process would show alike.
The real ``python -m service`` and ``python -m workers`` run where a process proves more:
their --help connecting to nothing, their start-up failures (the API and the workers set up
process-wide state: the event loop, tracing, signal handlers), and logs on a terminal.
"""

from __future__ import annotations

import logging
import os
import pty
import re
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator

import asyncpg
import click
import pytest
import stamina
import structlog
from click.testing import CliRunner

from service.entrypoints.cli.service import cli
from service.entrypoints.cli.workers import workers
from service.runtime.retry import retry_counts
from tests.conftest import ADMIN_DATABASE_URL, database_url_for, drop_database
from tests.e2e.commands import Ran, assert_one_line_failure, run
from tests.support import ROOT, base_env

SCHEMA_MISSING = "the database has no schema; run `python -m service migrate`"
CLIENT = ["IMAGES_ENDPOINT", "IMAGES_TOKEN", "IMAGES_CA_FILE", "IMAGES_RETRY_SECONDS"]
API = ["DATABASE_URL", "AMQP_URL", "GRPC_LISTEN", "API_PROCESSES", "LOG_LEVEL"]

HELP = [
    ("service", [], API),
    ("service", ["serve"], API),
    ("service", ["migrate"], ["DATABASE_URL", "LOG_LEVEL"]),
    ("service", ["token"], ["DATABASE_URL"]),
    ("service", ["token", "create"], ["DATABASE_URL", "viewer: read only"]),
    ("service", ["token", "list"], ["DATABASE_URL"]),
    ("service", ["token", "revoke"], ["DATABASE_URL"]),
    ("service", ["doctor"], ["DATABASE_URL", "AMQP_URL", "AMQP_QUEUE", "AMQP_DELIVERY_LIMIT"]),
    ("service", ["ops"], ["operations", "dead-letters"]),
    ("service", ["ops", "operations", "stuck"], ["DATABASE_URL", "--older-than"]),
    ("service", ["ops", "dead-letters"], ["DATABASE_URL", "AMQP_URL", "AMQP_QUEUE"]),
    ("service", ["image"], ["create", "update", "get", "list", "delete"]),
    ("service", ["image", "create"], [*CLIENT, "IMAGES_FOLDER", "--async", "--format"]),
    ("service", ["image", "update"], [*CLIENT, "--async", "--clear-labels"]),
    ("service", ["image", "get"], CLIENT),
    ("service", ["image", "list"], [*CLIENT, "IMAGES_FOLDER", "--filter"]),
    ("service", ["image", "delete"], [*CLIENT, "--async"]),
    ("service", ["operation"], ["get", "wait", "cancel", "list"]),
    ("service", ["operation", "get"], CLIENT),
    ("service", ["operation", "wait"], CLIENT),
    ("service", ["operation", "cancel"], CLIENT),
    ("service", ["operation", "list"], CLIENT),
    ("workers", [], ["DATABASE_URL", "AMQP_URL", "WORKER_CONCURRENCY", "LEASE_SECONDS"]),
]


@pytest.fixture
def listener() -> Iterator[str]:
    """host:port of a socket that records whether anything connected to it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        sock.setblocking(False)
        yield f"127.0.0.1:{sock.getsockname()[1]}"
        with pytest.raises(BlockingIOError):
            sock.accept()  # nobody connected


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
async def empty_database() -> AsyncIterator[str]:
    """A database that exists but was never migrated."""
    name = f"imgsvc_empty_{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(ADMIN_DATABASE_URL)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    yield database_url_for(name)
    await drop_database(name)


COMMANDS: dict[str, tuple[click.Command, str]] = {
    "service": (cli, "python -m service"),
    "workers": (workers, "python -m workers"),
}


@pytest.fixture
def in_process() -> Iterator[Callable[..., Ran]]:
    """Runs ``python -m module args`` as a call of its click command in this process, with
    ``env`` on top of the test's environment less its DATABASE_/AMQP_ variables (as
    ``commands.run``). A command sets up the process's logging: undone at the end."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    structlog_config = structlog.get_config()
    retry_hooks = stamina.instrumentation.get_on_retry_hooks()

    def invoke(module: str, *args: str, env: dict[str, str]) -> Ran:
        command, prog_name = COMMANDS[module]
        cleared: dict[str, str | None] = {
            name: None for name in os.environ if name.startswith(("DATABASE_", "AMQP_"))
        }
        result = CliRunner().invoke(command, args, env={**cleared, **env}, prog_name=prog_name)
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception  # a bug: a child process would print its traceback
        return Ran(result.exit_code, result.stdout, result.stderr)

    yield invoke
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.configure(**structlog_config)
    structlog.contextvars.clear_contextvars()
    stamina.instrumentation.set_on_retry_hooks(retry_hooks)


def listening_env(listener: str) -> dict[str, str]:
    """Every address a command could connect to, pointing at ``listener``."""
    return {
        "DATABASE_URL": f"postgresql://postgres@{listener}/images",
        "AMQP_URL": f"amqp://guest:guest@{listener}/",
        "IMAGES_ENDPOINT": listener,
    }


@pytest.mark.parametrize("module", ["service", "workers"])
async def test_the_processes_help_exits_0_without_connecting(module, listener):
    ran = await run(module, "--help", env=listening_env(listener))
    assert ran.code == 0, ran
    assert ran.stdout.startswith(f"Usage: python -m {module} ")
    assert "Settings (environment variables):" in ran.stdout
    assert ran.stderr == ""


@pytest.mark.parametrize(
    ("module", "args", "mentions"), HELP, ids=[" ".join([m, *a]) for m, a, _ in HELP]
)
def test_help_exits_0_without_connecting_and_lists_what_the_command_reads(
    module, args, mentions, listener, in_process
):
    ran = in_process(module, *args, "--help", env=listening_env(listener))
    assert ran.code == 0, ran
    assert ran.stdout.startswith("Usage: python -m ")
    assert "`" not in ran.stdout  # no markup shown literally
    for text in mentions:
        assert text in ran.stdout, text
    if any(name.isupper() and not name.startswith("IMAGES_") for name in mentions):
        assert "Settings (environment variables):" in ran.stdout
        assert "[default: " in ran.stdout


def test_the_workers_help_lists_no_setting_of_the_api_alone(in_process):
    ran = in_process("workers", "--help", env={})
    assert "GRPC_LISTEN" not in ran.stdout
    assert "TLS_CERT_FILE" not in ran.stdout
    assert "HTTP_LISTEN" not in ran.stdout


@pytest.mark.parametrize("module", ["service", "workers"])
async def test_a_process_on_a_database_never_migrated_says_to_run_migrate(module, empty_database):
    ran = await run(module, env={"DATABASE_URL": empty_database, "GRPC_LISTEN": "127.0.0.1:0"})
    assert_one_line_failure(ran, SCHEMA_MISSING)


OPERATOR_COMMANDS = [
    ["token", "create", "--subject", "s", "--folder", "f", "--role", "viewer"],
    ["token", "list"],
    ["token", "revoke", "tokxxxxxxxxxxxxxxxxx"],
    ["ops", "operations", "stuck"],
]
OPERATOR_COMMAND_IDS = ["token create", "token list", "token revoke", "ops operations stuck"]


@pytest.mark.parametrize("args", OPERATOR_COMMANDS, ids=OPERATOR_COMMAND_IDS)
def test_a_command_on_a_database_never_migrated_says_to_run_migrate(
    args, empty_database, in_process
):
    ran = in_process("service", *args, env={"DATABASE_URL": empty_database})
    assert_one_line_failure(ran, SCHEMA_MISSING)


MISSING = "does not exist; run `python -m service migrate` (it creates it)"


async def test_the_api_on_a_missing_database_says_to_run_migrate_which_creates_it():
    missing = database_url_for(f"imgsvc_missing_{uuid.uuid4().hex[:10]}")
    ran = await run("service", env={"DATABASE_URL": missing, "GRPC_LISTEN": "127.0.0.1:0"})
    assert_one_line_failure(ran, MISSING)


def test_a_command_on_a_missing_database_says_to_run_migrate_which_creates_it(in_process):
    missing = database_url_for(f"imgsvc_missing_{uuid.uuid4().hex[:10]}")
    ran = in_process("service", "token", "list", env={"DATABASE_URL": missing})
    assert_one_line_failure(ran, MISSING)


@pytest.mark.parametrize("args", OPERATOR_COMMANDS, ids=OPERATOR_COMMAND_IDS)
def test_an_operator_command_fails_at_once_when_the_database_is_unreachable(
    args, closed_port, in_process
):
    retried = retry_counts()
    ran = in_process(
        "service",
        *args,
        env={"DATABASE_URL": f"postgresql://postgres@127.0.0.1:{closed_port}/images"},
    )
    assert_one_line_failure(ran, f"cannot reach PostgreSQL at 127.0.0.1:{closed_port}/images")
    assert ran.stdout == ""
    assert retry_counts() == retried, "no retry"


@pytest.mark.parametrize("module", ["service", "workers"])
async def test_a_process_gives_up_on_an_unreachable_database_after_the_startup_timeout(
    module, closed_port
):
    ran = await run(
        module,
        env={
            "DATABASE_URL": f"postgresql://postgres@127.0.0.1:{closed_port}/images",
            "STARTUP_TIMEOUT_SECONDS": "1",
            "GRPC_LISTEN": "127.0.0.1:0",
        },
    )
    assert_one_line_failure(ran, "cannot reach PostgreSQL", "check DATABASE_URL")


def test_migrate_says_when_the_database_is_unreachable(closed_port, in_process):
    ran = in_process(
        "service",
        "migrate",
        env={"DATABASE_URL": f"postgresql://postgres@127.0.0.1:{closed_port}/images"},
    )
    assert_one_line_failure(ran, "cannot migrate:", "check DATABASE_URL")


def test_dead_letters_fail_at_once_when_the_broker_is_unreachable(
    database_url, closed_port, in_process
):
    ran = in_process(
        "service",
        "ops",
        "dead-letters",
        env={
            "DATABASE_URL": database_url,
            "AMQP_URL": f"amqp://guest:guest@127.0.0.1:{closed_port}/",
        },
    )
    assert_one_line_failure(ran, f"cannot reach RabbitMQ (127.0.0.1:{closed_port}", "AMQP_URL")


BAD_SETTING_COMMANDS = [
    ("service", []),
    ("workers", []),
    ("service", ["migrate"]),
    ("service", ["token", "list"]),
    ("service", ["doctor"]),
    ("service", ["ops", "dead-letters"]),
]


@pytest.mark.parametrize(
    ("module", "args"),
    BAD_SETTING_COMMANDS,
    ids=[" ".join([m, *a]) for m, a in BAD_SETTING_COMMANDS],
)
def test_a_bad_setting_is_one_line_naming_the_variable_without_its_value(module, args, in_process):
    ran = in_process(
        module,
        *args,
        env={
            "DATABASE_URL": "postgresql://admin:sekret-password@db.example:notaport/images",
            "DB_POOL_MIN": "0",
        },
    )
    line = assert_one_line_failure(ran, "bad setting: ", "DATABASE_URL: ", "DB_POOL_MIN: ")
    assert "sekret" not in line


def test_a_taken_port_fails_before_anything_connects(closed_port, in_process):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        ran = in_process(
            "service",
            env={
                "GRPC_LISTEN": address,
                # Unreachable: the port is checked before the database is tried.
                "DATABASE_URL": f"postgresql://postgres@127.0.0.1:{closed_port}/images",
            },
        )
    assert_one_line_failure(ran, f"cannot listen on {address}: the port is in use")


def test_log_level_debug_adds_the_traceback_of_an_expected_failure(empty_database, in_process):
    ran = in_process(
        "service", "token", "list", env={"DATABASE_URL": empty_database, "LOG_LEVEL": "DEBUG"}
    )
    assert ran.code == 1
    assert "Traceback" in ran.stderr
    assert ran.error_lines[-1] == f"error: {SCHEMA_MISSING}"


def test_logs_are_key_value_lines_in_a_terminal_and_json_otherwise(closed_port):
    env = base_env(
        DATABASE_URL=f"postgresql://postgres@127.0.0.1:{closed_port}/images",
        STARTUP_TIMEOUT_SECONDS="0.3",
        GRPC_LISTEN="127.0.0.1:0",
    )
    command = [sys.executable, "-m", "service"]
    piped = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)
    assert piped.stdout.startswith('{"'), piped.stdout
    assert '"message": "retry.scheduled"' in piped.stdout

    main, child = pty.openpty()
    try:
        with subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=child, stderr=subprocess.DEVNULL
        ) as proc:
            os.close(child)
            seen = b""
            while True:
                try:
                    chunk = os.read(main, 4096)
                except OSError:  # the terminal closed: the process ended
                    break
                if not chunk:
                    break
                seen += chunk
            assert proc.wait(30) == 1
    finally:
        os.close(main)
    text = re.sub(r"\x1b\[[0-9;]*m", "", seen.decode(errors="replace"))  # colours
    assert "retry.scheduled" in text
    assert "attempt=" in text
    assert '{"' not in text


def test_doctor_reports_an_unreachable_broker_as_a_failed_check(
    database_url, closed_port, in_process
):
    ran = in_process(
        "service",
        "doctor",
        env={
            "DATABASE_URL": database_url,
            "AMQP_URL": f"amqp://guest:guest@127.0.0.1:{closed_port}/",
        },
    )
    assert ran.code == 1
    lines = ran.stdout.splitlines()
    assert lines[0].startswith("ok    database reachable")
    assert lines[2].startswith("FAIL  broker reachable")
    assert "Traceback" not in ran.stdout + ran.stderr
