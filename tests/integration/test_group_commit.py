"""Accepting many Updates in one statement, and reading many operations in one query, against
the real PostgreSQL: each is accepted, refused or read exactly as it would be alone."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable

import pytest

from service.adapters.rabbitmq import Broker
from service.domain import ids
from service.domain.auth import Principal, Role
from service.domain.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from service.domain.model import IdempotencyKey, ImageChange, Operation
from service.usecases.images import Images
from service.usecases.outbox import PublishedMarks
from tests.conftest import AMQP_URL
from tests.integration.conftest import own_database_fixtures
from tests.integration.rows import CREATING, READY, UPDATING, add_image, folder, update
from tests.support import eventually, messages_of

# A database of this module's own, not the run's shared one (see conftest.own_database).
# Counts sessions waiting on locks, and applies what it accepted: the end-to-end tests'
# processes wait on locks too, and their workers would apply these operations first.
own, database_url, db = own_database_fixtures("group_commit")


async def test_a_batch_of_updates_is_accepted_with_one_operation_row_each(store, db):
    f = folder()
    images = [await add_image(db, f) for _ in range(5)]
    batch = [update(i, ImageChange(description=f"d{n}")) for n, i in enumerate(images)]
    accepted = await store.accepts.begin_updates(batch)
    assert [op.id if op else None for op in accepted] == [u.operation.id for u in batch]
    assert all(op is not None and op.folder_id == f for op in accepted)
    rows = await db.fetch(
        "SELECT id, image_id, folder_id, request, created_by, done FROM operations"
        " WHERE image_id = ANY($1) ORDER BY image_id",
        images,
    )
    assert sorted((r["image_id"], json.loads(r["request"])["description"]) for r in rows) == sorted(
        (i, f"d{n}") for n, i in enumerate(images)
    )
    assert all(r["folder_id"] == f and r["created_by"] == "tester" and not r["done"] for r in rows)
    statuses = await db.fetch("SELECT status FROM images WHERE id = ANY($1)", images)
    assert {r["status"] for r in statuses} == {UPDATING}


async def test_what_a_batch_does_not_accept_is_left_untouched(store, db):
    f, other = folder(), folder()
    ready = await add_image(db, f)
    twice = await add_image(db, f)
    creating = await add_image(db, f, status=CREATING)
    hidden = await add_image(db, other)
    renamed = await add_image(db, f)
    await add_image(db, f, name="taken")
    batch = [
        update(ready, ImageChange(description="ok"), [f]),
        update(twice, ImageChange(description="first"), [f]),
        update(twice, ImageChange(description="second"), [f]),
        update(creating, ImageChange(description="no"), [f]),
        update(hidden, ImageChange(description="no"), [f]),
        update(renamed, ImageChange(name="taken"), [f]),
        update(ids.new_id(ids.IMAGE_PREFIX), ImageChange(description="no such image"), [f]),
    ]
    accepted = await store.accepts.begin_updates(batch)
    assert accepted[0] is not None
    assert (accepted[1] is None) != (accepted[2] is None), "exactly one Update of one image"
    assert accepted[3:] == [None, None, None, None]
    count = await db.fetchval(
        "SELECT count(*) FROM operations WHERE image_id = ANY($1)",
        [ready, twice, creating, hidden, renamed],
    )
    assert count == 2
    statuses = dict(
        await db.fetch(
            "SELECT id, status FROM images WHERE id = ANY($1)", [creating, hidden, renamed]
        )
    )
    assert statuses == {creating: CREATING, hidden: READY, renamed: READY}


async def test_updates_with_other_folder_filters_in_one_batch_each_see_their_own(store, db):
    f, g = folder(), folder()
    in_f, in_g = await add_image(db, f), await add_image(db, g)
    batch = [
        update(in_f, ImageChange(description="f"), [f]),
        update(in_g, ImageChange(description="g sees f? no"), [f]),
        update(in_g, ImageChange(description="g"), [g]),
        update(in_f, ImageChange(description="everyone"), None),
    ]
    accepted = await store.accepts.begin_updates(batch)
    assert accepted[0] is not None
    assert accepted[0].folder_id == f
    assert accepted[1] is None
    assert accepted[2] is not None
    assert accepted[2].folder_id == g
    assert accepted[3] is None, "the image is UPDATING after the first Update"


async def test_operations_are_read_together_in_the_order_asked(store, db):
    f = folder()
    images = [await add_image(db, f) for _ in range(3)]
    batch = [update(i, ImageChange(description="x")) for i in images]
    accepted = await store.accepts.begin_updates(batch)
    wanted = [accepted[2].id, ids.new_id(ids.OPERATION_PREFIX), accepted[0].id, accepted[2].id]
    read = await store.reads.get_operations(wanted)
    assert [op.id if op else None for op in read] == [wanted[0], None, wanted[2], wanted[3]]
    assert read[0].image_id == images[2]
    assert not read[0].done


@pytest.fixture
async def broker(queue_names) -> AsyncIterator[Broker]:
    broker = Broker(AMQP_URL, queue_names("group-commit"), 5)
    connecting = asyncio.create_task(broker.connect())
    await broker.wait_connected(30)
    yield broker
    await connecting
    await broker.close()


async def test_concurrent_updates_through_the_app_get_the_same_answers_as_alone(store, db, broker):
    """Group commit changes no answer: one Update per image is accepted, the others get the
    precise error they would get one at a time."""
    f = folder()
    app = Images(
        store.accepts, store.reads, broker, PublishedMarks(store.outbox), publish_timeout=5
    )
    caller = Principal(subject="tester", role=Role.EDITOR, folders=frozenset({f}))
    images = [await add_image(db, f) for _ in range(4)]
    creating = await add_image(db, f, status=CREATING)
    await add_image(db, f, name="taken")

    def describe(image_id: str, text: str) -> Awaitable[Operation]:
        return app.update_image(image_id, ["description"], "", text, {}, caller)

    calls = [describe(i, "a") for i in images]
    calls += [describe(i, "b") for i in images]
    calls.append(describe(creating, "c"))
    calls.append(app.update_image(images[0], ["name"], "taken", "", {}, caller))
    calls.append(describe(ids.new_id(ids.IMAGE_PREFIX), "d"))
    results = await asyncio.gather(*calls, return_exceptions=True)
    per_image = [
        [r for r in (results[n], results[n + 4]) if isinstance(r, Operation)] for n in range(4)
    ]
    assert all(len(accepted) == 1 for accepted in per_image), results
    refused = [r for r in results[:8] if not isinstance(r, Operation)]
    assert len(refused) == 4, refused
    assert all(isinstance(r, FailedPrecondition) for r in refused), refused
    assert isinstance(results[8], FailedPrecondition), results[8]
    # The image is UPDATING by now, so the rename is refused for that (checked first).
    assert isinstance(results[9], FailedPrecondition | AlreadyExists), results[9]
    assert isinstance(results[10], NotFound), results[10]


def keyed_app(store, broker, f: str) -> tuple[Images, Principal]:
    app = Images(
        store.accepts, store.reads, broker, PublishedMarks(store.outbox), publish_timeout=5
    )
    return app, Principal(subject="tester", role=Role.EDITOR, folders=frozenset({f}))


def key(text: str, fingerprint: str = "request-1") -> IdempotencyKey:
    return IdempotencyKey(caller="tester", key=text, fingerprint=fingerprint)


async def test_keyed_updates_are_accepted_together_and_their_keys_kept(store, db, broker):
    f = folder()
    app, caller = keyed_app(store, broker, f)
    images = [await add_image(db, f) for _ in range(3)]
    texts = [f"k-{ids.new_id('key')}" for _ in images]
    operations = await asyncio.gather(
        *(
            app.update_image(i, ["description"], "", "new", {}, caller, key(t))
            for i, t in zip(images, texts, strict=True)
        )
    )
    kept = await db.fetch(
        "SELECT key, operation_id FROM idempotency_keys WHERE key = ANY($1)", texts
    )
    assert {r["key"]: r["operation_id"] for r in kept} == {
        t: op.id for t, op in zip(texts, operations, strict=True)
    }
    # A retry of each call (the same key, the same request) answers the same operation.
    again = await asyncio.gather(
        *(
            app.update_image(i, ["description"], "", "new", {}, caller, key(t))
            for i, t in zip(images, texts, strict=True)
        )
    )
    assert [op.id for op in again] == [op.id for op in operations]
    assert await db.fetchval(
        "SELECT count(*) FROM operations WHERE image_id = ANY($1)", images
    ) == len(images)


async def test_one_key_twice_in_one_batch_starts_one_operation(store, db, broker):
    f = folder()
    app, caller = keyed_app(store, broker, f)
    image = await add_image(db, f)
    text = f"k-{ids.new_id('key')}"
    first, again = await asyncio.gather(
        app.update_image(image, ["description"], "", "new", {}, caller, key(text)),
        app.update_image(image, ["description"], "", "new", {}, caller, key(text)),
    )
    assert again.id == first.id
    assert await db.fetchval("SELECT count(*) FROM operations WHERE image_id = $1", image) == 1


async def test_a_key_reused_for_another_request_is_refused_in_a_batch(store, db, broker):
    f = folder()
    app, caller = keyed_app(store, broker, f)
    one, other = await add_image(db, f), await add_image(db, f)
    text = f"k-{ids.new_id('key')}"
    results = await asyncio.gather(
        app.update_image(one, ["description"], "", "new", {}, caller, key(text)),
        app.update_image(other, ["description"], "", "x", {}, caller, key(text, "request-2")),
        return_exceptions=True,
    )
    assert isinstance(results[0], Operation), results
    assert isinstance(results[1], InvalidArgument), results
    assert [v.field for v in results[1].violations] == ["idempotency-key"]
    assert await db.fetchval("SELECT status FROM images WHERE id = $1", other) == READY


async def test_a_key_taken_by_a_racing_call_hands_the_batch_back(store, db, broker):
    """A racing call holds the key's lock and records the key after the batch's statement
    began: the batch waits for the lock, then fails on the key, and every Update of it is
    answered alone, the keyed one with the racing call's operation, the others accepted."""
    f = folder()
    app, caller = keyed_app(store, broker, f)
    raced, bystander = await add_image(db, f), await add_image(db, f)
    text = f"k-{ids.new_id('key')}"
    racing_operation = ids.new_id(ids.OPERATION_PREFIX)
    async with db.acquire() as conn:
        held = conn.transaction()
        await held.start()
        # As every keyed accept does: the key's lock first (accept._CLAIM_KEY).
        await conn.execute("SELECT pg_advisory_xact_lock(idempotency_key_lock('tester', $1))", text)
        await conn.execute(
            "INSERT INTO idempotency_keys (caller, key, fingerprint, operation_id)"
            " VALUES ('tester', $1, 'request-1', $2)",
            text,
            racing_operation,
        )
        batch = asyncio.gather(
            app.update_image(raced, ["description"], "", "new", {}, caller, key(text)),
            app.update_image(bystander, ["description"], "", "new", {}, caller),
            return_exceptions=True,
        )
        # The batch waits on the key the open transaction holds.
        await eventually(
            lambda: db.fetchval(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE wait_event_type = 'Lock' AND datname = current_database()"
            ),
            what="the batch waiting on the held key",
        )
        await conn.execute(
            "INSERT INTO operations (id, kind, image_id, folder_id, description, request)"
            " VALUES ($1, 'update_image', $2, $3, 'Update image', '{}')",
            racing_operation,
            raced,
            f,
        )
        await held.commit()
    replayed, accepted = await batch
    assert isinstance(replayed, Operation), replayed
    assert replayed.id == racing_operation
    assert isinstance(accepted, Operation), accepted
    assert await db.fetchval("SELECT status FROM images WHERE id = $1", raced) == READY


async def test_an_accepted_update_is_answered_with_the_times_its_row_keeps(store, db):
    """A replay reads the operation back from its row: the first answer must say the same.
    Both times are one reading of the clock, in a batch and alone."""
    f = folder()
    batch = [update(await add_image(db, f), ImageChange(description="d")) for _ in range(200)]
    answered = [op for op in await store.accepts.begin_updates(batch) if op]
    alone = update(await add_image(db, f), ImageChange(description="d"))
    answered.append((await store.accepts.begin_update(alone.operation, alone.change)).operation)
    rows = {
        r["id"]: (r["created_at"], r["modified_at"])
        for r in await db.fetch(
            "SELECT id, created_at, modified_at FROM operations WHERE id = ANY($1)",
            [op.id for op in answered],
        )
    }
    assert len(answered) == 201
    assert {op.id: (op.created_at, op.modified_at) for op in answered} == rows


async def test_batches_sharing_images_in_opposite_orders_do_not_deadlock(store, db):
    """Both batches queue behind a session holding the images, then go one after the other."""
    f = folder()
    a, b = await add_image(db, f), await add_image(db, f)
    async with db.acquire() as conn, conn.transaction():
        await conn.execute("SELECT 1 FROM images WHERE id = ANY($1) FOR UPDATE", [a, b])
        first = asyncio.create_task(
            store.accepts.begin_updates(
                [update(a, ImageChange(description="1a")), update(b, ImageChange(description="1b"))]
            )
        )
        second = asyncio.create_task(
            store.accepts.begin_updates(
                [update(b, ImageChange(description="2b")), update(a, ImageChange(description="2a"))]
            )
        )

        async def both_waiting() -> bool:
            waiting = await db.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND wait_event_type = 'Lock' AND query ILIKE '%requested%'"
            )
            return waiting == 2

        await eventually(both_waiting, timeout=10, what="both batches to wait for the images")
    results = await asyncio.gather(first, second)
    accepted = [op for batch in results for op in batch if op is not None]
    assert sorted(op.image_id for op in accepted) == sorted([a, b])


async def test_published_marks_spare_operations_already_done(store, db):
    f = folder()
    done_image, queued_image = await add_image(db, f), await add_image(db, f)
    done, queued = await store.accepts.begin_updates(
        [update(done_image, ImageChange(description="d")), update(queued_image, ImageChange())]
    )
    assert await store.finishes.apply_updates([done.id]) == [True]
    await store.outbox.mark_published(messages_of([done.id, queued.id], per_message=2))
    marks = dict(
        await db.fetch(
            "SELECT id, published_at IS NOT NULL FROM operations WHERE id = ANY($1)",
            [done.id, queued.id],
        )
    )
    assert marks == {done.id: False, queued.id: True}
