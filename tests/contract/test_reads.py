"""``Reads``: images and operations as Get, List and the pollers see them."""

from __future__ import annotations

from service.domain.listing import Condition, ImageQuery, OperationQuery, Operator, Ordering
from service.domain.model import Image, ImageChange
from tests.contract.implementations import Implementation
from tests.contract.requests import FOLDER, OTHER_FOLDER, delete_of, update_of


def query(
    *conditions: Condition,
    order: Ordering | None = None,
    after: tuple[object, str] | None = None,
) -> ImageQuery:
    return ImageQuery(FOLDER, list(conditions), order or Ordering(), after)


def names(images: list[Image]) -> list[str]:
    return [image.name for image in images]


async def test_a_missing_image_reads_as_none(port: Implementation) -> None:
    assert await port.reads.get_image("img-missing") is None
    assert await port.reads.image_folder("img-missing") is None


async def test_an_images_folder_is_read(port: Implementation) -> None:
    image = await port.add_image(OTHER_FOLDER)

    assert await port.reads.image_folder(image.id) == OTHER_FOLDER


async def test_a_list_holds_the_folders_images_only_by_id(port: Implementation) -> None:
    mine = [await port.add_image(FOLDER) for _ in range(3)]
    await port.add_image(OTHER_FOLDER)

    listed = await port.reads.list_images(query(), 10)

    assert [image.id for image in listed] == sorted(image.id for image in mine)


async def test_a_list_is_ordered_by_name_descending(port: Implementation) -> None:
    for name in ("b", "c", "a"):
        await port.add_image(FOLDER, name=name)

    listed = await port.reads.list_images(query(order=Ordering("name", descending=True)), 10)

    assert names(listed) == ["c", "b", "a"]


async def test_a_list_is_ordered_by_creation(port: Implementation) -> None:
    for name in ("b", "c", "a"):
        await port.add_image(FOLDER, name=name)

    listed = await port.reads.list_images(query(order=Ordering("createdAt")), 10)

    assert names(listed) == ["b", "c", "a"]


async def test_a_list_filters_on_an_equal_name(port: Implementation) -> None:
    for name in ("disk", "disk-2", "other"):
        await port.add_image(FOLDER, name=name)

    listed = await port.reads.list_images(query(Condition("name", Operator.EQUALS, "disk")), 10)

    assert names(listed) == ["disk"]


async def test_a_list_filters_on_a_name_containing_a_text(port: Implementation) -> None:
    for name in ("a-disk", "disk-2", "other"):
        await port.add_image(FOLDER, name=name)

    listed = await port.reads.list_images(
        query(Condition("name", Operator.CONTAINS, "disk"), order=Ordering("name")), 10
    )

    assert names(listed) == ["a-disk", "disk-2"]


async def test_a_list_stops_at_its_limit(port: Implementation) -> None:
    for name in ("a", "b", "c"):
        await port.add_image(FOLDER, name=name)

    listed = await port.reads.list_images(query(order=Ordering("name")), 2)

    assert names(listed) == ["a", "b"]


async def test_a_list_by_name_continues_after_its_position(port: Implementation) -> None:
    for name in ("a", "b", "c", "d"):
        await port.add_image(FOLDER, name=name)

    listed = await port.reads.list_images(query(order=Ordering("name"), after=("b", "")), 10)

    assert names(listed) == ["c", "d"]


async def test_a_list_by_creation_descending_continues_after_its_position(
    port: Implementation,
) -> None:
    images = [await port.add_image(FOLDER, name=name) for name in ("a", "b", "c", "d")]
    position = (images[2].created_at, images[2].id)

    listed = await port.reads.list_images(
        query(order=Ordering("createdAt", descending=True), after=position), 10
    )

    assert names(listed) == ["b", "a"]


async def test_an_images_operations_are_listed_newest_first(port: Implementation) -> None:
    image = await port.add_image(FOLDER)
    update = await port.accepts.begin_update(update_of(image.id), ImageChange(name="n"))
    await port.finishes.apply_updates([update.operation.id])
    delete = await port.accepts.begin_delete(delete_of(image.id))
    other = await port.add_image(FOLDER)
    await port.accepts.begin_delete(delete_of(other.id))

    listed = await port.reads.list_operations(OperationQuery(image.id), 10)

    assert [op.id for op in listed] == [delete.operation.id, update.operation.id]


async def test_an_images_operations_continue_after_their_position(port: Implementation) -> None:
    image = await port.add_image(FOLDER)
    first = await port.accepts.begin_update(update_of(image.id), ImageChange(name="n"))
    await port.finishes.apply_updates([first.operation.id])
    second = await port.accepts.begin_delete(delete_of(image.id))
    position = (second.operation.created_at, second.operation.id)

    listed = await port.reads.list_operations(OperationQuery(image.id, position), 10)

    assert [op.id for op in listed] == [first.operation.id]


async def test_operations_are_read_in_the_order_asked(port: Implementation) -> None:
    first, second = await port.add_image(FOLDER), await port.add_image(FOLDER)
    a = (await port.accepts.begin_delete(delete_of(first.id))).operation
    b = (await port.accepts.begin_delete(delete_of(second.id))).operation

    assert await port.reads.get_operations([b.id, "opn-missing", a.id]) == [b, None, a]


async def test_a_folders_recent_operations_come_newest_first_with_their_claims(
    port: Implementation,
) -> None:
    first, second = await port.add_image(FOLDER), await port.add_image(FOLDER)
    older = (await port.accepts.begin_delete(delete_of(first.id))).operation
    newer = (await port.accepts.begin_delete(delete_of(second.id))).operation
    await port.finishes.claim_with_lease(older.id, 30)
    other = await port.add_image(OTHER_FOLDER)
    await port.accepts.begin_delete(delete_of(other.id))

    recent = await port.reads.recent_operations(FOLDER, 10)

    assert [(r.operation.id, r.attempts) for r in recent] == [(newer.id, 0), (older.id, 1)]
    assert [r.image_name for r in recent] == [second.name, first.name]


async def test_a_recent_operation_of_an_image_gone_has_no_image_name(port: Implementation) -> None:
    image = await port.add_image(FOLDER)
    accepted = (await port.accepts.begin_delete(delete_of(image.id))).operation
    async with port.finishes.transaction() as tx:
        await tx.delete_image(image.id)
        await tx.finish_deleted(accepted.id)

    [recent] = await port.reads.recent_operations(FOLDER, 10)

    assert recent.operation.id == accepted.id
    assert recent.image_name == ""


async def test_a_folders_recent_operations_stop_at_the_limit(port: Implementation) -> None:
    images = [await port.add_image(FOLDER) for _ in range(3)]
    accepted = [await port.accepts.begin_delete(delete_of(image.id)) for image in images]

    recent = await port.reads.recent_operations(FOLDER, 2)

    assert [r.operation.id for r in recent] == [a.operation.id for a in accepted[:0:-1]]
