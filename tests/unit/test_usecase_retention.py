"""Retention: finished operations and idempotency keys past their age are removed in batches."""

from __future__ import annotations

import pytest
from structlog.testing import capture_logs

from service.domain.model import IdempotencyKey, OperationKind
from service.usecases.retention import BATCH, Purged, purge_expired
from tests.unit.fakes import FakeStore

UPDATE = OperationKind.UPDATE_IMAGE
RETENTION = 3600.0
KEY_TTL = 600.0


@pytest.fixture
def store() -> FakeStore:
    return FakeStore()


def finished(store: FakeStore, count: int) -> None:
    image = store.add_image()
    for _ in range(count):
        store.add_operation(UPDATE, image.id, done=True, response=image)


async def purge(store: FakeStore) -> Purged:
    return await purge_expired(
        store, operation_retention_seconds=RETENTION, idempotency_ttl_seconds=KEY_TTL
    )


async def test_old_finished_operations_are_removed_in_batches_until_a_short_one(
    store: FakeStore,
):
    finished(store, 2 * BATCH + 500)
    store.advance(RETENTION + 1)
    assert (await purge(store)).operations == 2 * BATCH + 500
    assert store.calls["delete_finished_operations"] == 3
    assert store.state.operations == {}


async def test_a_last_full_batch_is_followed_by_one_more_look(store: FakeStore):
    finished(store, 2 * BATCH)
    store.advance(RETENTION + 1)
    assert (await purge(store)).operations == 2 * BATCH
    assert store.calls["delete_finished_operations"] == 3


async def test_unfinished_and_recent_operations_are_kept(store: FakeStore):
    image = store.add_image()
    unfinished = store.add_operation(UPDATE, image.id)
    store.add_operation(UPDATE, image.id, done=True, response=image)
    store.advance(RETENTION + 1)
    recent = store.add_operation(UPDATE, image.id, done=True, response=image)
    assert (await purge(store)).operations == 1
    assert set(store.state.operations) == {unfinished.id, recent.id}


async def test_expired_idempotency_keys_are_removed_and_counted(store: FakeStore):
    image = store.add_image()
    for n in range(2):
        operation = store.add_operation(UPDATE, image.id)
        store.add_key(IdempotencyKey("alice", f"key-{n}", "fp"), operation.id)
    store.advance(KEY_TTL + 1)
    young = IdempotencyKey("alice", "young", "fp")
    store.add_key(young, operation.id)
    assert await purge(store) == Purged(operations=0, idempotency_keys=2)
    assert list(store.state.keys) == [("alice", "young")]


async def test_nothing_to_remove_takes_one_look_and_logs_nothing(store: FakeStore):
    finished(store, 3)
    with capture_logs() as logs:
        assert await purge(store) == Purged(operations=0, idempotency_keys=0)
    assert store.calls["delete_finished_operations"] == 1
    assert logs == []


async def test_a_purge_that_removed_something_is_logged(store: FakeStore):
    finished(store, 3)
    store.advance(RETENTION + 1)
    with capture_logs() as logs:
        await purge(store)
    assert [(e["event"], e["operations"]) for e in logs] == [("retention.purged", 3)]
