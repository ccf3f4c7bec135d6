"""The outbox relay sends outside any transaction: it claims a batch of unpublished operations
for a short while (one statement, committed), publishes, then marks what was sent. A slow
broker holds no row lock, and relays running together still never send one row at once.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from service.adapters.postgres import Postgres
from service.adapters.postgres.database import Database
from service.domain.model import ImageChange
from service.usecases.outbox import RELAY_BATCH, publish_pending
from service.usecases.ports import OutgoingMessage
from tests.integration.conftest import own_database_fixtures
from tests.integration.rows import add_image, folder, update
from tests.support import eventually

# A database of this module's own, not the run's shared one (see conftest.own_database).
own, database_url, db = own_database_fixtures("relay")

APPLICATION = "relay-claims-test"


class SlowBroker:
    """A publisher whose publishes wait for ``go`` (each confirm takes as long as the test
    wants); records what it sent."""

    def __init__(self) -> None:
        self.go = asyncio.Event()
        self.waiting: list[str] = []
        self.published: list[str] = []

    def is_healthy(self) -> bool:
        return True

    async def publish(self, message: OutgoingMessage, timeout: float) -> None:
        self.waiting.extend(message.operation_ids)
        await self.go.wait()
        for _ in range(3):  # a confirm takes a few turns of the loop
            await asyncio.sleep(0)
        self.published.extend(message.operation_ids)


async def unpublished_operations(store: Postgres, db: asyncpg.Pool, count: int) -> list[str]:
    f = folder()
    batch = [update(await add_image(db, f), ImageChange(description="d")) for _ in range(count)]
    accepted = [op.id for op in await store.accepts.begin_updates(batch) if op]
    # Accepted a while ago, never published: the relay's to send.
    await db.execute(
        "UPDATE operations SET created_at = now() - interval '1 minute' WHERE id = ANY($1)",
        accepted,
    )
    return accepted


@pytest.fixture
async def relay_store(database_url: str):
    parts = urlsplit(database_url)
    url = urlunsplit(parts._replace(query=f"application_name={APPLICATION}"))
    store = Postgres.over(await Database.connect(url, min_size=1, max_size=4, command_timeout=10))
    yield store
    await store.close()


async def test_a_slow_broker_holds_no_lock_on_the_operations_being_sent(
    relay_store: Postgres, db: asyncpg.Pool
):
    operations = await unpublished_operations(relay_store, db, 3)
    broker = SlowBroker()
    relay = asyncio.create_task(
        publish_pending(relay_store.outbox, broker, older_than=30, publish_timeout=5)
    )
    try:

        async def publishing() -> bool:
            return bool(broker.waiting)

        await eventually(publishing, timeout=10, what="the relay to publish")
        async with db.acquire() as conn, conn.transaction():
            # A worker finishing the operation meanwhile does not wait for the relay.
            await conn.execute("SET LOCAL lock_timeout = '2s'")
            await conn.execute(
                "UPDATE operations SET modified_at = now() WHERE id = ANY($1)", operations
            )
        in_transaction = await db.fetch(
            "SELECT state, query FROM pg_stat_activity WHERE datname = current_database()"
            " AND application_name = $1 AND state LIKE 'idle in transaction%'",
            APPLICATION,
        )
        assert in_transaction == [], "no transaction is left open while the broker confirms"
    finally:
        broker.go.set()
        sent = await asyncio.wait_for(relay, 10)
    assert sent >= len(operations)
    marked = await db.fetchval(
        "SELECT count(*) FROM operations WHERE id = ANY($1) AND published_at IS NOT NULL",
        operations,
    )
    assert marked == len(operations)


async def test_relays_running_together_never_send_one_operation_twice(
    relay_store: Postgres, db: asyncpg.Pool
):
    """Three relays, two and a half batches: every broker confirm is held until each relay
    has claimed a batch of its own, so the three share the work by construction (not by the
    scheduler's luck), then all confirm at once."""
    operations = await unpublished_operations(relay_store, db, 2 * RELAY_BATCH + RELAY_BATCH // 2)
    brokers = [SlowBroker() for _ in range(3)]
    relays = [
        asyncio.create_task(
            # A claim outlasting the wait below: no relay gives its batch back meanwhile.
            publish_pending(
                relay_store.outbox, b, older_than=30, publish_timeout=5, claim_seconds=300
            )
        )
        for b in brokers
    ]
    try:

        async def each_relay_holds_a_batch() -> bool:
            for relay in relays:
                if relay.done():
                    relay.result()  # a failure, or a relay that found nothing to claim
                    raise AssertionError("a relay finished before the others claimed")
            return all(b.waiting for b in brokers)

        await eventually(each_relay_holds_a_batch, timeout=30, what="each relay to claim")
    finally:
        for b in brokers:
            b.go.set()
        sent_counts = await asyncio.wait_for(asyncio.gather(*relays), 60)
    sent = Counter(i for b in brokers for i in b.published if i in operations)
    assert set(sent) == set(operations)
    assert max(sent.values()) == 1, [i for i, n in sent.items() if n > 1]
    # Each relay sent the batch it held (claims skip the rows another claim holds at that
    # moment, so a batch may come out a row or two short and the rest go to another).
    assert all(count > 0 for count in sent_counts), sent_counts
    assert sum(sent_counts) == len(operations), sent_counts
