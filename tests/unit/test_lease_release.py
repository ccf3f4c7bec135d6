"""A worker stopped during a Create gives its lease back; when it cannot, it says so (the
lease then runs out by itself and the sweeper hands the operation out again)."""

from __future__ import annotations

import asyncio

import pytest
from structlog.testing import capture_logs

from service.domain.errors import Unavailable
from service.domain.model import ClaimedOperation, ImageStatus, OperationKind
from service.usecases.execute import Executor
from service.usecases.ports import Downloaded
from tests.unit.fakes import FakeDownloader, FakeStore

URI = "https://images.example.com/ubuntu.img"


async def test_a_lease_that_cannot_be_given_back_is_logged_and_the_stop_goes_on():
    store = FakeStore()
    image = store.add_image(status=ImageStatus.CREATING)
    operation = store.add_operation(OperationKind.CREATE_IMAGE, image.id, request={"uri": URI})

    async def unreachable(claim: ClaimedOperation) -> None:
        raise Unavailable("database unreachable")

    store.release_lease = unreachable  # type: ignore[method-assign]
    downloader = FakeDownloader(Downloaded(md5="0" * 32, size=1), gate=asyncio.Event())
    worker = Executor(store, downloader, lease_seconds=30, max_attempts=3)
    with capture_logs() as logs:
        running = asyncio.create_task(worker.execute(operation.id))
        await asyncio.wait_for(downloader.started.wait(), 1)
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
    failed = [e for e in logs if e["event"] == "operation.release_failed"]
    assert len(failed) == 1, logs
    assert failed[0]["log_level"] == "warning"
    assert "database unreachable" in failed[0]["error"]
    assert downloader.cancelled
    assert store.row(operation.id).lease_until is not None, "left to run out"
