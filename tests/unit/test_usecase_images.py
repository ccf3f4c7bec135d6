"""Images use case: accepting Create, Update and Delete; reading images and their operations."""

from __future__ import annotations

import asyncio

import pytest

from service.domain.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
)
from service.domain.model import IdempotencyKey, ImageStatus, NewImage, OperationKind
from service.domain.paging import image_wire_bytes
from service.usecases.images import Images
from service.usecases.outbox import PublishedMarks
from tests.support import eventually
from tests.unit.fakes import (
    FOLDER,
    OTHER_FOLDER,
    SUBJECT,
    FakePublisher,
    FakeStore,
    editor,
    viewer,
)

MISSING_IMAGE = "img" + "0" * 17


@pytest.fixture
def store() -> FakeStore:
    return FakeStore()


@pytest.fixture
def publisher() -> FakePublisher:
    return FakePublisher()


@pytest.fixture
def marks(store: FakeStore) -> PublishedMarks:
    return PublishedMarks(store)


@pytest.fixture
def images(store: FakeStore, publisher: FakePublisher, marks: PublishedMarks) -> Images:
    return Images(store, store, publisher, marks, publish_timeout=1.0)


def new_image(**overrides: object) -> NewImage:
    values: dict[str, object] = {
        "folder_id": FOLDER,
        "name": "ubuntu-22",
        "description": "Ubuntu 22.04",
        "uri": "https://images.example.com/ubuntu.img",
        "labels": {"env": "prod"},
    }
    values.update(overrides)
    return NewImage(**values)  # type: ignore[arg-type]


def key(text: str = "key-1", fingerprint: str = "fp-1", caller: str = SUBJECT) -> IdempotencyKey:
    return IdempotencyKey(caller=caller, key=text, fingerprint=fingerprint)


def fields(error: InvalidArgument) -> list[str]:
    return [violation.field for violation in error.violations]


# --- Create ---------------------------------------------------------------------------------


async def test_create_by_a_viewer_is_refused_before_the_request_is_validated(images: Images):
    with pytest.raises(PermissionDenied):
        await images.create_image(new_image(name="Not A Name"), viewer())


async def test_create_with_an_invalid_name_names_the_field(images: Images, store: FakeStore):
    with pytest.raises(InvalidArgument) as info:
        await images.create_image(new_image(name="Not A Name"), editor())
    assert fields(info.value) == ["name"]
    assert store.state.images == {}


async def test_create_with_every_field_invalid_names_each(images: Images):
    request = new_image(folder_id="", name="x", uri="ftp://host/a", labels={"Bad": "v"})
    with pytest.raises(InvalidArgument) as info:
        await images.create_image(request, editor())
    assert fields(info.value) == ["folder_id", "name", "uri", "labels"]


@pytest.mark.parametrize(
    "uri", ["http://127.0.0.1/a.img", "http://169.254.169.254/latest", "http://[::1]/a"]
)
async def test_create_from_a_forbidden_host_is_refused(images: Images, store: FakeStore, uri: str):
    with pytest.raises(InvalidArgument) as info:
        await images.create_image(new_image(uri=uri), editor())
    assert fields(info.value) == ["uri"]
    assert store.state.images == {}


async def test_create_in_a_folder_the_caller_may_not_use_is_denied(
    images: Images, store: FakeStore
):
    with pytest.raises(PermissionDenied, match=OTHER_FOLDER):
        await images.create_image(new_image(folder_id=OTHER_FOLDER), editor(FOLDER))
    assert store.state.images == {}


async def test_an_accepted_create_records_a_creating_image_and_its_operation(
    images: Images, store: FakeStore
):
    operation = await images.create_image(new_image(), editor())
    image = store.image(operation.image_id)
    assert image is not None
    assert (image.status, image.name, image.folder_id) == (
        ImageStatus.CREATING,
        "ubuntu-22",
        FOLDER,
    )
    assert operation.kind is OperationKind.CREATE_IMAGE
    assert not operation.done
    assert operation.created_by == SUBJECT
    assert store.row(operation.id).request == {"uri": "https://images.example.com/ubuntu.img"}


async def test_an_accepted_create_is_published_and_marked(
    images: Images, store: FakeStore, publisher: FakePublisher, marks: PublishedMarks
):
    operation = await images.create_image(new_image(), editor())
    await marks.flush()
    assert publisher.published == [operation.id]
    assert store.row(operation.id).published_at is not None


async def test_a_create_accepted_while_the_broker_is_down_is_kept_for_the_relay(
    images: Images, store: FakeStore, publisher: FakePublisher, marks: PublishedMarks
):
    publisher.go_down()
    operation = await images.create_image(new_image(), editor())
    await marks.flush()
    assert publisher.published == []
    assert store.row(operation.id).published_at is None
    store.advance(1)
    pending = await store.claim_unpublished(older_than_seconds=0.5, limit=10, claim_seconds=30)
    assert [p.operation_id for p in pending] == [operation.id]


async def test_create_with_a_name_taken_in_the_folder_is_already_exists(
    images: Images, store: FakeStore
):
    store.add_image(name="ubuntu-22")
    with pytest.raises(AlreadyExists):
        await images.create_image(new_image(name="ubuntu-22"), editor())
    assert len(store.state.images) == 1


async def test_create_beyond_the_folder_quota_is_resource_exhausted(publisher: FakePublisher):
    store = FakeStore(max_unfinished_per_folder=1)
    images = Images(store, store, publisher, PublishedMarks(store), publish_timeout=1.0)
    await images.create_image(new_image(name="first"), editor())
    with pytest.raises(ResourceExhausted):
        await images.create_image(new_image(name="second"), editor())


async def test_a_create_repeated_with_its_key_returns_the_first_operation(
    images: Images, store: FakeStore, publisher: FakePublisher
):
    first = await images.create_image(new_image(), editor(), key())
    again = await images.create_image(new_image(), editor(), key())
    assert again.id == first.id
    assert len(store.state.images) == 1
    assert publisher.published == [first.id]


# --- Update ---------------------------------------------------------------------------------


async def test_update_with_a_mask_changes_only_the_listed_paths(images: Images, store: FakeStore):
    image = store.add_image()
    operation = await images.update_image(
        image.id, ["description"], "ignored-name", "", {"ignored": "x"}, editor()
    )
    assert store.row(operation.id).request == {"description": ""}


async def test_update_without_a_mask_changes_the_populated_fields(images: Images, store: FakeStore):
    image = store.add_image()
    operation = await images.update_image(image.id, None, "new-name", "", {}, editor())
    assert store.row(operation.id).request == {"name": "new-name"}


async def test_update_with_the_star_mask_replaces_every_field(images: Images, store: FakeStore):
    image = store.add_image(description="old", labels={"a": "b"})
    operation = await images.update_image(image.id, ["*"], "new-name", "", {}, editor())
    assert store.row(operation.id).request == {"name": "new-name", "description": "", "labels": {}}


async def test_an_accepted_update_moves_the_image_to_updating_and_publishes(
    images: Images, store: FakeStore, publisher: FakePublisher
):
    image = store.add_image()
    operation = await images.update_image(image.id, ["name"], "renamed", "", {}, editor())
    assert store.status(image.id) is ImageStatus.UPDATING
    assert operation.folder_id == FOLDER
    assert operation.kind is OperationKind.UPDATE_IMAGE
    assert publisher.published == [operation.id]


async def test_update_by_a_viewer_is_refused_before_the_request_is_validated(images: Images):
    with pytest.raises(PermissionDenied):
        await images.update_image("not-an-id", ["bogus"], "", "", {}, viewer())


async def test_update_with_an_unknown_mask_path_names_update_mask(images: Images, store: FakeStore):
    image = store.add_image()
    with pytest.raises(InvalidArgument) as info:
        await images.update_image(image.id, ["checksum"], "", "", {}, editor())
    assert fields(info.value) == ["update_mask"]
    assert store.status(image.id) is ImageStatus.READY


async def test_updates_without_a_key_are_accepted_together_in_one_batch(
    images: Images, store: FakeStore
):
    targets = [store.add_image() for _ in range(3)]
    operations = await asyncio.gather(
        *(images.update_image(i.id, ["description"], "", "new", {}, editor()) for i in targets)
    )
    assert all(not operation.done for operation in operations)
    assert store.update_batches == [3]
    assert store.calls["begin_update"] == 0


async def test_updates_arriving_while_a_batch_is_written_go_together_in_the_next(
    images: Images, store: FakeStore
):
    """One accepting statement at a time: calls that trickle in while one is written wait for
    it, then go together in one statement (one commit, one message), not one batch each."""
    targets = [store.add_image() for _ in range(5)]

    def update(image_id: str) -> asyncio.Task[object]:
        return asyncio.create_task(
            images.update_image(image_id, ["description"], "", "new", {}, editor())
        )

    async with store._lock:  # the first batch's statement is held while the rest arrive
        calls = [update(targets[0].id)]

        async def first_started() -> bool:
            return store.update_batches == [1]

        await eventually(first_started, timeout=5, interval=0.001, what="the first batch")
        for image in targets[1:]:
            calls.append(update(image.id))
            await asyncio.sleep(0)  # each call arrives on a turn of the loop of its own
            await asyncio.sleep(0)
    await asyncio.gather(*calls)
    assert store.update_batches == [1, 4]


async def test_updates_with_keys_are_accepted_together_in_one_batch(
    images: Images, store: FakeStore
):
    targets = [store.add_image() for _ in range(3)]
    operations = await asyncio.gather(
        *(
            images.update_image(i.id, ["description"], "", "new", {}, editor(), key(f"k{n}"))
            for n, i in enumerate(targets)
        )
    )
    assert store.update_batches == [3]
    assert store.calls["begin_update"] == 0
    assert {store.state.keys[(SUBJECT, f"k{n}")].operation_id for n in range(3)} == {
        operation.id for operation in operations
    }


async def test_a_key_seen_before_is_replayed_alone_not_batched_again(
    images: Images, store: FakeStore
):
    image = store.add_image()
    first = await images.update_image(image.id, ["description"], "", "new", {}, editor(), key())
    again = await images.update_image(image.id, ["description"], "", "new", {}, editor(), key())
    assert again.id == first.id
    assert store.calls["begin_update"] == 1  # the replay, found alone
    assert len(store.state.operations) == 1


async def test_one_key_twice_in_a_batch_starts_one_operation(images: Images, store: FakeStore):
    image = store.add_image()
    first, again = await asyncio.gather(
        images.update_image(image.id, ["description"], "", "new", {}, editor(), key()),
        images.update_image(image.id, ["description"], "", "new", {}, editor(), key()),
    )
    assert store.update_batches == [2]
    assert again.id == first.id
    assert len(store.state.operations) == 1


async def test_a_key_reused_for_another_request_is_refused_from_a_batch(
    images: Images, store: FakeStore
):
    image, other = store.add_image(), store.add_image()
    await images.update_image(image.id, ["description"], "", "new", {}, editor(), key())
    with pytest.raises(InvalidArgument) as info:
        await images.update_image(
            other.id, ["description"], "", "new", {}, editor(), key(fingerprint="fp-2")
        )
    assert fields(info.value) == ["idempotency-key"]
    assert store.status(other.id) is ImageStatus.READY


async def test_a_refused_keyed_update_leaves_its_key_free(images: Images, store: FakeStore):
    busy = store.add_image(status=ImageStatus.UPDATING)
    with pytest.raises(FailedPrecondition):
        await images.update_image(busy.id, ["description"], "", "new", {}, editor(), key())
    assert store.state.keys == {}


async def test_two_updates_of_one_image_in_a_batch_accept_exactly_one(
    images: Images, store: FakeStore
):
    image = store.add_image()
    results = await asyncio.gather(
        images.update_image(image.id, ["description"], "", "one", {}, editor()),
        images.update_image(image.id, ["description"], "", "two", {}, editor()),
        return_exceptions=True,
    )
    accepted = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, BaseException)]
    assert len(accepted) == 1
    assert len(refused) == 1
    assert isinstance(refused[0], FailedPrecondition)


@pytest.mark.parametrize(
    "status",
    [ImageStatus.CREATING, ImageStatus.UPDATING, ImageStatus.ERROR, ImageStatus.DELETING],
)
async def test_update_of_an_image_that_is_not_ready_is_failed_precondition(
    images: Images, store: FakeStore, status: ImageStatus
):
    image = store.add_image(status=status)
    with pytest.raises(FailedPrecondition):
        await images.update_image(image.id, ["description"], "", "new", {}, editor())
    assert store.status(image.id) is status
    assert store.state.operations == {}


async def test_update_to_a_name_taken_in_the_folder_is_already_exists(
    images: Images, store: FakeStore
):
    store.add_image(name="taken")
    image = store.add_image()
    with pytest.raises(AlreadyExists):
        await images.update_image(image.id, ["name"], "taken", "", {}, editor())
    assert store.status(image.id) is ImageStatus.READY


async def test_update_to_a_name_taken_in_another_folder_is_accepted(
    images: Images, store: FakeStore
):
    store.add_image(OTHER_FOLDER, name="taken")
    image = store.add_image()
    operation = await images.update_image(image.id, ["name"], "taken", "", {}, editor())
    assert not operation.done


async def test_update_of_an_image_in_a_folder_the_caller_cannot_see_is_not_found(
    images: Images, store: FakeStore
):
    image = store.add_image(OTHER_FOLDER)
    with pytest.raises(NotFound):
        await images.update_image(image.id, ["description"], "", "new", {}, editor(FOLDER))
    assert store.status(image.id) is ImageStatus.READY


async def test_update_of_a_missing_image_is_not_found(images: Images):
    with pytest.raises(NotFound):
        await images.update_image(MISSING_IMAGE, ["description"], "", "new", {}, editor())


async def test_an_update_repeated_with_its_key_returns_the_first_operation(
    images: Images, store: FakeStore, publisher: FakePublisher
):
    image = store.add_image()
    first = await images.update_image(image.id, ["name"], "renamed", "", {}, editor(), key())
    again = await images.update_image(image.id, ["name"], "renamed", "", {}, editor(), key())
    assert again.id == first.id
    assert len(store.state.operations) == 1
    assert publisher.published == [first.id]


async def test_a_replay_to_a_caller_who_cannot_see_its_folder_is_not_found(
    images: Images, store: FakeStore
):
    image = store.add_image(FOLDER)
    await images.update_image(image.id, ["name"], "renamed", "", {}, editor("*"), key())
    with pytest.raises(NotFound):
        await images.update_image(
            image.id, ["name"], "renamed", "", {}, editor(OTHER_FOLDER), key()
        )


async def test_a_malformed_idempotency_key_is_invalid_argument(images: Images, store: FakeStore):
    image = store.add_image()
    with pytest.raises(InvalidArgument) as info:
        await images.update_image(image.id, ["name"], "renamed", "", {}, editor(), key("a key"))
    assert fields(info.value) == ["idempotency-key"]
    assert store.state.operations == {}


async def test_a_malformed_idempotency_key_of_a_viewer_is_permission_denied(
    images: Images, store: FakeStore
):
    image = store.add_image()
    with pytest.raises(PermissionDenied):
        await images.update_image(image.id, ["name"], "renamed", "", {}, viewer(), key("a key"))


# --- Delete ---------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [ImageStatus.READY, ImageStatus.ERROR])
async def test_delete_of_a_ready_or_failed_image_is_accepted(
    images: Images, store: FakeStore, publisher: FakePublisher, status: ImageStatus
):
    image = store.add_image(status=status)
    operation = await images.delete_image(image.id, editor())
    assert operation.kind is OperationKind.DELETE_IMAGE
    assert store.status(image.id) is ImageStatus.DELETING
    assert store.row(operation.id).request == {"status_before": int(status)}
    assert publisher.published == [operation.id]


@pytest.mark.parametrize(
    "status", [ImageStatus.CREATING, ImageStatus.UPDATING, ImageStatus.DELETING]
)
async def test_delete_of_an_image_with_an_operation_running_is_failed_precondition(
    images: Images, store: FakeStore, status: ImageStatus
):
    image = store.add_image(status=status)
    with pytest.raises(FailedPrecondition):
        await images.delete_image(image.id, editor())
    assert store.status(image.id) is status


async def test_delete_by_a_viewer_is_refused_before_the_id_is_validated(images: Images):
    with pytest.raises(PermissionDenied):
        await images.delete_image("bad id", viewer())


async def test_delete_with_an_invalid_id_names_image_id(images: Images):
    with pytest.raises(InvalidArgument) as info:
        await images.delete_image("bad id", editor())
    assert fields(info.value) == ["image_id"]


async def test_delete_of_an_image_in_a_folder_the_caller_cannot_see_is_not_found(
    images: Images, store: FakeStore
):
    image = store.add_image(OTHER_FOLDER)
    with pytest.raises(NotFound):
        await images.delete_image(image.id, editor(FOLDER))
    assert store.status(image.id) is ImageStatus.READY


# --- Get ------------------------------------------------------------------------------------


async def test_get_returns_a_visible_image(images: Images, store: FakeStore):
    image = store.add_image()
    assert await images.get_image(image.id, viewer()) == image


async def test_get_of_an_image_in_a_folder_the_caller_cannot_see_is_not_found(
    images: Images, store: FakeStore
):
    image = store.add_image(OTHER_FOLDER)
    with pytest.raises(NotFound, match=image.id):
        await images.get_image(image.id, viewer(FOLDER))


async def test_get_of_a_missing_image_is_not_found(images: Images):
    with pytest.raises(NotFound):
        await images.get_image(MISSING_IMAGE, viewer())


async def test_get_with_an_invalid_id_is_invalid_argument(images: Images, store: FakeStore):
    with pytest.raises(InvalidArgument):
        await images.get_image("IMG", viewer())
    assert store.calls["get_image"] == 0


# --- List -----------------------------------------------------------------------------------


async def list_all(images: Images, size: int, order_by: str = "", filter_text: str = ""):
    """Every page of the folder's listing: the pages' IDs, following next_page_token."""
    pages: list[list[str]] = []
    token = ""
    while True:
        page = await images.list_images(FOLDER, size, token, filter_text, order_by, viewer())
        pages.append([image.id for image in page.images])
        token = page.next_page_token
        if not token:
            return pages


async def test_list_shows_only_the_asked_folder(images: Images, store: FakeStore):
    mine = store.add_image(FOLDER)
    store.add_image(OTHER_FOLDER)
    assert await list_all(images, 10) == [[mine.id]]


async def test_list_of_a_folder_the_caller_may_not_see_is_denied(images: Images):
    with pytest.raises(PermissionDenied):
        await images.list_images(OTHER_FOLDER, 10, "", "", "", viewer(FOLDER))


async def test_list_with_an_invalid_page_size_is_invalid_argument(images: Images):
    with pytest.raises(InvalidArgument) as info:
        await images.list_images(FOLDER, 1001, "", "", "", viewer())
    assert fields(info.value) == ["page_size"]


async def test_list_pages_through_every_image_once(images: Images, store: FakeStore):
    made = sorted(store.add_image().id for _ in range(5))
    pages = await list_all(images, 2)
    assert [len(page) for page in pages] == [2, 2, 1]
    assert [i for page in pages for i in page] == made


async def test_a_page_that_is_exactly_full_has_no_next_token(images: Images, store: FakeStore):
    for _ in range(2):
        store.add_image()
    page = await images.list_images(FOLDER, 2, "", "", "", viewer())
    assert len(page.images) == 2
    assert page.next_page_token == ""


@pytest.mark.parametrize(
    ("order_by", "sort_key", "descending"),
    [
        ("name desc", "name", True),
        ("createdAt", "created_at", False),
        ("createdAt desc", "created_at", True),
    ],
)
async def test_list_pages_follow_the_order_asked(
    images: Images, store: FakeStore, order_by: str, sort_key: str, descending: bool
):
    made = [store.add_image(name=f"n-{letter}") for letter in "cadbe"]
    expected = [i.id for i in sorted(made, key=lambda i: getattr(i, sort_key), reverse=descending)]
    pages = await list_all(images, 2, order_by)
    assert [i for page in pages for i in page] == expected


async def test_list_applies_the_filter(images: Images, store: FakeStore):
    wanted = store.add_image(name="web-server")
    store.add_image(name="database")
    assert await list_all(images, 10, filter_text='name:"web"') == [[wanted.id]]


async def test_a_page_is_cut_short_by_its_byte_budget(store: FakeStore, publisher: FakePublisher):
    made = sorted(store.add_image(description="d" * 1000).id for _ in range(5))
    one = image_wire_bytes(store.image(made[0]))  # type: ignore[arg-type]
    images = Images(
        store, store, publisher, PublishedMarks(store), publish_timeout=1.0, page_bytes=2 * one
    )
    first = await images.list_images(FOLDER, 10, "", "", "", viewer())
    assert len(first.images) == 2
    assert first.next_page_token
    pages = await list_all(images, 10)
    assert [i for page in pages for i in page] == made


async def test_one_image_larger_than_the_budget_still_makes_a_page(
    store: FakeStore, publisher: FakePublisher
):
    store.add_image(description="d" * 1000)
    store.add_image(description="d" * 1000)
    images = Images(
        store, store, publisher, PublishedMarks(store), publish_timeout=1.0, page_bytes=10
    )
    page = await images.list_images(FOLDER, 10, "", "", "", viewer())
    assert len(page.images) == 1
    assert page.next_page_token


# --- ListOperations -------------------------------------------------------------------------


async def test_list_operations_pages_newest_first(images: Images, store: FakeStore):
    image = store.add_image()
    made = [store.add_operation(OperationKind.UPDATE_IMAGE, image.id, done=True) for _ in range(3)]
    first = await images.list_operations(image.id, 2, "", viewer())
    assert [o.id for o in first.operations] == [made[2].id, made[1].id]
    second = await images.list_operations(image.id, 2, first.next_page_token, viewer())
    assert [o.id for o in second.operations] == [made[0].id]
    assert second.next_page_token == ""


async def test_list_operations_of_an_image_in_a_folder_the_caller_cannot_see_is_not_found(
    images: Images, store: FakeStore
):
    image = store.add_image(OTHER_FOLDER)
    store.add_operation(OperationKind.UPDATE_IMAGE, image.id, OTHER_FOLDER, done=True)
    with pytest.raises(NotFound):
        await images.list_operations(image.id, 10, "", viewer(FOLDER))


async def test_list_operations_of_an_unseen_image_without_operations_is_not_found(
    images: Images, store: FakeStore
):
    image = store.add_image(OTHER_FOLDER)
    with pytest.raises(NotFound):
        await images.list_operations(image.id, 10, "", viewer(FOLDER))


async def test_list_operations_of_a_visible_image_without_operations_is_empty(
    images: Images, store: FakeStore
):
    image = store.add_image()
    page = await images.list_operations(image.id, 10, "", viewer())
    assert page.operations == []
    assert page.next_page_token == ""


async def test_list_operations_of_a_missing_image_is_not_found(images: Images):
    with pytest.raises(NotFound):
        await images.list_operations(MISSING_IMAGE, 10, "", viewer())


async def test_list_operations_of_a_deleted_image_still_shows_them(
    images: Images, store: FakeStore
):
    operation = store.add_operation(OperationKind.DELETE_IMAGE, MISSING_IMAGE, done=True)
    page = await images.list_operations(MISSING_IMAGE, 10, "", viewer())
    assert [o.id for o in page.operations] == [operation.id]


async def test_list_operations_page_is_cut_short_by_its_byte_budget(
    store: FakeStore, publisher: FakePublisher
):
    image = store.add_image()
    for _ in range(3):
        store.add_operation(OperationKind.UPDATE_IMAGE, image.id, done=True)
    images = Images(
        store, store, publisher, PublishedMarks(store), publish_timeout=1.0, page_bytes=600
    )
    page = await images.list_operations(image.id, 10, "", viewer())
    assert len(page.operations) == 2  # 256 bytes each: a third would pass 600
    assert page.next_page_token
