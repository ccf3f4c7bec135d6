"""The operator's commands against the real PostgreSQL and RabbitMQ: token list, doctor,
ops operations stuck, ops dead-letters."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

import aio_pika
import aiormq
import asyncpg
import pytest

from service.adapters.rabbitmq.topology import (
    dead_letter_queue,
    dead_letter_queue_arguments,
    queue_arguments,
)
from service.usecases.execute import dead_letter_reason
from tests.conftest import AMQP_URL, database_url_for, drop_database, migrate
from tests.e2e.commands import assert_one_line_failure, run
from tests.support import create_token


@pytest.fixture
async def ops_database() -> AsyncIterator[tuple[str, asyncpg.Connection]]:
    """A migrated database of this test's own, with no API or workers on it."""
    name = f"imgsvc_ops_{uuid.uuid4().hex[:10]}"
    url = database_url_for(name)
    await asyncio.to_thread(migrate, url)
    conn = await asyncpg.connect(url)
    yield url, conn
    await conn.close()
    await drop_database(name)


@pytest.fixture
async def broker() -> AsyncIterator[aio_pika.abc.AbstractChannel]:
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        yield await connection.channel()


async def declare(broker: aio_pika.abc.AbstractChannel, queue: str, delivery_limit: int) -> None:
    await broker.declare_queue(
        dead_letter_queue(queue), durable=True, arguments=dead_letter_queue_arguments()
    )
    await broker.declare_queue(
        queue, durable=True, arguments=queue_arguments(queue, delivery_limit)
    )


async def insert_operation(conn: asyncpg.Connection, **columns: object) -> str:
    values: dict[str, object] = {
        "id": f"opn{uuid.uuid4().hex[:17]}",
        "kind": "create_image",
        "image_id": f"img{uuid.uuid4().hex[:17]}",
        "folder_id": "ops-folder",
        "description": "Create image",
        "request": json.dumps({"uri": "http://example.invalid/x"}),
    }
    values.update(columns)
    names = ", ".join(values)
    placeholders = ", ".join(f"${i}" for i in range(1, len(values) + 1))
    await conn.execute(
        f"INSERT INTO operations ({names}) VALUES ({placeholders})", *values.values()
    )
    return str(values["id"])


# --- token list -----------------------------------------------------------------------------


async def test_token_list_shows_every_token_but_never_its_secret(ops_database):
    url, _ = ops_database
    made = await asyncio.to_thread(
        create_token, url, "--subject", "alice", "--folder", "f1", "--folder", "f2",
        "--role", "viewer", "--expires-in", "3600",
    )  # fmt: skip
    token_id, secret = made.split(".", 1)
    revoked = await run("service", "token", "revoke", token_id, env={"DATABASE_URL": url})
    assert revoked.code == 0, revoked

    listed = await run("service", "token", "list", "--format", "json", env={"DATABASE_URL": url})
    assert listed.code == 0, listed
    [token] = listed.json()
    assert token["id"] == token_id
    assert token["subject"] == "alice"
    assert token["role"] == "viewer"
    assert token["folders"] == ["f1", "f2"]
    assert token["expires"] is not None
    assert token["revoked"] is not None
    assert set(token) == {"id", "subject", "role", "folders", "created", "expires", "revoked"}

    table = await run("service", "token", "list", env={"DATABASE_URL": url})
    assert table.code == 0
    assert token_id in table.stdout
    assert "alice" in table.stdout
    for output in (listed.stdout, table.stdout):
        assert secret not in output


# --- doctor ---------------------------------------------------------------------------------


async def test_doctor_passes_when_everything_is_in_place(
    ops_database, broker, queue_names: Callable[[str], str]
):
    url, _ = ops_database
    queue = queue_names(f"-doctor-{uuid.uuid4().hex[:6]}")
    await declare(broker, queue, 5)
    ran = await run(
        "service", "doctor",
        env={"DATABASE_URL": url, "AMQP_URL": AMQP_URL, "AMQP_QUEUE": queue},
    )  # fmt: skip
    assert ran.code == 0, ran
    lines = ran.stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["ok"] * 5
    assert "migrations current" in lines[1]
    assert f"queue {queue} " in lines[3]
    assert "quorum" in lines[3]
    assert f"queue {queue}.dead" in lines[4]


async def test_doctor_fails_a_queue_declared_with_other_arguments_and_a_missing_one(
    ops_database, broker, queue_names: Callable[[str], str]
):
    url, _ = ops_database
    queue = queue_names(f"-doctor-{uuid.uuid4().hex[:6]}")
    await broker.declare_queue(
        queue, durable=True, arguments=queue_arguments(queue, delivery_limit=2)
    )
    ran = await run(
        "service", "doctor",
        env={
            "DATABASE_URL": url, "AMQP_URL": AMQP_URL, "AMQP_QUEUE": queue,
            "AMQP_DELIVERY_LIMIT": "5",
        },
    )  # fmt: skip
    assert ran.code == 1, ran
    lines = ran.stdout.splitlines()
    assert lines[3].startswith(f"FAIL  queue {queue} ")
    assert "x-delivery-limit" in lines[3]
    assert lines[4].startswith(f"FAIL  queue {queue}.dead")
    assert "missing" in lines[4]
    # Looked at, not created.
    with pytest.raises(aiormq.exceptions.ChannelNotFoundEntity):
        await broker.declare_queue(dead_letter_queue(queue), passive=True)


async def test_doctor_fails_migrations_on_a_database_behind(
    ops_database, broker, queue_names: Callable[[str], str]
):
    url, conn = ops_database
    last = await conn.fetchval(
        "SELECT migration_id FROM _yoyo_migration ORDER BY migration_id DESC LIMIT 1"
    )
    await conn.execute("DELETE FROM _yoyo_migration WHERE migration_id = $1", last)
    queue = queue_names(f"-doctor-{uuid.uuid4().hex[:6]}")
    await declare(broker, queue, 5)
    ran = await run(
        "service", "doctor",
        env={"DATABASE_URL": url, "AMQP_URL": AMQP_URL, "AMQP_QUEUE": queue},
    )  # fmt: skip
    assert ran.code == 1, ran
    line = ran.stdout.splitlines()[1]
    assert line.startswith("FAIL  migrations current")
    assert f"first missing: {last}" in line
    assert "run `python -m service migrate`" in line


# --- ops operations stuck -------------------------------------------------------------------


async def test_stuck_lists_old_unfinished_operations_with_attempts_and_lease(ops_database):
    url, conn = ops_database
    old = "now() - interval '1 hour'"
    leased = await insert_operation(conn, attempts=2)
    await conn.execute(
        f"UPDATE operations SET created_at = {old}, published_at = {old},"
        " lease_until = now() - interval '1 minute' WHERE id = $1",
        leased,
    )
    unpublished = await insert_operation(conn)
    await conn.execute(f"UPDATE operations SET created_at = {old} WHERE id = $1", unpublished)
    await insert_operation(conn)  # recent: not stuck yet
    finished = await insert_operation(conn, done=True, error_code=13, error_message="x")
    await conn.execute(f"UPDATE operations SET created_at = {old} WHERE id = $1", finished)

    ran = await run(
        "service", "ops", "operations", "stuck", "--older-than", "600", "--format", "json",
        env={"DATABASE_URL": url},
    )  # fmt: skip
    assert ran.code == 0, ran
    found = {row["id"]: row for row in ran.json()}
    assert set(found) == {leased, unpublished}
    assert found[leased]["attempts"] == 2
    assert found[leased]["lease_until"] is not None
    assert "lease expired" in found[leased]["state"]
    assert found[leased]["image_status"] == "gone"
    assert "not marked as sent yet" in found[unpublished]["state"]

    table = await run(
        "service", "ops", "operations", "stuck", "--older-than", "7200", env={"DATABASE_URL": url}
    )
    assert table.code == 0
    assert "no unfinished operation older than 7200 s" in table.stdout


# --- ops dead-letters -----------------------------------------------------------------------


async def test_dead_letters_shows_waiting_messages_without_consuming_them_and_what_ended(
    ops_database, broker, queue_names: Callable[[str], str]
):
    url, conn = ops_database
    queue = queue_names(f"-dead-{uuid.uuid4().hex[:6]}")
    await declare(broker, queue, 5)
    waiting = await insert_operation(conn, attempts=5, published_at=None)
    unknown = f"opn{uuid.uuid4().hex[:17]}"
    for operation_id in (waiting, unknown):
        await broker.default_exchange.publish(
            aio_pika.Message(operation_id.encode()), routing_key=dead_letter_queue(queue)
        )
    ended = await insert_operation(
        conn,
        done=True,
        error_code=13,
        error_message=dead_letter_reason(5),
        dead_lettered_at=datetime.now(UTC),
    )
    await insert_operation(conn, done=True, error_code=13, error_message="something else")
    # The same words without the state: listed only by what the dead-letter path recorded.
    await insert_operation(conn, done=True, error_code=13, error_message=dead_letter_reason(5))

    env = {"DATABASE_URL": url, "AMQP_URL": AMQP_URL, "AMQP_QUEUE": queue}
    for _ in range(2):  # looking twice sees the same: nothing was consumed
        ran = await run("service", "ops", "dead-letters", "--format", "json", env=env)
        assert ran.code == 0, ran
        report = ran.json()
        assert [(m["operation_id"], m["outcome"]) for m in report["waiting"]] == [
            (waiting, "unfinished"),
            (unknown, "unknown operation (or removed by retention)"),
        ]
        assert [(o["operation_id"], o["outcome"]) for o in report["ended"]] == [
            (ended, f"failed: {dead_letter_reason(5)} (code 13)")
        ]
    dead = await broker.declare_queue(dead_letter_queue(queue), passive=True)
    assert dead.declaration_result.message_count == 2

    table = await run("service", "ops", "dead-letters", env=env)
    assert table.code == 0
    assert f"In {queue}.dead (2 message(s), left in place)" in table.stdout
    assert waiting in table.stdout
    assert ended in table.stdout


async def test_dead_letters_of_a_queue_never_declared_is_one_line(ops_database):
    url, _ = ops_database
    queue = f"image-operations-never-declared-{uuid.uuid4().hex[:6]}"
    ran = await run(
        "service", "ops", "dead-letters",
        env={"DATABASE_URL": url, "AMQP_URL": AMQP_URL, "AMQP_QUEUE": queue},
    )  # fmt: skip
    assert_one_line_failure(ran, f"there is no queue {queue}.dead", "AMQP_QUEUE")
