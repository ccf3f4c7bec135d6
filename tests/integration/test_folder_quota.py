"""The per-folder quota of unfinished operations against the real PostgreSQL: calls racing in
one folder cannot pass it together, and the count it reads (``folder_unfinished``: accepted
less released, kept by the trigger of migrations 0007 and 0009) follows every path that
starts, finishes or removes an operation.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.adapters.postgres import Postgres
from service.adapters.postgres.accept import PostgresAccepts
from service.adapters.postgres.database import Database
from service.domain import ids
from service.domain.auth import Principal, Role
from service.domain.errors import ResourceExhausted
from service.domain.model import (
    IdempotencyKey,
    Image,
    ImageChange,
    ImageStatus,
    NewImage,
    OperationKind,
    utcnow,
)
from service.runtime.waiters import OperationWaiters
from service.usecases.execute import Executor
from service.usecases.images import Images, new_operation
from service.usecases.operations import Operations
from service.usecases.outbox import PublishedMarks
from tests.integration.conftest import own_database_fixtures
from tests.integration.rows import add_image, folder, update
from tests.unit.fakes import FakeDownloader, FakePublisher

# A database of this module's own, not the run's shared one (see conftest.own_database).
# The end-to-end tests' workers would finish operations of these folders while the
# quota is counted, freeing places.
own, database_url, db = own_database_fixtures("quota")

QUOTA = 10


@pytest.fixture
async def racing(database_url: str) -> AsyncIterator[Postgres]:
    """The adapters over a pool as large as an API process's, with a quota of ``QUOTA``."""
    db = await Database.connect(database_url, min_size=10, max_size=10, command_timeout=20)
    store = Postgres.over(db, max_unfinished_per_folder=QUOTA)
    yield store
    await store.close()


def new_create(f: str, n: int) -> tuple[Image, NewImage]:
    image = Image(
        id=ids.new_id(ids.IMAGE_PREFIX),
        folder_id=f,
        name=f"img-{n}",
        description="",
        checksum="",
        status=ImageStatus.CREATING,
        created_at=utcnow(),
        labels={},
    )
    return image, NewImage(folder_id=f, name=image.name, description="", uri="http://x/", labels={})


def outcome(result: object) -> str:
    if isinstance(result, ResourceExhausted):
        assert result.quota, "a QuotaFailure detail"
        return "RESOURCE_EXHAUSTED"
    if isinstance(result, BaseException):
        return f"{type(result).__name__}: {result}"
    return "accepted"


async def test_fifty_creates_racing_for_ten_places_accept_exactly_ten(racing: Postgres):
    f = folder()

    async def create(n: int) -> object:
        image, request = new_create(f, n)
        operation = new_operation(OperationKind.CREATE_IMAGE, image.id, "tester")
        return await racing.accepts.insert_create(image, operation, request)

    results = await asyncio.gather(*(create(n) for n in range(50)), return_exceptions=True)
    assert Counter(map(outcome, results)) == {"accepted": QUOTA, "RESOURCE_EXHAUSTED": 40}


async def test_updates_racing_together_and_alone_accept_exactly_the_quota(
    racing: Postgres, db: asyncpg.Pool
):
    """Updates with and without keys, batched together or handed back alone, share one
    count."""
    f = folder()
    caller = Principal(subject="tester", role=Role.EDITOR, folders=frozenset({f}))
    images = Images(
        racing.accepts,
        racing.reads,
        FakePublisher(),
        PublishedMarks(racing.outbox),
        publish_timeout=1,
    )
    targets = [await add_image(db, f) for _ in range(40)]

    async def describe(n: int, image_id: str) -> object:
        key = None if n % 3 else IdempotencyKey("tester", f"key-{image_id}", "fp")
        return await images.update_image(image_id, ["description"], "", "d", {}, caller, key)

    results = await asyncio.gather(
        *(describe(n, i) for n, i in enumerate(targets)), return_exceptions=True
    )
    assert Counter(map(outcome, results)) == {"accepted": QUOTA, "RESOURCE_EXHAUSTED": 30}


async def test_accepts_do_not_wait_for_a_finish_in_their_folder(racing: Postgres, db: asyncpg.Pool):
    """A transaction finishing an operation holds its folder's release row, not the row the
    folder's accepts take turns on: an Update of the folder is accepted meanwhile. Until the
    finish commits, the accept counts that operation as unfinished (stricter, never looser)."""
    f = folder()
    accepts = PostgresAccepts(racing.db, max_unfinished_per_folder=2)
    first, second, third = [await add_image(db, f) for _ in range(3)]
    running = await accepts.begin_update(
        new_operation(OperationKind.UPDATE_IMAGE, first, "tester"), ImageChange(description="1")
    )
    async with db.acquire() as conn, conn.transaction():
        await conn.execute(
            "UPDATE operations SET done = true, response = '{}' WHERE id = $1", running.operation.id
        )
        # The quota (2) has room for one more while the finish is not committed.
        await asyncio.wait_for(
            accepts.begin_update(
                new_operation(OperationKind.UPDATE_IMAGE, second, "tester"),
                ImageChange(description="2"),
            ),
            timeout=5,
        )
        with pytest.raises(ResourceExhausted):
            await asyncio.wait_for(
                accepts.begin_update(
                    new_operation(OperationKind.UPDATE_IMAGE, third, "tester"),
                    ImageChange(description="3"),
                ),
                timeout=5,
            )
    # Committed, the finish frees its place.
    await accepts.begin_update(
        new_operation(OperationKind.UPDATE_IMAGE, third, "tester"), ImageChange(description="3")
    )
    kept, counted = await counts(db, [f])
    assert kept == counted == {f: 2}


async def counts(db: asyncpg.Pool, folders: list[str]) -> tuple[dict[str, int], dict[str, int]]:
    """Per folder: the kept count, and the count of its unfinished operations."""
    kept = await db.fetch(
        "SELECT folder_id, unfinished FROM folder_unfinished WHERE folder_id = ANY($1)", folders
    )
    counted = await db.fetch(
        "SELECT folder_id, count(*) AS n FROM operations WHERE folder_id = ANY($1) AND NOT done"
        " GROUP BY folder_id",
        folders,
    )
    return (
        {r["folder_id"]: r["unfinished"] for r in kept if r["unfinished"]},
        {r["folder_id"]: r["n"] for r in counted},
    )


async def test_the_kept_count_follows_every_path(store: Postgres, db: asyncpg.Pool):
    folders = [folder(), folder()]
    caller = Principal(subject="tester", role=Role.EDITOR, folders=frozenset(folders))
    images = Images(
        store.accepts, store.reads, FakePublisher(), PublishedMarks(store.outbox), publish_timeout=1
    )
    operations = Operations(
        store.reads, store.finishes, OperationWaiters(), encode=lambda _: b"", cache_size=0
    )
    executor = Executor(store.finishes, FakeDownloader(), lease_seconds=30, max_attempts=5)
    started = []
    for n in range(12):
        image_id = await add_image(db, folders[n % 2])
        started.append(await images.update_image(image_id, None, "", "d", {}, caller))
        if n % 4 == 0:
            deleted = await add_image(db, folders[n % 2])
            started.append(await images.delete_image(deleted, caller))
    for n in range(3):
        _, request = new_create(folders[n % 2], n)
        started.append(await images.create_image(request, caller))
    kept, counted = await counts(db, folders)
    assert kept == counted
    assert sum(counted.values()) == len(started) == 18

    await store.finishes.apply_updates([op.id for op in started[:4]])  # finished together
    for op in started[4:7]:
        await executor.execute(op.id)  # alone (Deletes and Updates)
    for op in started[7:10]:
        await operations.cancel_operation(op.id, caller)
    await executor.end_dead_lettered(started[10].id, 5)
    await db.execute("DELETE FROM operations WHERE id = $1", started[11].id)
    kept, counted = await counts(db, folders)
    assert kept == counted
    assert sum(counted.values()) < len(started) - 8


# -- The three copies of "accepted less released" ----------------------------------------------
#
# The unfinished count is computed in three places: accept.py's _LOCK_QUOTA (one accept),
# begin_updates.sql's quota CTE (a batch) and migration 0009's view folder_unfinished (what the
# tests and the operator read). They are kept as copies, tied together by this property test:
# random accepts (each path, with a quota near the count) and finishes (each path that finishes
# or removes an operation) in one folder, and after every step each copy must agree with the
# count of the folder's unfinished operations, the rows themselves.

ACCEPTS = ["accept_one", "accept_batch"]
FINISHES = ["apply_updates", "execute", "cancel", "dead_letter", "remove"]
STEPS = ACCEPTS + FINISHES


@settings(
    max_examples=20,
    deadline=None,
    database=None,  # nothing written under .hypothesis/; a failure prints its example
    print_blob=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    steps=st.lists(
        # what, how many, and for an accept the quota's room: the true count plus this
        st.tuples(st.sampled_from(STEPS), st.integers(1, 3), st.integers(-1, 2)),
        min_size=1,
        max_size=10,
    )
)
async def test_every_copy_of_the_unfinished_count_agrees_with_the_rows(
    store: Postgres, db: asyncpg.Pool, steps: list[tuple[str, int, int]]
):
    f = folder()
    caller = Principal(subject="tester", role=Role.EDITOR, folders=frozenset({f}))
    operations = Operations(
        store.reads, store.finishes, OperationWaiters(), encode=lambda _: b"", cache_size=0
    )
    executor = Executor(store.finishes, FakeDownloader(), lease_seconds=30, max_attempts=5)
    ready = [await add_image(db, f) for _ in range(6)]  # images an Update may start on
    running: dict[str, str] = {}  # unfinished operation -> its image, oldest first

    async def truth() -> int:
        return int(
            await db.fetchval(
                "SELECT count(*) FROM operations WHERE folder_id = $1 AND NOT done", f
            )
        )

    for what, n, room in steps:
        before = await truth()
        if what.startswith("accept"):
            quota = max(1, before + room)
            accepts = PostgresAccepts(store.db, max_unfinished_per_folder=quota)
            chosen = ready[:n]
            updates = [update(image_id, ImageChange(description="d")) for image_id in chosen]
            if what == "accept_batch":
                made = await accepts.begin_updates(updates)
            else:
                made = []
                for u in updates:
                    try:
                        made.append((await accepts.begin_update(u.operation, u.change)).operation)
                    except ResourceExhausted:
                        made.append(None)
            accepted = [(op.id, i) for op, i in zip(made, chosen, strict=True) if op is not None]
            # What the copy in that statement counted, seen through the quota it enforced.
            assert len(accepted) == min(len(chosen), max(0, quota - before)), (what, quota)
            for operation_id, image_id in accepted:
                running[operation_id] = image_id
                ready.remove(image_id)
        else:
            taken = list(running)[:n]
            if what == "apply_updates":
                await store.finishes.apply_updates(taken)
            for operation_id in taken:
                if what == "execute":
                    await executor.execute(operation_id)
                elif what == "cancel":
                    await operations.cancel_operation(operation_id, caller)
                elif what == "dead_letter":
                    await executor.end_dead_lettered(operation_id, 5)
                elif what == "remove":  # retention or an operator; the image stays UPDATING
                    await db.execute("DELETE FROM operations WHERE id = $1", operation_id)
            for operation_id in taken:
                image_id = running.pop(operation_id)
                if what != "remove":
                    ready.append(image_id)
        kept, counted = await counts(db, [f])
        assert kept.get(f, 0) == counted.get(f, 0) == await truth(), what
