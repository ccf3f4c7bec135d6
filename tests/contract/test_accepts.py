"""``Accepts``: each accepted operation moves its image and is recorded in one step, behind
its idempotency key; a refusal changes nothing."""

from __future__ import annotations

import pytest

from service.domain.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from service.domain.listing import ImageQuery, Ordering
from service.domain.model import ImageChange, ImageStatus, OperationKind
from tests.contract.implementations import Implementation
from tests.contract.requests import (
    FOLDER,
    OTHER_FOLDER,
    create_request,
    delete_of,
    key,
    new_update,
    update_of,
)

RENAME = ImageChange(name="renamed")


async def test_a_create_records_a_creating_image_and_an_unfinished_operation(
    port: Implementation,
) -> None:
    image, operation, request = create_request("disk")

    accepted = await port.accepts.insert_create(image, operation, request)

    stored = await port.reads.get_image(image.id)
    assert stored is not None
    assert (stored.folder_id, stored.name, stored.description, stored.status, stored.labels) == (
        FOLDER,
        "disk",
        "a disk",
        ImageStatus.CREATING,
        {"env": "test"},
    )
    assert (accepted.replayed, accepted.operation.done) == (False, False)
    assert await port.reads.get_operations([operation.id]) == [accepted.operation]


async def test_a_create_of_a_name_taken_in_the_folder_is_refused(port: Implementation) -> None:
    await port.add_image(FOLDER, name="disk")
    image, operation, request = create_request("disk")

    with pytest.raises(AlreadyExists):
        await port.accepts.insert_create(image, operation, request)
    assert await port.reads.get_image(image.id) is None


async def test_a_name_taken_in_another_folder_is_free(port: Implementation) -> None:
    await port.add_image(OTHER_FOLDER, name="disk")
    image, operation, request = create_request("disk")

    await port.accepts.insert_create(image, operation, request)

    assert await port.reads.image_folder(image.id) == FOLDER


async def test_an_update_moves_a_ready_image_to_updating(port: Implementation) -> None:
    image = await port.add_image(FOLDER)

    accepted = await port.accepts.begin_update(update_of(image.id), RENAME)

    stored = await port.reads.get_image(image.id)
    assert stored is not None
    assert stored.status is ImageStatus.UPDATING
    assert stored.name == image.name  # changed by the worker, not on acceptance
    assert accepted.operation.folder_id == FOLDER
    assert await port.reads.get_operations([accepted.operation.id]) == [accepted.operation]


async def test_an_update_of_an_image_not_ready_is_refused(port: Implementation) -> None:
    image = await port.add_image(FOLDER, status=ImageStatus.CREATING)

    with pytest.raises(FailedPrecondition):
        await port.accepts.begin_update(update_of(image.id), RENAME)


async def test_a_second_update_while_one_runs_is_refused(port: Implementation) -> None:
    image = await port.add_image(FOLDER)
    await port.accepts.begin_update(update_of(image.id), RENAME)

    with pytest.raises(FailedPrecondition):
        await port.accepts.begin_update(update_of(image.id), ImageChange(description="d"))


async def test_an_update_of_a_missing_image_is_not_found(port: Implementation) -> None:
    with pytest.raises(NotFound):
        await port.accepts.begin_update(update_of("img-missing"), RENAME)


async def test_an_image_outside_the_callers_folders_is_not_found(port: Implementation) -> None:
    image = await port.add_image(FOLDER)

    with pytest.raises(NotFound):
        await port.accepts.begin_update(update_of(image.id), RENAME, folders=[OTHER_FOLDER])
    stored = await port.reads.get_image(image.id)
    assert stored is not None
    assert stored.status is ImageStatus.READY


async def test_an_update_to_a_name_taken_is_refused_and_leaves_the_image_ready(
    port: Implementation,
) -> None:
    await port.add_image(FOLDER, name="renamed")
    image = await port.add_image(FOLDER)

    with pytest.raises(AlreadyExists):
        await port.accepts.begin_update(update_of(image.id), RENAME)
    stored = await port.reads.get_image(image.id)
    assert stored is not None
    assert stored.status is ImageStatus.READY


async def test_an_operation_beyond_the_folders_quota_is_refused(port: Implementation) -> None:
    port.limit_unfinished_per_folder(1)
    first, second = await port.add_image(FOLDER), await port.add_image(FOLDER)
    await port.accepts.begin_update(update_of(first.id), RENAME)

    with pytest.raises(ResourceExhausted):
        await port.accepts.begin_update(update_of(second.id), ImageChange(description="d"))


async def test_the_quota_counts_each_folder_apart(port: Implementation) -> None:
    port.limit_unfinished_per_folder(1)
    first, other = await port.add_image(FOLDER), await port.add_image(OTHER_FOLDER)
    await port.accepts.begin_update(update_of(first.id), RENAME)

    accepted = await port.accepts.begin_update(update_of(other.id), RENAME)

    assert accepted.operation.folder_id == OTHER_FOLDER


async def test_a_finished_operation_no_longer_counts_against_the_quota(
    port: Implementation,
) -> None:
    port.limit_unfinished_per_folder(1)
    first, second = await port.add_image(FOLDER), await port.add_image(FOLDER)
    done = await port.accepts.begin_update(update_of(first.id), RENAME)
    assert await port.finishes.apply_updates([done.operation.id]) == [True]

    accepted = await port.accepts.begin_update(update_of(second.id), ImageChange(description="d"))

    assert not accepted.replayed


async def test_a_delete_moves_a_ready_image_to_deleting(port: Implementation) -> None:
    image = await port.add_image(FOLDER)

    accepted = await port.accepts.begin_delete(delete_of(image.id))

    stored = await port.reads.get_image(image.id)
    assert stored is not None
    assert stored.status is ImageStatus.DELETING
    assert (accepted.operation.kind, accepted.operation.folder_id) == (
        OperationKind.DELETE_IMAGE,
        FOLDER,
    )


async def test_a_delete_of_an_image_in_error_is_accepted(port: Implementation) -> None:
    image = await port.add_image(FOLDER, status=ImageStatus.ERROR)

    await port.accepts.begin_delete(delete_of(image.id))

    stored = await port.reads.get_image(image.id)
    assert stored is not None
    assert stored.status is ImageStatus.DELETING


async def test_a_delete_while_an_update_runs_is_refused(port: Implementation) -> None:
    image = await port.add_image(FOLDER)
    await port.accepts.begin_update(update_of(image.id), RENAME)

    with pytest.raises(FailedPrecondition):
        await port.accepts.begin_delete(delete_of(image.id))


async def test_a_delete_outside_the_callers_folders_is_not_found(port: Implementation) -> None:
    image = await port.add_image(FOLDER)

    with pytest.raises(NotFound):
        await port.accepts.begin_delete(delete_of(image.id), folders=[OTHER_FOLDER])


async def test_a_key_used_again_replays_the_first_operation(port: Implementation) -> None:
    image = await port.add_image(FOLDER)
    first = await port.accepts.begin_update(update_of(image.id), RENAME, key("k1"))

    again = await port.accepts.begin_update(update_of(image.id), RENAME, key("k1"))

    assert again == type(first)(first.operation, replayed=True)


async def test_a_key_used_again_for_another_request_is_refused(port: Implementation) -> None:
    image = await port.add_image(FOLDER)
    await port.accepts.begin_update(update_of(image.id), RENAME, key("k1"))

    with pytest.raises(InvalidArgument):
        await port.accepts.begin_update(
            update_of(image.id), RENAME, key("k1", request="another request")
        )


async def test_a_refused_call_does_not_keep_its_key(port: Implementation) -> None:
    image = await port.add_image(FOLDER, status=ImageStatus.CREATING)
    with pytest.raises(FailedPrecondition):
        await port.accepts.begin_update(update_of(image.id), RENAME, key("k1"))
    ready = await port.add_image(FOLDER)

    accepted = await port.accepts.begin_update(update_of(ready.id), RENAME, key("k1"))

    assert not accepted.replayed


async def test_a_create_under_a_key_used_again_replays_it(port: Implementation) -> None:
    image, operation, request = create_request("disk")
    first = await port.accepts.insert_create(image, operation, request, key("k1"))
    _, again_operation, _ = create_request("disk")

    again = await port.accepts.insert_create(image, again_operation, request, key("k1"))

    assert (again.operation, again.replayed) == (first.operation, True)


async def test_a_batch_accepts_each_update_as_one_at_a_time_would(port: Implementation) -> None:
    ready, creating = (
        await port.add_image(FOLDER),
        await port.add_image(FOLDER, status=ImageStatus.CREATING),
    )
    updates = [
        new_update(ready.id, RENAME),
        new_update(ready.id, ImageChange(description="second of one image")),
        new_update(creating.id, RENAME),
        new_update("img-missing", RENAME),
    ]

    accepted = await port.accepts.begin_updates(updates)

    assert [op is not None for op in accepted] == [True, False, False, False]
    assert accepted[0] is not None
    assert accepted[0].folder_id == FOLDER
    assert await port.reads.get_operations([accepted[0].id]) == [accepted[0]]


async def test_a_batch_leaves_an_update_beyond_the_quota(port: Implementation) -> None:
    port.limit_unfinished_per_folder(1)
    first, second = await port.add_image(FOLDER), await port.add_image(FOLDER)

    accepted = await port.accepts.begin_updates(
        [new_update(first.id, RENAME), new_update(second.id, ImageChange(description="d"))]
    )

    assert [op is not None for op in accepted] == [True, False]
    stored = await port.reads.get_image(second.id)
    assert stored is not None
    assert stored.status is ImageStatus.READY


async def test_a_batch_leaves_an_update_whose_key_was_used_before(port: Implementation) -> None:
    first, second = await port.add_image(FOLDER), await port.add_image(FOLDER)
    await port.accepts.begin_update(update_of(first.id), RENAME, key("k1"))

    accepted = await port.accepts.begin_updates([new_update(second.id, RENAME, key=key("k1"))])

    assert accepted == [None]
    stored = await port.reads.get_image(second.id)
    assert stored is not None
    assert stored.status is ImageStatus.READY


async def test_a_batch_takes_a_key_carried_twice_for_the_first_update_only(
    port: Implementation,
) -> None:
    first, second = await port.add_image(FOLDER), await port.add_image(FOLDER)

    accepted = await port.accepts.begin_updates(
        [new_update(first.id, RENAME, key=key("k1")), new_update(second.id, RENAME, key=key("k1"))]
    )

    assert [op is not None for op in accepted] == [True, False]
    assert accepted[0] is not None
    replay = await port.accepts.begin_update(update_of(second.id), RENAME, key("k1"))
    assert (replay.operation.id, replay.replayed) == (accepted[0].id, True)


async def test_a_batch_frees_the_key_of_an_update_it_does_not_accept(port: Implementation) -> None:
    creating = await port.add_image(FOLDER, status=ImageStatus.CREATING)
    ready = await port.add_image(FOLDER)
    assert await port.accepts.begin_updates([new_update(creating.id, RENAME, key=key("k1"))]) == [
        None
    ]

    accepted = await port.accepts.begin_update(update_of(ready.id), RENAME, key("k1"))

    assert not accepted.replayed


async def test_a_batch_leaves_an_update_outside_the_callers_folders(port: Implementation) -> None:
    image = await port.add_image(FOLDER)

    accepted = await port.accepts.begin_updates(
        [new_update(image.id, RENAME, folders=[OTHER_FOLDER])]
    )

    assert accepted == [None]


async def test_a_key_whose_operation_was_removed_asks_for_a_retry(port: Implementation) -> None:
    image = await port.add_image(FOLDER)
    first = await port.accepts.begin_update(update_of(image.id), RENAME, key("k1"))
    await port.finishes.apply_updates([first.operation.id])
    await port.pass_time(3600)
    await port.retention.delete_finished_operations(60, 10)

    with pytest.raises(Unavailable):
        await port.accepts.begin_update(update_of(image.id), RENAME, key("k1"))


async def test_a_created_image_is_stamped_by_the_stores_clock(port: Implementation) -> None:
    earlier = await port.add_image(FOLDER, name="earlier")
    await port.pass_time(60)
    later = await port.add_image(FOLDER, name="later")
    image, operation, request = create_request("created-last")

    await port.accepts.insert_create(image, operation, request)

    listed = await port.reads.list_images(ImageQuery(FOLDER, [], Ordering("createdAt")), 10)
    assert [i.name for i in listed] == [earlier.name, later.name, "created-last"]
