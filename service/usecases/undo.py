"""Ending an operation without its change: failed, abandoned or cancelled, all alike."""

from __future__ import annotations

from service.domain.model import ClaimedOperation, Image, OperationError
from service.domain.rules import image_after_ending
from service.usecases.ports import OperationTransaction


async def end_with_error(
    tx: OperationTransaction,
    operation: ClaimedOperation,
    image: Image | None,
    error: OperationError,
    *,
    cancelled: bool = False,
    dead_lettered: bool = False,
) -> None:
    """Put the (locked) image where ``rules.image_after_ending`` says and finish the (locked)
    operation with ``error``, in the caller's transaction; ``dead_lettered`` records that it
    ended because its message reached the dead-letter queue."""
    if image is not None:
        after = image_after_ending(
            operation.kind, image.status, operation.status_before, cancelled=cancelled
        )
        if after is None:
            await tx.delete_image(image.id)
        elif after is not image.status:
            await tx.set_image_status(image.id, after)
    await tx.finish(operation.id, error=error, dead_lettered=dead_lettered)
