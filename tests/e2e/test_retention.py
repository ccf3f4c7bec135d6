"""Retention: finished operations and idempotency keys are removed by age by the workers'
background job; nothing unfinished is ever removed. Rows are written straight into the
database with old timestamps, and a private worker runs the job every 0.2 s."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import grpc
import pydantic
import pytest

from service.domain import ids
from service.runtime.settings import Settings
from tests.e2e.client import create_ready_image, folder, rpc_error, unique
from tests.support import connect, eventually
from yandex.cloud.operation import operation_service_pb2, operation_service_pb2_grpc

DAY = 86400


class Rows:
    """Inserts aged rows and removes whatever is left of them at the end."""

    def __init__(self, db) -> None:
        self.db = db
        self.operation_ids: list[str] = []
        self.keys: list[str] = []

    async def operation(
        self,
        *,
        age: str,
        done: bool,
        error: bool = False,
    ) -> str:
        """An Update of a made-up image, created and last modified ``age`` ago."""
        operation_id = ids.new_id(ids.OPERATION_PREFIX)
        response = None
        if done and not error:
            response = json.dumps({"id": "img" + "r" * 17, "description": "snapshot"})
        await self.db.execute(
            "INSERT INTO operations (id, kind, image_id, folder_id, description, created_at,"
            " modified_at, done, request, response, error_code, error_message, published_at)"
            " VALUES ($1, 'update_image', $2, $3, 'Update image', now() - $4::text::interval,"
            " now() - $4::text::interval, $5, $6::jsonb, $7::jsonb, $8, $9, now())",
            operation_id,
            ids.new_id(ids.IMAGE_PREFIX),
            folder(),
            age,
            done,
            json.dumps({"description": "aged"}),
            response,
            13 if done and error else None,
            "failed long ago" if done and error else None,
        )
        self.operation_ids.append(operation_id)
        return operation_id

    async def key(self, *, age: str) -> str:
        key = unique("retention-key")
        await self.db.execute(
            "INSERT INTO idempotency_keys (caller, key, fingerprint, operation_id, created_at)"
            " VALUES ('', $1, 'fingerprint', $2, now() - $3::text::interval)",
            key,
            ids.new_id(ids.OPERATION_PREFIX),
            age,
        )
        self.keys.append(key)
        return key

    async def operation_exists(self, operation_id: str) -> bool:
        return bool(await self.db.fetchval("SELECT 1 FROM operations WHERE id = $1", operation_id))

    async def key_exists(self, key: str) -> bool:
        return bool(
            await self.db.fetchval(
                "SELECT 1 FROM idempotency_keys WHERE caller = '' AND key = $1", key
            )
        )

    async def cleanup(self) -> None:
        await self.db.execute(
            "DELETE FROM operations WHERE id = ANY($1::text[])", self.operation_ids
        )
        await self.db.execute(
            "DELETE FROM idempotency_keys WHERE caller = '' AND key = ANY($1::text[])", self.keys
        )


@pytest.fixture
async def rows(db) -> AsyncIterator[Rows]:
    made = Rows(db)
    yield made
    await made.cleanup()


async def test_old_finished_operations_and_expired_keys_are_removed_and_nothing_else(
    processes, own_stack_env, rows
):
    old_done = await rows.operation(age="31 days", done=True)
    old_failed = await rows.operation(age="31 days", done=True, error=True)
    recent_done = await rows.operation(age="29 days", done=True)
    ancient_unfinished = await rows.operation(age="40 days", done=False)
    expired_key = await rows.key(age="25 hours")
    live_key = await rows.key(age="23 hours")

    worker = await processes.start(
        "workers", own_stack_env(RETENTION_INTERVAL_SECONDS="0.2"), "worker-retention"
    )

    async def purged() -> bool:
        return not (
            await rows.operation_exists(old_done)
            or await rows.operation_exists(old_failed)
            or await rows.key_exists(expired_key)
        )

    await eventually(purged, what="the old finished operations and the expired key to go")
    assert await rows.operation_exists(recent_done)
    assert await rows.operation_exists(ancient_unfinished)
    assert await rows.key_exists(live_key)

    async def reported() -> bool:  # the log line follows the deletes
        return bool(worker.logged("retention.purged"))

    await eventually(reported, what="the purge to be logged")


async def test_retention_periods_are_configurable(processes, own_stack_env, rows):
    # Keys kept 2 hours, finished operations 3 hours: shorter than anything the defaults keep.
    env = own_stack_env(
        RETENTION_INTERVAL_SECONDS="0.2",
        OPERATION_RETENTION_SECONDS=str(3 * 3600),
        IDEMPOTENCY_TTL_SECONDS=str(2 * 3600),
    )
    gone = await rows.operation(age="4 hours", done=True)
    kept = await rows.operation(age="2 hours", done=True)
    unfinished = await rows.operation(age="5 hours", done=False)
    gone_key = await rows.key(age="3 hours")
    kept_key = await rows.key(age="1 hour")

    await processes.start("workers", env, "worker-retention-short")

    async def purged() -> bool:
        return not (await rows.operation_exists(gone) or await rows.key_exists(gone_key))

    await eventually(purged, what="rows past the configured periods to go")
    assert await rows.operation_exists(kept)
    assert await rows.operation_exists(unfinished)
    assert await rows.key_exists(kept_key)


async def test_more_old_operations_than_one_batch_are_all_removed(
    processes, own_stack_env, rows, db
):
    # The job deletes in batches of 1000; a backlog larger than a batch goes in one run.
    tag = unique("bulk")
    await db.execute(
        "INSERT INTO operations (id, kind, image_id, folder_id, description, created_at,"
        " modified_at, done, request, error_code, error_message)"
        " SELECT $1 || lpad(n::text, 6, '0'), 'update_image', 'img' || repeat('b', 17), $1,"
        " 'Update image', now() - interval '60 days', now() - interval '60 days', true,"
        " '{}'::jsonb, 13, 'old' FROM generate_series(1, 2500) AS n",
        tag,
    )
    try:
        fresh = await rows.operation(age="1 day", done=True)
        worker = await processes.start(
            "workers", own_stack_env(RETENTION_INTERVAL_SECONDS="0.2"), "worker-retention-bulk"
        )

        async def all_gone() -> bool:
            left = await db.fetchval("SELECT count(*) FROM operations WHERE folder_id = $1", tag)
            return left == 0

        await eventually(all_gone, what="the whole backlog to be removed")
        assert await rows.operation_exists(fresh)

        async def reported() -> bool:
            lines = worker.logged("retention.purged")
            return any(line["operations"] >= 2500 for line in lines)

        await eventually(reported, what="the purge of the backlog to be logged")
    finally:
        await db.execute("DELETE FROM operations WHERE folder_id = $1", tag)


async def test_a_removed_operation_is_not_found_through_the_api(
    images, operations, blobs, db, processes, own_stack_env
):
    image = await create_ready_image(images, operations, blobs.url("/blob/8"), folder())
    op_id = ids.new_id(ids.OPERATION_PREFIX)
    await db.execute(
        "INSERT INTO operations (id, kind, image_id, folder_id, description, request, done,"
        " error_code, error_message, created_at, modified_at) VALUES ($1, 'update_image', $2,"
        " $3, 'Update image', '{}'::jsonb, true, 1, 'Operation cancelled',"
        " now() - interval '32 days', now() - interval '31 days')",
        op_id,
        image.id,
        image.folder_id,
    )
    request = operation_service_pb2.GetOperationRequest(operation_id=op_id)
    # The shared API reads the finished operation (and keeps it in memory) before it goes.
    assert (await operations.Get(request)).done
    env = own_stack_env(RETENTION_INTERVAL_SECONDS="0.2")
    await processes.start("workers", env, "worker-retention-cache")
    fresh_api = await processes.start("service", env, "api-retention-cache")

    async def removed() -> bool:
        return not await db.fetchval("SELECT 1 FROM operations WHERE id = $1", op_id)

    await eventually(removed, what="the operation to be removed")
    async with connect(fresh_api.address) as channel:
        fresh = operation_service_pb2_grpc.OperationServiceStub(channel)
        error = await rpc_error(fresh.Get(request))
        assert error.code() == grpc.StatusCode.NOT_FOUND
    # The API that served the operation before must agree.
    error = await rpc_error(operations.Get(request))
    assert error.code() == grpc.StatusCode.NOT_FOUND


def test_settings_refuse_keys_that_outlive_the_operations_they_point_to():
    with pytest.raises(pydantic.ValidationError, match="IDEMPOTENCY_TTL_SECONDS"):
        Settings(idempotency_ttl_seconds=2 * DAY, operation_retention_seconds=DAY)


def test_settings_accept_keys_kept_as_long_as_operations():
    settings = Settings(idempotency_ttl_seconds=DAY, operation_retention_seconds=DAY)
    assert settings.idempotency_ttl_seconds == settings.operation_retention_seconds


def test_settings_defaults_keep_keys_a_day_and_operations_thirty_days(monkeypatch):
    for name in ("IDEMPOTENCY_TTL_SECONDS", "OPERATION_RETENTION_SECONDS"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings()
    assert settings.idempotency_ttl_seconds == DAY
    assert settings.operation_retention_seconds == 30 * DAY


def test_settings_from_the_environment_are_checked_too(monkeypatch):
    monkeypatch.setenv("IDEMPOTENCY_TTL_SECONDS", str(10 * DAY))
    monkeypatch.setenv("OPERATION_RETENTION_SECONDS", str(DAY))
    with pytest.raises(pydantic.ValidationError):
        Settings()
