"""Every path that locks several rows takes them in one order (operations by ID, then images by
ID, then the folders' quota rows by folder), or skips what another holds; so the paths run
together against the real PostgreSQL and PostgreSQL detects no deadlock.

The paths: the API's accept (one Update, and the group commit, each with and without
idempotency keys; keyed calls share keys with calls running at the same time, as a client's
retries do), its published marks, the workers' one-statement apply and their transaction,
Cancel, the outbox relay and the sweeper. Every keyed accept takes its key's lock before any
row.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import replace

import asyncpg

from service.adapters.postgres import Postgres
from service.adapters.postgres.database import Database
from service.domain import ids
from service.domain.auth import Principal, Role
from service.domain.errors import ServiceError
from service.domain.model import IdempotencyKey, ImageChange
from service.runtime.waiters import OperationWaiters
from service.usecases.execute import Executor
from service.usecases.operations import Operations
from service.usecases.outbox import publish_pending, requeue_abandoned
from service.usecases.ports import QueueDepth
from tests.integration.conftest import own_database_fixtures
from tests.integration.rows import add_image, folder, update
from tests.support import messages_of
from tests.unit.fakes import FakeDownloader, FakePublisher

# A database of this module's own, not the run's shared one (see conftest.own_database).
# Its relay and sweeper take every operation of the database, and it counts the
# database's deadlocks: the end-to-end tests' processes would be in both.
own, database_url, db = own_database_fixtures("lock_order")

LOAD_SECONDS = 6.0


class EmptyQueue:
    """The broker as the sweeper sees it: nothing waits in the queue."""

    async def queue_depth(self) -> QueueDepth:
        return QueueDepth(ready=0, consumers=0)


async def deadlocks(db: asyncpg.Pool) -> int:
    return int(
        await db.fetchval(
            "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()"
        )
    )


async def test_every_path_together_detects_no_deadlock(database_url: str, db: asyncpg.Pool):
    before = await deadlocks(db)
    database = await Database.connect(database_url, min_size=4, max_size=12, command_timeout=20)
    store = Postgres.over(database)
    folders = [folder() for _ in range(3)]
    caller = Principal(subject="tester", role=Role.EDITOR, folders=frozenset(folders))
    operations = Operations(
        store.reads, store.finishes, OperationWaiters(), encode=lambda _: b"", cache_size=0
    )
    executor = Executor(store.finishes, FakeDownloader(), lease_seconds=30, max_attempts=5)
    images = [await add_image(db, random.choice(folders)) for _ in range(240)]
    accepted: list[str] = []  # operation IDs, in the order accepted (not the IDs' order)
    errors: Counter[str] = Counter()
    steps: Counter[str] = Counter()
    stop = asyncio.Event()

    def some(count: int) -> list[str]:
        return random.sample(accepted, min(count, len(accepted)))

    async def accept() -> None:
        batch = [update(i, ImageChange(description="d")) for i in random.sample(images, 60)]
        accepted.extend(op.id for op in await store.accepts.begin_updates(batch) if op)
        single = update(random.choice(images), ImageChange(description="s"))
        with contextlib.suppress(ServiceError):  # not READY: refused, as it should be
            done = await store.accepts.begin_update(single.operation, single.change)
            accepted.append(done.operation.id)

    async def accept_keyed() -> None:
        """A keyed batch and keyed single Updates at once, on the same keys (a request
        retried, whichever path it takes): each key starts one operation."""
        keys = [IdempotencyKey("tester", ids.new_id("key"), "same") for _ in range(12)]
        batch = [
            replace(update(i, ImageChange(description="k")), idempotency=random.choice(keys))
            for i in random.sample(images, 30)
        ]

        async def alone() -> None:
            single = update(random.choice(images), ImageChange(description="k"))
            with contextlib.suppress(ServiceError):  # not READY: refused
                done = await store.accepts.begin_update(
                    single.operation, single.change, random.choice(keys)
                )
                if not done.replayed:
                    accepted.append(done.operation.id)

        together, *_ = await asyncio.gather(
            store.accepts.begin_updates(batch), *(alone() for _ in range(4))
        )
        accepted.extend(op.id for op in together if op)

    async def mark() -> None:
        await store.outbox.mark_published(messages_of(some(400), per_message=50))

    async def apply_together() -> None:
        await store.finishes.apply_updates(some(80))

    async def apply_alone() -> None:
        await asyncio.gather(*(executor.execute(i) for i in some(6)))

    async def cancel() -> None:
        await asyncio.gather(*(operations.cancel_operation(i, caller) for i in some(3)))

    async def relay() -> None:
        publisher = FakePublisher()
        await publish_pending(store.outbox, publisher, older_than=0, publish_timeout=1)

    async def sweep() -> None:
        await requeue_abandoned(store.outbox, EmptyQueue(), republish_after_seconds=0.0, prefetch=1)

    async def loop(name: str, step: Callable[[], Awaitable[None]]) -> None:
        while not stop.is_set():
            try:
                await step()
                steps[name] += 1
            except ServiceError as exc:
                errors[f"{name}: {exc.message}"] += 1
            await asyncio.sleep(0)

    paths = {
        "accept": accept,
        "accept_keyed": accept_keyed,
        "mark": mark,
        "apply_together": apply_together,
        "apply_alone": apply_alone,
        "cancel": cancel,
        "relay": relay,
        "sweep": sweep,
    }
    tasks = [asyncio.create_task(loop(n, s)) for n, s in paths.items() for _ in range(2)]
    try:
        await asyncio.sleep(LOAD_SECONDS)  # the duration of the load, not a wait for a condition
    finally:
        stop.set()
        await asyncio.gather(*tasks)
        await store.close()  # the sessions end: their statistics reach pg_stat_database
    assert all(steps[name] > 3 for name in paths), steps
    assert not errors, errors
    assert await deadlocks(db) == before
