"""State rules of images under operations: when one may start, and what it leaves behind.

Each rule has this one home. Where a SQL fast path must do the same (the group commit of
Updates, the workers' one-statement Update), the statement sits beside the adapter code that
runs it and a property test runs random inputs through both and compares.
"""

from __future__ import annotations

from service.domain.errors import FailedPrecondition, FieldViolation, ResourceExhausted
from service.domain.model import ImageStatus, OperationKind


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


def ensure_within_quota(folder_id: str, unfinished: int, limit: int) -> None:
    """At most ``limit`` unfinished operations per folder; a new one needs room for itself."""
    if unfinished >= limit:
        raise ResourceExhausted(
            f"Too many unfinished operations in folder {folder_id}",
            quota=[FieldViolation(f"folder:{folder_id}", f"at most {limit} unfinished operations")],
        )


def image_after_ending(
    kind: OperationKind,
    status_now: ImageStatus,
    status_before: ImageStatus | None = None,
    *,
    cancelled: bool = False,
) -> ImageStatus | None:
    """The status an operation that ends without its change (failed, abandoned or cancelled)
    leaves its image in; ``None``: the image is removed.

    A cancelled Create leaves no image; a failed one leaves it ``ERROR``. An Update's image is
    ``READY`` again. A Delete's image gets back the status it had (``status_before``). An image
    no longer in the operation's transitional status is left as it is.
    """
    if kind is OperationKind.CREATE_IMAGE:
        if cancelled:
            return None
        return ImageStatus.ERROR if status_now is ImageStatus.CREATING else status_now
    if kind is OperationKind.UPDATE_IMAGE:
        return ImageStatus.READY if status_now is ImageStatus.UPDATING else status_now
    if status_now is ImageStatus.DELETING:
        return status_before if status_before is not None else ImageStatus.READY
    return status_now
