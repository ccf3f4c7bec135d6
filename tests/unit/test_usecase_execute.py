"""Executor: carrying out Update, Delete and Create operations exactly once."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import replace

import pytest
import stamina

from service.domain.errors import Code, NotFound, Unavailable
from service.domain.model import Image, ImageStatus, Operation, OperationKind
from service.domain.rules import image_after_ending
from service.runtime.waiters import OperationWaiters
from service.usecases.execute import DOWNLOAD_TRIES, Executor, dead_letter_reason
from service.usecases.operations import Operations
from service.usecases.ports import Downloaded
from tests.unit.fakes import FakeDownloader, FakeStore, editor

CREATE, UPDATE, DELETE = (
    OperationKind.CREATE_IMAGE,
    OperationKind.UPDATE_IMAGE,
    OperationKind.DELETE_IMAGE,
)
URI = "https://images.example.com/ubuntu.img"
DOWNLOADED = Downloaded(md5="0cc175b9c0f1b6a831c399e269772661", size=4096)
MISSING_IMAGE = "img" + "0" * 17


@pytest.fixture(autouse=True)
def no_backoff() -> Iterator[None]:
    """Retries without waiting, with the number of attempts the code asks for."""
    with stamina.set_testing(True, attempts=100, cap=True):
        yield


@pytest.fixture
def store() -> FakeStore:
    return FakeStore()


@pytest.fixture
def downloader() -> FakeDownloader:
    return FakeDownloader(DOWNLOADED)


def executor(
    store: FakeStore,
    downloader: FakeDownloader,
    *,
    lease_seconds: float = 30.0,
    max_attempts: int = 3,
) -> Executor:
    return Executor(store, downloader, lease_seconds=lease_seconds, max_attempts=max_attempts)


@pytest.fixture
def worker(store: FakeStore, downloader: FakeDownloader) -> Executor:
    return executor(store, downloader)


def accepted_update(store: FakeStore, request: dict[str, object]) -> tuple[Image, Operation]:
    """An Update as the API accepts it: its image ``UPDATING``, the operation unfinished."""
    before = store.add_image(status=ImageStatus.UPDATING)
    return before, store.add_operation(UPDATE, before.id, request=request)


def accepted_create(store: FakeStore, *, attempts: int = 0) -> tuple[Image, Operation]:
    image = store.add_image(status=ImageStatus.CREATING)
    operation = store.add_operation(CREATE, image.id, request={"uri": URI}, attempts=attempts)
    return image, operation


# --- Update ---------------------------------------------------------------------------------


async def test_an_update_is_applied_in_one_statement_when_it_can_be(
    worker: Executor, store: FakeStore
):
    before, operation = accepted_update(store, {"name": "renamed", "labels": {"k": "v"}})
    await worker.execute(operation.id)
    after = replace(before, name="renamed", labels={"k": "v"}, status=ImageStatus.READY)
    assert store.image(before.id) == after
    done = store.operation(operation.id)
    assert (done.done, done.response, done.error) == (True, after, None)
    assert store.calls["transaction"] == 0


async def test_an_update_the_statement_declines_is_applied_in_the_transaction(
    worker: Executor, store: FakeStore
):
    store.decline_updates = True
    before, operation = accepted_update(store, {"description": "new"})
    await worker.execute(operation.id)
    after = replace(before, description="new", status=ImageStatus.READY)
    assert store.image(before.id) == after
    assert store.operation(operation.id).response == after
    assert store.calls["transaction"] == 1


async def test_an_update_whose_name_was_taken_meanwhile_fails_and_leaves_the_image_ready(
    worker: Executor, store: FakeStore
):
    before, operation = accepted_update(store, {"name": "taken", "description": "new"})
    store.add_image(name="taken")
    await worker.execute(operation.id)
    done = store.operation(operation.id)
    assert done.done
    assert done.error is not None
    assert done.error.code is Code.ALREADY_EXISTS
    assert done.response is None
    assert store.image(before.id) == replace(before, status=ImageStatus.READY)


async def test_a_taken_name_in_a_batch_fails_only_its_own_update(
    worker: Executor, store: FakeStore
):
    good_before, good = accepted_update(store, {"description": "new"})
    bad_before, bad = accepted_update(store, {"name": "taken"})
    store.add_image(name="taken")
    await asyncio.gather(worker.execute(good.id), worker.execute(bad.id))
    # The one statement refuses the whole batch; the transaction sorts it out, one by one.
    assert store.calls["apply_updates"] == 1
    assert store.calls["transaction"] == 2
    assert store.operation(good.id).error is None
    assert store.image(good_before.id) == replace(
        good_before, description="new", status=ImageStatus.READY
    )
    assert store.error_code(bad.id) is Code.ALREADY_EXISTS
    assert store.image(bad_before.id) == replace(bad_before, status=ImageStatus.READY)


async def test_an_update_of_a_vanished_image_fails_not_found(worker: Executor, store: FakeStore):
    operation = store.add_operation(UPDATE, MISSING_IMAGE, request={"name": "renamed"})
    await worker.execute(operation.id)
    done = store.operation(operation.id)
    assert done.done
    assert done.error is not None
    assert done.error.code is Code.NOT_FOUND


async def test_an_update_of_an_image_not_updating_fails_and_leaves_it(
    worker: Executor, store: FakeStore
):
    image = store.add_image(status=ImageStatus.READY)
    operation = store.add_operation(UPDATE, image.id, request={"name": "renamed"})
    await worker.execute(operation.id)
    assert store.error_code(operation.id) is Code.FAILED_PRECONDITION
    assert store.image(image.id) == image


async def test_an_update_delivered_again_changes_nothing(worker: Executor, store: FakeStore):
    before, operation = accepted_update(store, {"name": "renamed"})
    await worker.execute(operation.id)
    done, image = store.operation(operation.id), store.image(before.id)
    await worker.execute(operation.id)
    assert store.operation(operation.id) == done
    assert store.image(before.id) == image


async def test_an_update_delivered_twice_at_once_is_applied_once(
    worker: Executor, store: FakeStore
):
    before, operation = accepted_update(store, {"name": "renamed"})
    await asyncio.gather(worker.execute(operation.id), worker.execute(operation.id))
    done = store.operation(operation.id)
    assert done.response == replace(before, name="renamed", status=ImageStatus.READY)
    assert store.calls["apply_updates"] == 1


# --- Delete ---------------------------------------------------------------------------------


async def test_a_delete_removes_the_image_and_finishes_with_empty(
    worker: Executor, store: FakeStore
):
    image = store.add_image(status=ImageStatus.DELETING)
    operation = store.add_operation(DELETE, image.id, request={"status_before": 2})
    await worker.execute(operation.id)
    assert store.image(image.id) is None
    done = store.operation(operation.id)
    assert (done.done, done.response, done.error) == (True, None, None)


async def test_a_delete_of_a_vanished_image_still_finishes(worker: Executor, store: FakeStore):
    operation = store.add_operation(DELETE, MISSING_IMAGE, request={"status_before": 2})
    await worker.execute(operation.id)
    done = store.operation(operation.id)
    assert (done.done, done.error) == (True, None)


async def test_a_delete_of_an_image_not_deleting_fails_and_keeps_the_image(
    worker: Executor, store: FakeStore
):
    image = store.add_image(status=ImageStatus.READY)
    operation = store.add_operation(DELETE, image.id, request={"status_before": 2})
    await worker.execute(operation.id)
    assert store.image(image.id) == image
    assert store.error_code(operation.id) is Code.FAILED_PRECONDITION


# --- Create ---------------------------------------------------------------------------------


async def test_a_create_downloads_and_makes_the_image_ready_with_its_checksum(
    worker: Executor, store: FakeStore, downloader: FakeDownloader
):
    image, operation = accepted_create(store)
    await worker.execute(operation.id)
    ready = replace(image, status=ImageStatus.READY, checksum=DOWNLOADED.md5)
    assert downloader.uris == [URI]
    assert store.image(image.id) == ready
    done = store.operation(operation.id)
    assert (done.done, done.response, done.error) == (True, ready, None)


async def test_a_create_whose_download_fails_leaves_the_image_in_error(store: FakeStore):
    downloader = FakeDownloader(errors=[NotFound("404 from the image server")])
    image, operation = accepted_create(store)
    await executor(store, downloader).execute(operation.id)
    assert downloader.uris == [URI]  # a permanent error is not retried
    assert store.status(image.id) is ImageStatus.ERROR
    done = store.operation(operation.id)
    assert done.done
    assert done.error is not None
    assert (done.error.code, done.error.message) == (Code.NOT_FOUND, "404 from the image server")


async def test_a_transient_download_failure_is_retried_then_succeeds(store: FakeStore):
    downloader = FakeDownloader(DOWNLOADED, [Unavailable("503"), Unavailable("reset")])
    image, operation = accepted_create(store)
    await executor(store, downloader).execute(operation.id)
    assert downloader.uris == [URI] * 3
    assert store.status(image.id) is ImageStatus.READY
    assert store.operation(operation.id).error is None


async def test_a_download_unavailable_every_time_fails_after_its_tries(store: FakeStore):
    downloader = FakeDownloader(DOWNLOADED, [Unavailable("503")] * DOWNLOAD_TRIES)
    image, operation = accepted_create(store)
    await executor(store, downloader).execute(operation.id)
    assert len(downloader.uris) == DOWNLOAD_TRIES
    assert store.status(image.id) is ImageStatus.ERROR
    assert store.error_code(operation.id) is Code.UNAVAILABLE


async def test_a_create_past_its_attempts_is_abandoned_without_downloading(
    store: FakeStore, downloader: FakeDownloader
):
    image, operation = accepted_create(store, attempts=3)
    await executor(store, downloader, max_attempts=3).execute(operation.id)
    assert downloader.uris == []
    assert store.status(image.id) is ImageStatus.ERROR
    done = store.operation(operation.id)
    assert done.error is not None
    assert done.error.code is Code.INTERNAL
    assert "3 attempts" in done.error.message


async def test_a_create_another_worker_holds_is_skipped(
    worker: Executor, store: FakeStore, downloader: FakeDownloader
):
    image, operation = accepted_create(store)
    assert await store.claim_with_lease(operation.id, 30) is not None
    await worker.execute(operation.id)
    assert downloader.uris == []
    assert store.image(image.id) == image
    assert not store.operation(operation.id).done


async def test_a_create_delivered_again_after_it_finished_does_not_download_again(
    worker: Executor, store: FakeStore, downloader: FakeDownloader
):
    image, operation = accepted_create(store)
    await worker.execute(operation.id)
    done, ready = store.operation(operation.id), store.image(image.id)
    await worker.execute(operation.id)
    assert downloader.uris == [URI]
    assert store.operation(operation.id) == done
    assert store.image(image.id) == ready


async def test_a_create_of_a_vanished_image_fails_not_found(worker: Executor, store: FakeStore):
    operation = store.add_operation(CREATE, MISSING_IMAGE, request={"uri": URI})
    await worker.execute(operation.id)
    assert store.error_code(operation.id) is Code.NOT_FOUND
    assert store.image(MISSING_IMAGE) is None


async def test_a_create_cancelled_during_its_download_stops_downloading_and_writes_nothing(
    store: FakeStore,
):
    downloader = FakeDownloader(DOWNLOADED, gate=asyncio.Event())
    image, operation = accepted_create(store)
    running = asyncio.create_task(
        executor(store, downloader, lease_seconds=0.03).execute(operation.id)
    )
    await asyncio.wait_for(downloader.started.wait(), 1)
    operations = Operations(store, store, OperationWaiters(), encode=lambda _: b"", cache_size=0)
    cancelled = await operations.cancel_operation(operation.id, editor())
    await asyncio.wait_for(running, 1)  # the heartbeat finds the claim gone
    assert downloader.cancelled
    assert store.image(image.id) is None
    assert store.operation(operation.id) == cancelled


async def test_a_create_claimed_again_during_its_download_writes_nothing(
    store: FakeStore,
):
    gate = asyncio.Event()
    downloader = FakeDownloader(DOWNLOADED, gate=gate)
    image, operation = accepted_create(store)
    running = asyncio.create_task(executor(store, downloader).execute(operation.id))
    await asyncio.wait_for(downloader.started.wait(), 1)
    store.advance(60)  # the lease ran out: another worker takes the operation
    assert await store.claim_with_lease(operation.id, 30) is not None
    taken = store.operation(operation.id)
    gate.set()
    await asyncio.wait_for(running, 1)
    assert store.image(image.id) == image
    assert store.operation(operation.id) == taken


async def test_a_worker_stopped_during_a_download_gives_its_lease_back(store: FakeStore):
    downloader = FakeDownloader(DOWNLOADED, gate=asyncio.Event())
    image, operation = accepted_create(store)
    running = asyncio.create_task(executor(store, downloader).execute(operation.id))
    await asyncio.wait_for(downloader.started.wait(), 1)
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    assert store.row(operation.id).lease_until is None
    assert store.image(image.id) == image


# --- Abandon --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "status", "request_", "expected"),
    [
        (CREATE, ImageStatus.CREATING, {"uri": URI}, ImageStatus.ERROR),
        (UPDATE, ImageStatus.UPDATING, {"name": "renamed"}, ImageStatus.READY),
        (DELETE, ImageStatus.DELETING, {"status_before": 3}, ImageStatus.ERROR),
        (DELETE, ImageStatus.DELETING, {"status_before": 2}, ImageStatus.READY),
    ],
)
async def test_an_abandoned_operation_puts_its_image_where_the_rules_say(
    worker: Executor,
    store: FakeStore,
    kind: OperationKind,
    status: ImageStatus,
    request_: dict[str, int | str],
    expected: ImageStatus,
):
    image = store.add_image(status=status)
    operation = store.add_operation(kind, image.id, request=request_)
    await worker.abandon(operation.id, "dead-lettered")
    before = request_.get("status_before")
    assert image_after_ending(kind, status, None if before is None else ImageStatus(before)) is (
        expected
    )
    assert store.image(image.id) == replace(image, status=expected)
    done = store.operation(operation.id)
    assert done.error is not None
    assert (done.error.code, done.error.message) == (Code.INTERNAL, "dead-lettered")


async def test_abandoning_a_finished_operation_changes_nothing(worker: Executor, store: FakeStore):
    image = store.add_image()
    operation = store.add_operation(UPDATE, image.id, done=True, response=image)
    await worker.abandon(operation.id, "dead-lettered")
    assert store.operation(operation.id) == operation
    assert store.image(image.id) == image


async def test_a_dead_lettered_operation_ends_with_an_error_and_is_recorded_as_dead_lettered(
    worker: Executor, store: FakeStore
):
    image = store.add_image(status=ImageStatus.UPDATING)
    operation = store.add_operation(UPDATE, image.id, request={"name": "renamed"})
    await worker.end_dead_lettered(operation.id, 5)
    row = store.row(operation.id)
    assert row.dead_lettered_at is not None
    assert row.dead_lettered_at == row.operation.modified_at
    assert row.operation.error is not None
    assert (row.operation.error.code, row.operation.error.message) == (
        Code.INTERNAL,
        dead_letter_reason(5),
    )
    assert store.image(image.id) == replace(image, status=ImageStatus.READY)


async def test_an_operation_ended_any_other_way_is_not_recorded_as_dead_lettered(
    worker: Executor, store: FakeStore
):
    image = store.add_image(status=ImageStatus.UPDATING)
    abandoned = store.add_operation(UPDATE, image.id, request={"name": "renamed"})
    await worker.abandon(abandoned.id, dead_letter_reason(5))  # the same words, not the state
    assert store.row(abandoned.id).operation.done
    assert store.row(abandoned.id).dead_lettered_at is None


async def test_dead_lettering_a_finished_operation_changes_nothing(
    worker: Executor, store: FakeStore
):
    image = store.add_image()
    operation = store.add_operation(UPDATE, image.id, done=True, response=image)
    await worker.end_dead_lettered(operation.id, 5)
    assert store.row(operation.id).dead_lettered_at is None
    assert store.operation(operation.id) == operation
