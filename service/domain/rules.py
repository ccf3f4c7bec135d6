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


def status_after_failure(status_before: ImageStatus) -> ImageStatus:
    """Where a failed operation leaves its image: a failed Create is ``ERROR``, else ``READY``."""
    return ImageStatus.ERROR if status_before is ImageStatus.CREATING else ImageStatus.READY
