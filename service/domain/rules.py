"""State transitions of images under operations."""

from __future__ import annotations

from service.domain.errors import FailedPrecondition
from service.domain.model import ImageStatus


def ensure_updatable(image_id: str, status: ImageStatus) -> None:
    """An Update may start only from ``READY``; one image has one unfinished Update at most."""
    if status is ImageStatus.UPDATING:
        raise FailedPrecondition(f"Image {image_id} has an update in progress")
    if status is not ImageStatus.READY:
        raise FailedPrecondition(f"Image {image_id} is {status.name}, expected READY")


def ensure_deletable(image_id: str, status: ImageStatus) -> None:
    """A Delete may start from ``READY`` or ``ERROR``: any other status has an operation running."""
    if status not in (ImageStatus.READY, ImageStatus.ERROR):
        raise FailedPrecondition(
            f"Image {image_id} has an unfinished operation (it is {status.name})"
        )


def status_after_failure(
    status_now: ImageStatus, status_before: ImageStatus | None = None
) -> ImageStatus:
    """Where a failed operation leaves its image.

    A failed Create leaves it ``ERROR``; a failed Delete restores the status it had before
    (``status_before``); anything else returns to ``READY``.
    """
    if status_now is ImageStatus.CREATING:
        return ImageStatus.ERROR
    if status_now is ImageStatus.DELETING and status_before is not None:
        return status_before
    return ImageStatus.READY
