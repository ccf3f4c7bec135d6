"""The state each scale phase sets up on top of the one before: written with SQL in the
service's own schema (never through the API), then settled so no measured step pays for it.
"""

from __future__ import annotations

import asyncio
import time

from bench.scale_measure import READY, UPDATING, Stack, connected, poll
from service.adapters.postgres.database import Database
from service.adapters.postgres.outbox import PostgresOutbox
from service.domain.ids import IMAGE_PREFIX, OPERATION_PREFIX, new_id
from service.usecases.outbox import publish_pending
from service.usecases.ports import OutgoingMessage, Publisher

# Outbox relays sending the backlog side by side, as relays in several worker processes do
# (each claims its batches): the worker is held back meanwhile, and not for long.
RELAYS = 8


class CountingPublisher:
    """Publishes through ``publisher``, counting the messages it sent."""

    def __init__(self, publisher: Publisher) -> None:
        self._publisher = publisher
        self.messages = 0

    def is_healthy(self) -> bool:
        return self._publisher.is_healthy()

    async def publish(self, message: OutgoingMessage, timeout: float) -> None:
        await self._publisher.publish(message, timeout)
        self.messages += 1


async def insert_images(stack: Stack, count: int, folders: int) -> list[str]:
    """``count`` READY images over ``folders`` folders, added to the stack's images."""
    start = len(stack.images)
    ids = [new_id(IMAGE_PREFIX) for _ in range(count)]
    await stack.conn.copy_records_to_table(
        "images",
        records=[
            (image_id, f"scale-{(start + n) % folders}", f"s-{start + n}", READY)
            for n, image_id in enumerate(ids)
        ],
        columns=["id", "folder_id", "name", "status"],
    )
    stack.images += ids
    return ids


async def queue_backlog(stack: Stack, image_ids: list[str]) -> dict[str, float]:
    """Unfinished Updates of ``image_ids`` as an API leaves them that stopped before
    publishing: images UPDATING, operations recorded and never published. Then the
    service's outbox relay (its use case, adapters and settings, run here: in the worker
    process it runs beside a consumer) sends them to the queue."""
    started = time.perf_counter()
    operation_ids = [new_id(OPERATION_PREFIX) for _ in image_ids]
    async with stack.conn.transaction():
        await stack.conn.execute(
            "UPDATE images SET status = $2 WHERE id = ANY($1::text[])", image_ids, UPDATING
        )
        await stack.conn.execute(
            "INSERT INTO operations (id, kind, image_id, folder_id, description, created_at,"
            " created_by, modified_at, request)"
            " SELECT o.id, 'update_image', i.id, i.folder_id, 'Update image', o.at, 'scale',"
            " o.at, jsonb_build_object('description', 'queued')"
            " FROM (SELECT id, image_id,"
            "       now() - interval '1 minute' + n * interval '1 millisecond' AS at"
            "       FROM unnest($1::text[], $2::text[])"
            "       WITH ORDINALITY AS u(id, image_id, n)) o"
            " JOIN images i ON i.id = o.image_id",
            operation_ids,
            image_ids,
        )
    inserted = time.perf_counter()
    settings = stack.settings
    db = await Database.connect(stack.url, min_size=1, max_size=RELAYS, command_timeout=60)
    try:
        async with connected(settings) as broker:
            counting = CountingPublisher(broker)

            async def relay() -> int:
                published = 0
                while sent := await publish_pending(
                    PostgresOutbox(db),
                    counting,
                    older_than=settings.outbox_grace_seconds,
                    publish_timeout=settings.publish_timeout_seconds,
                ):
                    published += sent
                return published

            published = sum(await asyncio.gather(*(relay() for _ in range(RELAYS))))
            if published != len(image_ids):
                raise SystemExit(f"the relays sent {published} of {len(image_ids)}")

            async def queued() -> bool:
                # Counted in messages, as the broker counts: a held-back worker holds a full
                # prefetch of them, unacknowledged.
                depth = await broker.queue_depth()
                held = depth.consumers * settings.worker_concurrency
                return depth.ready + held >= counting.messages

            if not await poll(queued, 30):
                raise SystemExit("the queue does not hold the operations the relay sent")
    finally:
        await db.close()
    return {
        "insert": round(inserted - started, 2),
        "relay": round(time.perf_counter() - inserted, 2),
    }


async def insert_finished(stack: Stack, count: int) -> dict[str, float]:
    """``count`` finished Updates over the images (and so their folders), in one
    statement, their times spread over the last three days."""
    started = time.perf_counter()
    await stack.conn.execute(
        "INSERT INTO operations (id, kind, image_id, folder_id, description, created_at,"
        " created_by, modified_at, done, request, response, published_at)"
        " SELECT 'opn' || substr(md5(g.n::text), 1, 17), 'update_image', i.id, i.folder_id,"
        "  'Update image', g.at, 'scale', g.at + interval '20 milliseconds', true,"
        "  jsonb_build_object('description', 'finished ' || g.n),"
        "  jsonb_build_object('id', i.id, 'folder_id', i.folder_id, 'name', i.name,"
        "   'description', 'finished ' || g.n, 'checksum', i.checksum, 'status', $2::int,"
        "   'created_at', to_char(i.created_at AT TIME ZONE 'UTC',"
        '                         \'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"\'),'
        "   'labels', i.labels),"
        "  g.at"
        " FROM (SELECT n, now() - random() * interval '3 days' AS at"
        "       FROM generate_series(1, $1) AS n) g"
        " JOIN (SELECT row_number() OVER (ORDER BY id) - 1 AS nth, * FROM images) i"
        "   ON i.nth = g.n % (SELECT count(*) FROM images)",
        count,
        READY,
    )
    return {"insert": round(time.perf_counter() - started, 2)}


async def settle(stack: Stack) -> dict[str, float]:
    """Vacuum, analyze and checkpoint: the next step pays for none of the setup's writes."""
    started = time.perf_counter()
    await stack.conn.execute("VACUUM ANALYZE")
    await stack.conn.execute("CHECKPOINT")
    return {"vacuum_analyze_checkpoint": round(time.perf_counter() - started, 2)}
