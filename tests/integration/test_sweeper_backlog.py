"""The sweeper tells a lost message from a waiting one, against the real PostgreSQL and
RabbitMQ: operations published long ago and never claimed are sent again only as far as the
queue cannot be holding their messages. A message carries several operations, and the broker
counts messages: so does the sweeper.

The workers' own sweep step runs here (``WorkerPool.sweep``) over a queue of this test's,
with no consumer: what was published stays ready in the queue, a backlog.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable

import aio_pika
import asyncpg
import pytest

from service.bootstrap import Infrastructure, build_executor, start_infrastructure
from service.domain.model import ImageChange
from service.entrypoints.worker import WorkerPool
from service.runtime.settings import Settings
from service.usecases.ports import OutgoingMessage
from tests.conftest import AMQP_URL
from tests.integration.conftest import own_database_fixtures
from tests.integration.rows import add_image, folder, update
from tests.support import messages_of

# A database of this module's own, not the run's shared one (see conftest.own_database).
own, database_url, db = own_database_fixtures("sweeper")

REPUBLISH_AFTER = 1800.0  # published an hour ago (below): older than this
PER_MESSAGE = 5


@pytest.fixture
async def infra(
    database_url: str, queue_names: Callable[[str], str]
) -> AsyncIterator[Infrastructure]:
    settings = Settings(
        database_url=database_url,
        amqp_url=AMQP_URL,
        amqp_queue=queue_names(f"-sweeper-{uuid.uuid4().hex[:6]}"),
        republish_after_seconds=REPUBLISH_AFTER,
    )
    infra = await start_infrastructure(settings, broker_wait=30)
    assert infra is not None
    yield infra
    await infra.close()


@pytest.fixture
async def made(db: asyncpg.Pool) -> AsyncIterator[list[str]]:
    """Operations a test made, removed at its end: the sweeper looks at every operation."""
    operations: list[str] = []
    yield operations
    await db.execute("DELETE FROM operations WHERE id = ANY($1)", operations)


async def published_long_ago(
    infra: Infrastructure, db: asyncpg.Pool, made: list[str], count: int
) -> list[OutgoingMessage]:
    """Accepted Updates in messages of ``PER_MESSAGE``, marked published an hour ago, oldest
    message first; none sent yet."""
    f = folder()
    batch = [update(await add_image(db, f), ImageChange(description="d")) for _ in range(count)]
    accepted = [op.id for op in await infra.postgres.accepts.begin_updates(batch) if op]
    made.extend(accepted)
    messages = messages_of(accepted, per_message=PER_MESSAGE)
    await infra.postgres.outbox.mark_published(messages)
    for n, message in enumerate(messages):
        await db.execute(
            "UPDATE operations SET published_at = now() - interval '1 hour'"
            " + make_interval(secs => $2) WHERE id = ANY($1)",
            message.operation_ids,
            n,
        )
    return messages


async def send(infra: Infrastructure, messages: list[OutgoingMessage]) -> None:
    for message in messages:
        await infra.broker.publish(message, 5)


def operations_in(messages: list[OutgoingMessage]) -> set[str]:
    return {i for message in messages for i in message.operation_ids}


async def requeued(db: asyncpg.Pool, operation_ids: list[str]) -> set[str]:
    rows = await db.fetch(
        "SELECT id FROM operations WHERE id = ANY($1) AND published_at IS NULL", operation_ids
    )
    return {r["id"] for r in rows}


async def purge(queue: str) -> None:
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        await (await channel.get_queue(queue)).purge()


async def test_a_backlog_waiting_in_the_queue_is_not_sent_again(
    infra: Infrastructure, db: asyncpg.Pool, made: list[str]
):
    """Thirty operations in six messages, all six ready: nothing is lost. (Counted in
    operations, 24 would be taken for lost and sent again.)"""
    messages = await published_long_ago(infra, db, made, 30)
    await send(infra, messages)
    pool = WorkerPool(infra, build_executor(infra))
    await pool.sweep()
    await pool.sweep()
    assert await requeued(db, made) == set()


async def test_messages_the_queue_cannot_be_holding_are_sent_again(
    infra: Infrastructure, db: asyncpg.Pool, made: list[str]
):
    messages = await published_long_ago(infra, db, made, 30)
    lost, waiting = messages[:2], messages[2:]
    await send(infra, waiting)
    pool = WorkerPool(infra, build_executor(infra))

    await pool.sweep()
    assert await requeued(db, made) == operations_in(lost), "the two messages not in the queue"

    await purge(infra.settings.amqp_queue)  # the rest are lost too
    await pool.sweep()
    assert await requeued(db, made) == set(made)
