"""PostgreSQL with a synchronous streaming standby (private servers of this module's own):
every command takes a ``DATABASE_URL`` naming both with ``target_session_attrs=read-write``
and finds the primary, whichever is listed first; and a write that reaches a read-only server
(a standby, or a primary demoted under a pooled connection: SQLSTATE 25006) is answered
``UNAVAILABLE``, retryable, never ``INTERNAL``.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator

import grpc
import pytest
from grpc_status import rpc_status

from tests.conftest import AMQP_URL
from tests.faults.cluster import PrivatePostgres, new_base_dir
from tests.faults.conftest import primary_with_standby
from tests.support import ROOT, ServiceProcess, base_env, connect, create_token, eventually
from yandex.cloud.baremetal.v1alpha import image_service_pb2, image_service_pb2_grpc

DATABASE = "images"
MIGRATIONS = len(list((ROOT / "migrations").glob("*.sql")))


@pytest.fixture(scope="module")
async def servers() -> AsyncIterator[tuple[PrivatePostgres, PrivatePostgres]]:
    async with primary_with_standby() as both_servers:
        yield both_servers


def both(primary: PrivatePostgres, standby: PrivatePostgres) -> str:
    """The standby listed first: only ``target_session_attrs`` finds the primary."""
    return (
        f"postgresql://postgres@127.0.0.1:{standby.port},127.0.0.1:{primary.port}/{DATABASE}"
        "?target_session_attrs=read-write"
    )


def service(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service", *args],
        cwd=ROOT,
        env=base_env(DATABASE_URL=url, AMQP_URL=AMQP_URL),
        capture_output=True,
        text=True,
        timeout=120,
    )


async def test_every_command_finds_the_primary_in_a_multi_host_url(servers):
    primary, standby = servers
    url = both(primary, standby)

    migrated = await asyncio.to_thread(service, url, "migrate")
    assert migrated.returncode == 0, migrated.stderr

    applied = "SELECT count(*) FROM _yoyo_migration"
    assert int(primary.psql(applied, DATABASE)) == MIGRATIONS
    # Committed on both before migrate returned: the standby is synchronous.
    assert int(standby.psql(applied, DATABASE)) == MIGRATIONS

    doctor = await asyncio.to_thread(service, url, "doctor")
    lines = doctor.stdout.splitlines()
    assert any(line.startswith("ok") and "database reachable" in line for line in lines), lines
    assert any(
        line.startswith("ok") and f"{MIGRATIONS} of {MIGRATIONS} applied" in line for line in lines
    ), lines

    token = await asyncio.to_thread(
        create_token, url, "--subject", "ha", "--folder", "*", "--role", "editor"
    )
    assert token
    stored = "SELECT count(*) FROM api_tokens WHERE subject = 'ha'"
    assert int(standby.psql(stored, DATABASE)) == 1


async def test_a_write_on_a_read_only_server_is_unavailable_not_internal(
    servers, tmp_path, queue_names
):
    """The API's pool on the standby alone (as on a primary demoted under it): reads are
    answered, a write is ``UNAVAILABLE`` with the retry advice, and nothing is written."""
    primary, standby = servers
    await asyncio.to_thread(service, both(primary, standby), "migrate")
    token = await asyncio.to_thread(
        create_token, both(primary, standby), "--subject", "ro", "--folder", "*", "--role", "editor"
    )
    image_id = "img" + uuid.uuid4().hex[:17]
    primary.psql(
        f"INSERT INTO images (id, folder_id, name, status) VALUES ('{image_id}', 'ro', 'ro', 2)",
        DATABASE,
    )
    on_standby = f"postgresql://postgres@127.0.0.1:{standby.port}/{DATABASE}"
    env = base_env(
        DATABASE_URL=on_standby,
        AMQP_URL=AMQP_URL,
        AMQP_QUEUE=queue_names(f"-ro-{uuid.uuid4().hex[:6]}"),  # deleted at the end
        GRPC_LISTEN="127.0.0.1:0",
        RETRY_MAX_SECONDS="1",
    )
    api = await ServiceProcess("service", env, tmp_path / "api.log").start().wait_started()
    try:
        async with connect(api.address, token) as channel:
            images = image_service_pb2_grpc.ImageServiceStub(channel)
            read = await images.Get(image_service_pb2.GetImageRequest(image_id=image_id))
            assert read.id == image_id

            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await images.Update(
                    image_service_pb2.UpdateImageRequest(image_id=image_id, description="x")
                )
    finally:
        api.stop()
    assert refused.value.code() is grpc.StatusCode.UNAVAILABLE, refused.value.details()
    status = rpc_status.from_call(refused.value)
    assert status is not None
    assert any(d.Is(_retry_info()) for d in status.details), status.details
    unchanged = f"SELECT status FROM images WHERE id = '{image_id}'"
    assert primary.psql(unchanged, DATABASE).strip() == "2"
    assert primary.psql("SELECT count(*) FROM operations", DATABASE).strip() == "0"


def _retry_info():  # the descriptor of google.rpc.RetryInfo, for Any.Is
    from google.rpc import error_details_pb2

    return error_details_pb2.RetryInfo.DESCRIPTOR


async def test_migrate_waits_for_a_server_that_takes_writes():
    """``migrate --wait`` keeps trying while no server of the URL answers (a cluster still
    electing its primary, say); without it, migrate fails at once."""
    later = PrivatePostgres(new_base_dir("faults-pg-later-"))
    url = later.url(DATABASE)
    try:
        at_once = await asyncio.to_thread(service, url, "migrate")
        assert at_once.returncode == 1
        assert at_once.stderr.startswith("error: cannot migrate: "), at_once.stderr

        waiting = await asyncio.to_thread(
            subprocess.Popen,
            [sys.executable, "-m", "service", "migrate", "--wait", "90"],
            cwd=ROOT,
            env=base_env(DATABASE_URL=url, AMQP_URL=AMQP_URL),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:

            def retried() -> bool:
                assert waiting.stdout is not None  # the log, one JSON object a line
                return "migrate.waiting" in waiting.stdout.readline()

            await eventually(lambda: asyncio.to_thread(retried), timeout=60, what="a retry")
            await asyncio.to_thread(later.start)
            assert await asyncio.to_thread(waiting.wait, 90) == 0
        finally:
            waiting.kill()
            waiting.communicate()
        tables = later.psql("SELECT count(*) FROM _yoyo_migration", DATABASE)
        assert int(tables) == MIGRATIONS
    finally:
        await asyncio.to_thread(later.cleanup)
