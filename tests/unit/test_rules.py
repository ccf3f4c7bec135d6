"""State rules: when an Update may start, and where a failed operation leaves its image."""

from __future__ import annotations

import pytest

from service.domain.errors import Code, FailedPrecondition
from service.domain.model import ImageStatus
from service.domain.rules import ensure_updatable, status_after_failure

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
    ("before", "after"),
    [
        (ImageStatus.CREATING, ImageStatus.ERROR),
        (ImageStatus.UPDATING, ImageStatus.READY),
        (ImageStatus.DELETING, ImageStatus.READY),
        (ImageStatus.READY, ImageStatus.READY),
    ],
)
def test_status_after_a_failed_operation(before: ImageStatus, after: ImageStatus) -> None:
    assert status_after_failure(before) is after


def test_a_failed_update_never_leaves_the_image_updating() -> None:
    assert status_after_failure(ImageStatus.UPDATING) is not ImageStatus.UPDATING
