"""Entry points that help: every command's --help exits 0 without connecting to anything and
lists the settings it reads; every expected failure is one line on stderr saying what is
wrong and what to do, a non-zero exit, and no traceback (unless LOG_LEVEL=DEBUG)."""

from __future__ import annotations

import os
import pty
import re
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest

from tests.conftest import ADMIN_DATABASE_URL, database_url_for, drop_database
from tests.e2e.commands import assert_one_line_failure, run
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


@pytest.mark.parametrize(
    ("module", "args", "mentions"), HELP, ids=[" ".join([m, *a]) for m, a, _ in HELP]
)
async def test_help_exits_0_without_connecting_and_lists_what_the_command_reads(
    module, args, mentions, listener
):
    ran = await run(
        module,
        *args,
        "--help",
        env={
            "DATABASE_URL": f"postgresql://postgres@{listener}/images",
            "AMQP_URL": f"amqp://guest:guest@{listener}/",
            "IMAGES_ENDPOINT": listener,
        },
    )
    assert ran.code == 0, ran
    assert ran.stdout.startswith("Usage: python -m ")
    assert "`" not in ran.stdout  # no markup shown literally
    for text in mentions:
        assert text in ran.stdout, text
    if any(name.isupper() and not name.startswith("IMAGES_") for name in mentions):
        assert "Settings (environment variables):" in ran.stdout
        assert "[default: " in ran.stdout


async def test_the_workers_help_lists_no_setting_of_the_api_alone():
    ran = await run("workers", "--help", env={})
    assert "GRPC_LISTEN" not in ran.stdout
    assert "TLS_CERT_FILE" not in ran.stdout
    assert "HTTP_LISTEN" not in ran.stdout


SCHEMA_COMMANDS = [
    ("service", []),
    ("workers", []),
    ("service", ["token", "create", "--subject", "s", "--folder", "f", "--role", "viewer"]),
    ("service", ["token", "list"]),
    ("service", ["token", "revoke", "tokxxxxxxxxxxxxxxxxx"]),
    ("service", ["ops", "operations", "stuck"]),
]


@pytest.mark.parametrize(
    ("module", "args"), SCHEMA_COMMANDS, ids=[" ".join([m, *a]) for m, a in SCHEMA_COMMANDS]
)
async def test_a_database_never_migrated_says_to_run_migrate(module, args, empty_database):
    ran = await run(
        module, *args, env={"DATABASE_URL": empty_database, "GRPC_LISTEN": "127.0.0.1:0"}
    )
    assert_one_line_failure(ran, SCHEMA_MISSING)


@pytest.mark.parametrize("args", [[], ["token", "list"]], ids=["serve", "token list"])
async def test_a_missing_database_says_to_run_migrate_which_creates_it(args):
    missing = database_url_for(f"imgsvc_missing_{uuid.uuid4().hex[:10]}")
    ran = await run("service", *args, env={"DATABASE_URL": missing, "GRPC_LISTEN": "127.0.0.1:0"})
    assert_one_line_failure(ran, "does not exist; run `python -m service migrate` (it creates it)")


@pytest.mark.parametrize(
    "args",
    [
        ["token", "create", "--subject", "s", "--folder", "f", "--role", "viewer"],
        ["token", "list"],
        ["token", "revoke", "tokxxxxxxxxxxxxxxxxx"],
        ["ops", "operations", "stuck"],
    ],
    ids=["token create", "token list", "token revoke", "ops operations stuck"],
)
async def test_an_operator_command_fails_at_once_when_the_database_is_unreachable(
    args, closed_port
):
    ran = await run(
        "service",
        *args,
        env={"DATABASE_URL": f"postgresql://postgres@127.0.0.1:{closed_port}/images"},
        timeout=15,
    )
    assert_one_line_failure(ran, f"cannot reach PostgreSQL at 127.0.0.1:{closed_port}/images")
    assert ran.stdout == ""  # no retry warnings


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


async def test_migrate_says_when_the_database_is_unreachable(closed_port):
    ran = await run(
        "service",
        "migrate",
        env={"DATABASE_URL": f"postgresql://postgres@127.0.0.1:{closed_port}/images"},
    )
    assert_one_line_failure(ran, "cannot migrate:", "check DATABASE_URL")


async def test_dead_letters_fail_at_once_when_the_broker_is_unreachable(database_url, closed_port):
    ran = await run(
        "service",
        "ops",
        "dead-letters",
        env={
            "DATABASE_URL": database_url,
            "AMQP_URL": f"amqp://guest:guest@127.0.0.1:{closed_port}/",
        },
        timeout=20,
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
async def test_a_bad_setting_is_one_line_naming_the_variable_without_its_value(module, args):
    ran = await run(
        module,
        *args,
        env={
            "DATABASE_URL": "postgresql://admin:sekret-password@db.example:notaport/images",
            "DB_POOL_MIN": "0",
        },
    )
    line = assert_one_line_failure(ran, "bad setting: ", "DATABASE_URL: ", "DB_POOL_MIN: ")
    assert "sekret" not in line


async def test_a_taken_port_fails_before_anything_connects(closed_port):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        ran = await run(
            "service",
            env={
                "GRPC_LISTEN": address,
                # Unreachable: the port is checked before the database is tried.
                "DATABASE_URL": f"postgresql://postgres@127.0.0.1:{closed_port}/images",
            },
            timeout=15,
        )
    assert_one_line_failure(ran, f"cannot listen on {address}: the port is in use")


async def test_log_level_debug_adds_the_traceback_of_an_expected_failure(empty_database):
    ran = await run(
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


async def test_doctor_reports_an_unreachable_broker_as_a_failed_check(database_url, closed_port):
    ran = await run(
        "service",
        "doctor",
        env={
            "DATABASE_URL": database_url,
            "AMQP_URL": f"amqp://guest:guest@127.0.0.1:{closed_port}/",
        },
        timeout=20,
    )
    assert ran.code == 1
    lines = ran.stdout.splitlines()
    assert lines[0].startswith("ok    database reachable")
    assert lines[2].startswith("FAIL  broker reachable")
    assert "Traceback" not in ran.stdout + ran.stderr
