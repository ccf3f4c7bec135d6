"""The operations console's read: a folder's recent operations, newest first, with progress."""

from __future__ import annotations

import pytest

from service.domain.errors import Code, InvalidArgument, PermissionDenied
from service.domain.model import OperationError, OperationKind
from service.usecases.recent import Progress, RecentOperations, console_progress
from tests.unit.fakes import FOLDER, OTHER_FOLDER, FakeStore, editor, viewer

UPDATE = OperationKind.UPDATE_IMAGE


@pytest.fixture
def store() -> FakeStore:
    return FakeStore()


async def test_a_folders_operations_newest_first_up_to_the_page_size(store):
    image = store.add_image()
    ids = [store.add_operation(UPDATE, image.id, done=True).id for _ in range(5)]
    store.add_operation(UPDATE, store.add_image(OTHER_FOLDER).id, OTHER_FOLDER)
    recent = await RecentOperations(store).recent_operations(FOLDER, 3, viewer())
    assert [r.operation.id for r in recent] == ids[::-1][:3]
    everything = await RecentOperations(store).recent_operations(FOLDER, 0, viewer())
    assert [r.operation.id for r in everything] == ids[::-1]  # 0: the default page size


async def test_each_operation_says_where_it_is(store):
    image = store.add_image()
    cases = {
        Progress.ACCEPTED: store.add_operation(UPDATE, image.id),
        Progress.RUNNING: store.add_operation(UPDATE, image.id, attempts=1),
        Progress.DONE: store.add_operation(UPDATE, image.id, done=True, response=image),
        Progress.FAILED: store.add_operation(
            UPDATE, image.id, done=True, error=OperationError(Code.NOT_FOUND, "gone")
        ),
        Progress.CANCELLED: store.add_operation(
            UPDATE, image.id, done=True, error=OperationError(Code.CANCELLED, "Operation cancelled")
        ),
    }
    recent = await RecentOperations(store).recent_operations(FOLDER, 10, editor())
    found = {each.operation.id: console_progress(each) for each in recent}
    assert found == {operation.id: expected for expected, operation in cases.items()}


async def test_a_folder_the_caller_may_not_see_is_refused_openly(store):
    store.add_operation(UPDATE, store.add_image(OTHER_FOLDER).id, OTHER_FOLDER)
    with pytest.raises(PermissionDenied, match=OTHER_FOLDER):
        await RecentOperations(store).recent_operations(OTHER_FOLDER, 10, editor(FOLDER))
    assert store.calls["recent_operations"] == 0


@pytest.mark.parametrize(
    ("folder_id", "size", "field"),
    [("", 10, "folder_id"), ("Bad Folder", 10, "folder_id"), (FOLDER, 1001, "page_size")],
)
async def test_invalid_fields_are_refused_before_any_read(store, folder_id, size, field):
    with pytest.raises(InvalidArgument) as refused:
        await RecentOperations(store).recent_operations(folder_id, size, editor("*"))
    assert [v.field for v in refused.value.violations] == [field]
    assert store.calls["recent_operations"] == 0
