"""State rules: when an Update may start, and where a failed operation leaves its image."""

from __future__ import annotations

import pytest

from service.domain.errors import Code, FailedPrecondition, ResourceExhausted
from service.domain.model import ImageStatus, OperationKind
from service.domain.rules import ensure_updatable, ensure_within_quota, image_after_ending

CREATE, UPDATE, DELETE = (
    OperationKind.CREATE_IMAGE,
    OperationKind.UPDATE_IMAGE,
    OperationKind.DELETE_IMAGE,
)

IMAGE_ID = "img" + "a1b2c3d4e5f6g7h8i"


def test_a_ready_image_is_updatable() -> None:
    assert ensure_updatable(IMAGE_ID, ImageStatus.READY) is None


def test_a_ready_status_read_back_from_its_number_is_updatable() -> None:
    assert ensure_updatable(IMAGE_ID, ImageStatus(2)) is None


def test_an_image_with_an_update_in_progress_is_refused() -> None:
    with pytest.raises(FailedPrecondition) as info:
        ensure_updatable(IMAGE_ID, ImageStatus.UPDATING)
    assert info.value.code is Code.FAILED_PRECONDITION
    assert info.value.message == f"Image {IMAGE_ID} has an update in progress"


@pytest.mark.parametrize(
    "status",
    [
        ImageStatus.STATUS_UNSPECIFIED,
        ImageStatus.CREATING,
        ImageStatus.ERROR,
        ImageStatus.DELETING,
    ],
)
def test_an_image_not_ready_is_refused_with_failed_precondition(status: ImageStatus) -> None:
    with pytest.raises(FailedPrecondition) as info:
        ensure_updatable(IMAGE_ID, status)
    assert info.value.code is Code.FAILED_PRECONDITION
    assert info.value.message == f"Image {IMAGE_ID} is {status.name}, expected READY"
    assert info.value.retryable is False


def test_only_ready_is_updatable() -> None:
    updatable = []
    for status in ImageStatus:
        try:
            ensure_updatable(IMAGE_ID, status)
        except FailedPrecondition:
            continue
        updatable.append(status)
    assert updatable == [ImageStatus.READY]


@pytest.mark.parametrize(
    ("kind", "now", "before", "cancelled", "after"),
    [
        (CREATE, ImageStatus.CREATING, None, False, ImageStatus.ERROR),
        (CREATE, ImageStatus.CREATING, None, True, None),
        (CREATE, ImageStatus.READY, None, True, None),
        (UPDATE, ImageStatus.UPDATING, None, False, ImageStatus.READY),
        (UPDATE, ImageStatus.UPDATING, None, True, ImageStatus.READY),
        (UPDATE, ImageStatus.READY, None, False, ImageStatus.READY),
        (DELETE, ImageStatus.DELETING, ImageStatus.ERROR, False, ImageStatus.ERROR),
        (DELETE, ImageStatus.DELETING, ImageStatus.READY, True, ImageStatus.READY),
        (DELETE, ImageStatus.DELETING, None, False, ImageStatus.READY),
        (DELETE, ImageStatus.ERROR, ImageStatus.READY, False, ImageStatus.ERROR),
    ],
)
def test_where_an_operation_ending_without_its_change_leaves_its_image(
    kind: OperationKind,
    now: ImageStatus,
    before: ImageStatus | None,
    cancelled: bool,
    after: ImageStatus | None,
) -> None:
    assert image_after_ending(kind, now, before, cancelled=cancelled) is after


@pytest.mark.parametrize("kind", list(OperationKind))
@pytest.mark.parametrize("cancelled", [False, True])
def test_an_ended_operation_never_leaves_its_image_in_its_transitional_status(
    kind: OperationKind, cancelled: bool
) -> None:
    for status in (ImageStatus.CREATING, ImageStatus.UPDATING, ImageStatus.DELETING):
        after = image_after_ending(kind, status, ImageStatus.READY, cancelled=cancelled)
        transitional = {
            OperationKind.CREATE_IMAGE: ImageStatus.CREATING,
            OperationKind.UPDATE_IMAGE: ImageStatus.UPDATING,
            OperationKind.DELETE_IMAGE: ImageStatus.DELETING,
        }[kind]
        if status is transitional:
            assert after is not transitional


def test_the_quota_refuses_the_operation_that_would_exceed_it() -> None:
    ensure_within_quota("f", 9, 10)
    with pytest.raises(ResourceExhausted) as info:
        ensure_within_quota("f", 10, 10)
    assert info.value.quota[0].field == "folder:f"
    assert info.value.retryable
