"""The operations console's read: a folder's recent operations, as they progress.

Not a method of the public API (which lists operations per image only): the console of a
small deployment shows what the workers are doing in a folder, and serves it under
``/console/api/``. The same rules as ``ImageService.List``: the caller names the folder, so a
folder it may not see is refused openly (``PERMISSION_DENIED``).
"""

from __future__ import annotations

import enum

from service.domain.auth import Principal
from service.domain.errors import Code
from service.domain.validation import Violations, check_folder_id, page_size
from service.usecases.ports import Reads, RecentOperation


class Progress(enum.StrEnum):
    """Where an operation is: accepted (waiting for a worker), running (a worker claimed
    it), done with a response, failed with an error, or cancelled."""

    ACCEPTED = "accepted"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


def console_progress(recent: RecentOperation) -> Progress:
    operation = recent.operation
    if not operation.done:
        return Progress.RUNNING if recent.attempts > 0 else Progress.ACCEPTED
    if operation.error is None:
        return Progress.DONE
    return Progress.CANCELLED if operation.error.code is Code.CANCELLED else Progress.FAILED


class RecentOperations:
    """A folder's latest operations, newest first."""

    def __init__(self, reads: Reads) -> None:
        self._reads = reads

    async def recent_operations(
        self, folder_id: str, size: int, caller: Principal
    ) -> list[RecentOperation]:
        """At most ``size`` (0: the default page size; at most the largest) operations."""
        v = Violations()
        check_folder_id(v, folder_id)
        limit = page_size(v, size)
        v.raise_if_any()
        caller.require_folder(folder_id)
        return await self._reads.recent_operations(folder_id, limit)
