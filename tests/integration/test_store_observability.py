"""What the PostgreSQL adapters record for metrics and traces, against the real database:
every committed finish counted once with its time since acceptance, the accepting call's trace
context kept on the operation row for the relay, and the sampled gauges."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import pytest
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import REGISTRY

from service.adapters.postgres.gauges import DatabaseGauges
from service.domain.errors import Code
from service.domain.model import ImageChange, OperationError
from service.runtime import tracing
from tests.integration.conftest import own_database_fixtures
from tests.integration.rows import add_image, folder, update
from tests.support import messages_of

# A database of this module's own, not the run's shared one (see conftest.own_database).
# Claims every unpublished operation and counts every unfinished one: the end-to-end
# tests' processes change both meanwhile.
own, database_url, db = own_database_fixtures("observability")

CALLER = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
FINISHED = "image_service_operations_finished_total"
DURATION = "image_service_operation_duration_seconds_count"


def sample(metric: str, /, **labels: str) -> float:
    return REGISTRY.get_sample_value(metric, labels) or 0.0


def counts() -> tuple[float, float, float]:
    return (
        sample(FINISHED, kind="update_image", outcome="OK"),
        sample(FINISHED, kind="update_image", outcome="CANCELLED"),
        sample(DURATION, kind="update_image"),
    )


@pytest.fixture
def traced() -> Iterator[None]:
    tracing.use(TracerProvider())
    yield
    tracing.use(None)


async def accepted(store, db) -> str:
    image_id = await add_image(db, folder())
    [operation] = await store.accepts.begin_updates(
        [update(image_id, ImageChange(description="x"))]
    )
    assert operation is not None
    return operation.id


async def test_an_update_applied_in_one_statement_is_counted_with_its_time(store, db):
    ok, _, timed = counts()
    operation_id = await accepted(store, db)

    assert await store.finishes.apply_updates([operation_id]) == [True]
    assert await store.finishes.apply_updates([operation_id]) == [False]  # done already

    assert counts() == (ok + 1, _, timed + 1)


async def test_a_finish_is_counted_once_committed_with_its_outcome(store, db):
    ok, cancelled, timed = counts()
    operation_id = await accepted(store, db)

    async with store.finishes.transaction() as tx:
        await tx.finish(operation_id, error=OperationError(Code.CANCELLED, "Operation cancelled"))
        assert counts() == (ok, cancelled, timed)  # not before the commit

    assert counts() == (ok, cancelled + 1, timed + 1)


async def test_a_finish_rolled_back_is_not_counted(store, db):
    before = counts()
    operation_id = await accepted(store, db)

    async def finish_then_fail() -> None:
        async with store.finishes.transaction() as tx:
            await tx.finish(operation_id, error=OperationError(Code.INTERNAL, "x"))
            raise RuntimeError("the transaction fails after the finish")

    with pytest.raises(RuntimeError):
        await finish_then_fail()

    assert counts() == before
    assert not await db.fetchval("SELECT done FROM operations WHERE id = $1", operation_id)


async def test_the_accepting_calls_trace_context_is_kept_for_the_relay(store, db, traced):
    image_id = await add_image(db, folder())
    batched = replace(update(image_id, ImageChange(description="batched")), trace_context=CALLER)
    [in_batch] = await store.accepts.begin_updates([batched])
    other = await add_image(db, folder())
    with tracing.span("call") as span:
        alone = await store.accepts.begin_update(
            update(other, ImageChange(description="alone")).operation,
            ImageChange(description="alone"),
        )
    assert in_batch is not None

    ids = [in_batch.id, alone.operation.id]
    claimed = await store.outbox.claim_unpublished(0, 10_000, 30)
    kept = {item.operation_id: item.trace_context for item in claimed}
    await store.outbox.release_claims(list(kept))
    assert kept[in_batch.id] == CALLER
    assert kept[alone.operation.id].split("-")[1:3] == [
        f"{span.context.trace_id:032x}",
        f"{span.context.span_id:016x}",
    ]
    await store.outbox.mark_published(messages_of(ids))


async def test_without_tracing_no_trace_context_is_kept(store, db):
    operation_id = await accepted(store, db)
    assert (
        await db.fetchval("SELECT trace_context FROM operations WHERE id = $1", operation_id)
        is None
    )
    await store.outbox.mark_published(messages_of([operation_id]))


async def test_the_gauges_sample_the_pool_and_count_the_operations(store, db):
    operation_id = await accepted(store, db)
    expected = await db.fetchrow(
        "SELECT count(*) AS unfinished, count(*) FILTER (WHERE published_at IS NULL) AS unpublished"
        " FROM operations WHERE NOT done"
    )
    gauges = DatabaseGauges(store.db, count_operations=True)
    await gauges.refresh()

    assert REGISTRY.get_sample_value("image_service_db_pool_connections") >= 1
    assert REGISTRY.get_sample_value("image_service_db_pool_connections_in_use") == 0
    # Registered in this process's metrics by the gauges that count.
    assert (
        REGISTRY.get_sample_value("image_service_operations_unfinished") == (expected["unfinished"])
    )
    assert REGISTRY.get_sample_value("image_service_outbox_backlog") == expected["unpublished"]
    assert expected["unpublished"] >= 1  # this test's operation, never published
    await store.finishes.apply_updates([operation_id])
