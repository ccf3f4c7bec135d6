"""Operations use case: Get (from memory once finished), Wait, Cancel."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import timedelta

import pytest

from service.domain.errors import Code, InvalidArgument, NotFound, PermissionDenied, Unavailable
from service.domain.model import (
    ImageStatus,
    Operation,
    OperationError,
    OperationKind,
    utcnow,
)
from service.entrypoints.grpc.convert import encode_operation
from service.runtime.waiters import OperationWaiters
from service.usecases.operations import Operations
from tests.unit.fakes import FOLDER, OTHER_FOLDER, FakeStore, editor, until, viewer

CREATE, UPDATE, DELETE = (
    OperationKind.CREATE_IMAGE,
    OperationKind.UPDATE_IMAGE,
    OperationKind.DELETE_IMAGE,
)
MISSING_OPERATION = "opn" + "0" * 17
FAILED = OperationError(Code.NOT_FOUND, "gone")


class CountingEncoder:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, operation: Operation) -> bytes:
        self.calls += 1
        return encode_operation(operation)


@pytest.fixture
def store() -> FakeStore:
    return FakeStore()


class WatchedWaiters(OperationWaiters):
    """Counts the waiters registered and not yet unregistered."""

    def __init__(self) -> None:
        super().__init__()
        self.active = 0

    def register(self, operation_id: str) -> asyncio.Future[None]:
        self.active += 1
        return super().register(operation_id)

    def unregister(self, operation_id: str, future: asyncio.Future[None]) -> None:
        self.active -= 1
        super().unregister(operation_id, future)


@pytest.fixture
def waiters() -> WatchedWaiters:
    return WatchedWaiters()


@pytest.fixture
def encoder() -> CountingEncoder:
    return CountingEncoder()


@pytest.fixture
def operations(store: FakeStore, waiters: WatchedWaiters, encoder: CountingEncoder) -> Operations:
    return Operations(store, store, waiters, encode=encoder, cache_size=100)


def finished(store: FakeStore, folder_id: str = FOLDER) -> Operation:
    image = store.add_image(folder_id)
    return store.add_operation(UPDATE, image.id, folder_id, done=True, response=image)


def running(store: FakeStore, folder_id: str = FOLDER) -> Operation:
    image = store.add_image(folder_id, status=ImageStatus.UPDATING)
    return store.add_operation(UPDATE, image.id, folder_id, request={"name": "renamed"})


async def finish_in_store(store: FakeStore, operation_id: str) -> Operation:
    async with store.transaction() as tx:
        await tx.finish(operation_id, error=FAILED)
    return store.operation(operation_id)


# --- Get ------------------------------------------------------------------------------------


async def test_get_returns_the_operation(operations: Operations, store: FakeStore):
    operation = running(store)
    assert await operations.get_operation(operation.id, viewer()) == operation


async def test_a_finished_operation_is_read_once_then_served_from_memory(
    operations: Operations, store: FakeStore
):
    operation = finished(store)
    for _ in range(3):
        assert await operations.get_operation(operation.id, viewer()) == operation
    assert store.operation_reads == 1


async def test_an_unfinished_operation_is_read_on_every_get(
    operations: Operations, store: FakeStore
):
    operation = running(store)
    for _ in range(3):
        await operations.get_operation(operation.id, viewer())
    assert store.operation_reads == 3


async def test_a_finished_operation_is_encoded_once(
    operations: Operations, store: FakeStore, encoder: CountingEncoder
):
    operation = finished(store)
    answers = [await operations.get_operation_encoded(operation.id, viewer()) for _ in range(3)]
    assert encoder.calls == 1
    assert all(encoded is answers[0][1] for _, encoded in answers)
    assert answers[0][1] == encode_operation(operation)


async def test_an_unfinished_operation_is_encoded_only_for_a_reader_that_sends_it(
    operations: Operations, store: FakeStore, encoder: CountingEncoder
):
    operation = running(store)
    await operations.get_operation(operation.id, viewer())  # WaitOperation, GetOperation
    assert encoder.calls == 0
    _, encoded = await operations.get_operation_encoded(operation.id, viewer())
    assert encoder.calls == 1
    assert encoded == encode_operation(operation)


async def test_polls_arriving_together_are_read_together(operations: Operations, store: FakeStore):
    made = [running(store) for _ in range(4)]
    got = await asyncio.gather(*(operations.get_operation(o.id, viewer()) for o in made))
    assert got == made
    assert store.calls["get_operations"] == 1


async def test_an_operation_in_a_folder_the_caller_cannot_see_is_not_found(
    operations: Operations, store: FakeStore
):
    operation = running(store, OTHER_FOLDER)
    with pytest.raises(NotFound, match=operation.id):
        await operations.get_operation(operation.id, viewer(FOLDER))


async def test_a_cached_operation_is_still_hidden_from_a_caller_who_cannot_see_it(
    operations: Operations, store: FakeStore
):
    operation = finished(store, OTHER_FOLDER)
    await operations.get_operation(operation.id, viewer(OTHER_FOLDER))
    with pytest.raises(NotFound):
        await operations.get_operation(operation.id, viewer(FOLDER))


async def test_a_missing_operation_is_not_found(operations: Operations):
    with pytest.raises(NotFound):
        await operations.get_operation(MISSING_OPERATION, viewer())


@pytest.mark.parametrize("operation_id", ["", "has space", "x" * 51])
async def test_an_invalid_operation_id_is_invalid_argument(
    operations: Operations, store: FakeStore, operation_id: str
):
    with pytest.raises(InvalidArgument) as info:
        await operations.get_operation(operation_id, viewer())
    assert info.value.violations[0].field == "operation_id"
    assert store.operation_reads == 0


async def test_a_cached_operation_past_retention_is_read_again(
    store: FakeStore, waiters: WatchedWaiters, encoder: CountingEncoder
):
    operations = Operations(
        store, store, waiters, encode=encoder, cache_size=100, retention_seconds=60
    )
    old = finished(store)
    row = store.row(old.id)
    aged = replace(row.operation, modified_at=utcnow() - timedelta(seconds=120))
    store.state.operations[old.id] = replace(row, operation=aged)
    for _ in range(2):
        await operations.get_operation(old.id, viewer())
    assert store.operation_reads == 2


async def test_a_finished_operation_told_by_the_database_is_served_without_a_read(
    operations: Operations, store: FakeStore
):
    operation = finished(store)
    operations.operation_finished(operation.id, operation)
    assert await operations.get_operation(operation.id, viewer()) == operation
    assert store.operation_reads == 0


async def test_a_finished_operation_told_by_the_database_is_encoded_when_first_sent(
    operations: Operations, store: FakeStore, encoder: CountingEncoder
):
    """Every API process is told of every finish; most of those operations are never polled
    there, so keeping one costs no encoding. The first Get encodes it, once, for all."""
    operation = finished(store)
    operations.operation_finished(operation.id, operation)
    await operations.get_operation(operation.id, viewer())  # WaitOperation, GetOperation
    assert encoder.calls == 0
    answers = [await operations.get_operation_encoded(operation.id, viewer()) for _ in range(3)]
    assert encoder.calls == 1
    assert all(encoded is answers[0][1] for _, encoded in answers)
    assert answers[0][1] == encode_operation(operation)
    assert store.operation_reads == 0


async def test_a_finished_operation_sent_before_the_database_tells_of_it_is_not_encoded_again(
    operations: Operations, store: FakeStore, encoder: CountingEncoder
):
    """A poll can read and send a finished operation before the notification of its finish
    reaches this process; the notification then brings nothing new to keep."""
    operation = finished(store)
    _, first = await operations.get_operation_encoded(operation.id, viewer())
    operations.operation_finished(operation.id, operation)
    _, again = await operations.get_operation_encoded(operation.id, viewer())
    assert encoder.calls == 1
    assert again is first


# --- Wait -----------------------------------------------------------------------------------


async def test_wait_returns_at_once_for_a_finished_operation(
    operations: Operations, store: FakeStore
):
    operation = finished(store)
    got = await asyncio.wait_for(operations.wait_operation(operation.id, 30, viewer()), 1)
    assert got == operation


async def test_wait_is_woken_by_the_finish_notification_without_polling(
    operations: Operations, store: FakeStore, waiters: WatchedWaiters
):
    operation = running(store)
    waiting = asyncio.create_task(operations.wait_operation(operation.id, 30, viewer()))
    await until(lambda: waiters.active == 1 and store.operation_reads == 1, what="the first look")
    done = await finish_in_store(store, operation.id)
    operations.operation_finished(operation.id, done)
    got = await asyncio.wait_for(waiting, 1)
    assert got.done
    assert got.error == FAILED
    assert store.operation_reads == 1  # the first look; the finished one came from memory
    assert waiters.active == 0


async def test_wait_woken_without_the_operation_reads_it_once_more(
    operations: Operations, store: FakeStore, waiters: WatchedWaiters
):
    operation = running(store)
    waiting = asyncio.create_task(operations.wait_operation(operation.id, 30, viewer()))
    await until(lambda: waiters.active == 1 and store.operation_reads == 1, what="the first look")
    await finish_in_store(store, operation.id)
    operations.operation_finished(operation.id, None)
    got = await asyncio.wait_for(waiting, 1)
    assert got.done
    assert store.operation_reads == 2


async def test_a_waiter_whose_re_read_finds_the_database_unavailable_keeps_waiting(
    operations: Operations, store: FakeStore, waiters: WatchedWaiters
):
    """Woken while the database fails over (the listener reconnected), its re-read fails:
    it reads again shortly, within its own time, instead of answering UNAVAILABLE."""
    operation = running(store)
    waiting = asyncio.create_task(operations.wait_operation(operation.id, 30, viewer()))
    await until(lambda: waiters.active == 1 and store.operation_reads == 1, what="the first look")
    await finish_in_store(store, operation.id)
    store.failing_reads = 1
    operations.operation_finished(operation.id, None)
    got = await asyncio.wait_for(waiting, 5)
    assert got.done
    assert store.failing_reads == 0


async def test_a_waiters_first_read_that_fails_is_the_callers_to_retry(
    operations: Operations, store: FakeStore
):
    operation = running(store)
    store.failing_reads = 1
    with pytest.raises(Unavailable):
        await operations.wait_operation(operation.id, 30, viewer())


async def test_wait_returns_the_current_state_after_the_timeout(
    operations: Operations, store: FakeStore, waiters: WatchedWaiters
):
    operation = running(store)
    loop = asyncio.get_running_loop()
    started = loop.time()
    got = await operations.wait_operation(operation.id, 0.05, viewer())
    assert loop.time() - started >= 0.05
    assert got == operation
    assert not got.done
    assert waiters.active == 0


async def test_wait_for_an_operation_the_caller_cannot_see_is_not_found(
    operations: Operations, store: FakeStore, waiters: WatchedWaiters
):
    operation = running(store, OTHER_FOLDER)
    with pytest.raises(NotFound):
        await operations.wait_operation(operation.id, 30, viewer(FOLDER))
    assert waiters.active == 0


# --- Cancel ---------------------------------------------------------------------------------


def assert_cancelled(operation: Operation) -> None:
    assert operation.done
    assert operation.error is not None
    assert operation.error.code is Code.CANCELLED
    assert operation.response is None


async def test_cancelling_a_create_removes_its_image(operations: Operations, store: FakeStore):
    image = store.add_image(status=ImageStatus.CREATING)
    operation = store.add_operation(CREATE, image.id, request={"uri": "https://a/b"})
    got = await operations.cancel_operation(operation.id, editor())
    assert_cancelled(got)
    assert store.image(image.id) is None
    assert store.operation(operation.id) == got


async def test_cancelling_an_update_leaves_the_image_ready_and_unchanged(
    operations: Operations, store: FakeStore
):
    image = store.add_image(name="before", status=ImageStatus.UPDATING)
    operation = store.add_operation(UPDATE, image.id, request={"name": "after"})
    assert_cancelled(await operations.cancel_operation(operation.id, editor()))
    assert store.image(image.id) == replace(image, status=ImageStatus.READY)


@pytest.mark.parametrize("before", [ImageStatus.READY, ImageStatus.ERROR])
async def test_cancelling_a_delete_gives_the_image_its_status_back(
    operations: Operations, store: FakeStore, before: ImageStatus
):
    image = store.add_image(status=ImageStatus.DELETING)
    operation = store.add_operation(DELETE, image.id, request={"status_before": int(before)})
    assert_cancelled(await operations.cancel_operation(operation.id, editor()))
    assert store.status(image.id) is before


async def test_a_cancelled_operation_is_then_served_from_memory(
    operations: Operations, store: FakeStore
):
    operation = running(store)
    await operations.cancel_operation(operation.id, editor())
    reads = store.operation_reads
    assert_cancelled(await operations.get_operation(operation.id, viewer()))
    assert store.operation_reads == reads


async def test_cancelling_a_finished_operation_returns_it_unchanged(
    operations: Operations, store: FakeStore
):
    operation = finished(store)
    image = store.image(operation.image_id)
    got = await operations.cancel_operation(operation.id, editor())
    assert got == operation
    assert store.operation(operation.id) == operation
    assert store.image(operation.image_id) == image


async def test_cancel_by_a_viewer_is_denied_and_changes_nothing(
    operations: Operations, store: FakeStore
):
    operation = running(store)
    with pytest.raises(PermissionDenied):
        await operations.cancel_operation(operation.id, viewer())
    assert store.operation(operation.id) == operation
    assert store.status(operation.image_id) is ImageStatus.UPDATING


async def test_cancel_of_an_operation_in_a_folder_the_caller_cannot_see_is_not_found(
    operations: Operations, store: FakeStore
):
    operation = running(store, OTHER_FOLDER)
    with pytest.raises(NotFound):
        await operations.cancel_operation(operation.id, editor(FOLDER))
    assert store.operation(operation.id) == operation
    assert store.status(operation.image_id) is ImageStatus.UPDATING


async def test_cancel_of_a_missing_operation_is_not_found(operations: Operations):
    with pytest.raises(NotFound):
        await operations.cancel_operation(MISSING_OPERATION, editor())


async def test_cancel_with_an_invalid_id_is_invalid_argument(operations: Operations):
    with pytest.raises(InvalidArgument):
        await operations.cancel_operation("has space", editor())
