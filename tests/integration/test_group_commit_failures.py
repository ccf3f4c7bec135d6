"""A group commit that fails gives each caller only an answer that concerns it: the batch is
one statement (all or nothing), and when it fails for a reason other than a lost database,
each of its Updates is accepted or refused alone, as it would have been without the batch.

The Update that cannot be stored here carries a lone surrogate in its description: validation
lets it through (gRPC never delivers one, as protobuf strings are UTF-8), and PostgreSQL
refuses it in JSON, a ``DataError``.
"""

from __future__ import annotations

import asyncio

import asyncpg

from service.domain.auth import Principal, Role
from service.domain.errors import InvalidArgument
from service.domain.model import ImageChange, Operation
from service.usecases.images import Images
from service.usecases.outbox import PublishedMarks
from tests.integration.rows import add_image, folder, update
from tests.unit.fakes import FakePublisher

UNSTORABLE = "half of a surrogate pair: \ud800"


def app(store) -> Images:
    return Images(
        store.accepts, store.reads, FakePublisher(), PublishedMarks(store.outbox), publish_timeout=1
    )


async def operations_of(db: asyncpg.Pool, image_ids: list[str]) -> dict[str, int]:
    rows = await db.fetch(
        "SELECT image_id, count(*) AS n FROM operations WHERE image_id = ANY($1) GROUP BY 1",
        image_ids,
    )
    return {r["image_id"]: r["n"] for r in rows}


async def test_an_update_the_database_cannot_store_fails_alone(store, db):
    f = folder()
    caller = Principal(subject="tester", role=Role.EDITOR, folders=frozenset({f}))
    first, bad, last = [await add_image(db, f) for _ in range(3)]
    images = app(store)

    results = await asyncio.gather(
        images.update_image(first, ["description"], "", "fine", {}, caller),
        images.update_image(bad, ["description"], "", UNSTORABLE, {}, caller),
        images.update_image(last, ["description"], "", "fine too", {}, caller),
        return_exceptions=True,
    )

    assert isinstance(results[0], Operation), results[0]
    assert isinstance(results[1], InvalidArgument), results[1]
    assert isinstance(results[2], Operation), results[2]
    assert await operations_of(db, [first, bad, last]) == {first: 1, last: 1}


async def test_callers_of_other_folder_filters_in_the_batch_are_not_told_of_its_failure(store, db):
    """Updates with different folder filters went in separate statements: one that failed
    after another had committed gave its error to callers whose operation was recorded."""
    f, g = folder(), folder()
    only_f = Principal(subject="tester", role=Role.EDITOR, folders=frozenset({f}))
    f_and_g = Principal(subject="tester", role=Role.EDITOR, folders=frozenset({f, g}))
    fine, bad = await add_image(db, f), await add_image(db, g)
    images = app(store)

    results = await asyncio.gather(
        images.update_image(fine, ["description"], "", "fine", {}, only_f),
        images.update_image(bad, ["description"], "", UNSTORABLE, {}, f_and_g),
        return_exceptions=True,
    )

    assert isinstance(results[0], Operation), results[0]
    assert isinstance(results[1], InvalidArgument), results[1]
    assert await operations_of(db, [fine, bad]) == {fine: 1}


async def test_a_batch_that_fails_leaves_nothing_behind_and_hands_every_update_back(store, db):
    f = folder()
    images = [await add_image(db, f) for _ in range(3)]
    batch = [
        update(images[0], ImageChange(description="a")),
        update(images[1], ImageChange(description=UNSTORABLE), [f]),
        update(images[2], ImageChange(description="c"), None),
    ]
    assert await store.accepts.begin_updates(batch) == [None, None, None]
    assert await operations_of(db, images) == {}
    statuses = await db.fetch("SELECT DISTINCT status FROM images WHERE id = ANY($1)", images)
    assert [r["status"] for r in statuses] == [2], "every image still READY"
