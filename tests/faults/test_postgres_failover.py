"""The primary fails, its synchronous standby is promoted, and the service follows by itself:
the API and a worker on a ``DATABASE_URL`` naming both (``target_session_attrs=read-write``),
under Updates sent as the SDK sends them (an idempotency key each, retried on ``UNAVAILABLE``
and ``DEADLINE_EXCEEDED`` with the same key). Every acknowledged Update is applied exactly
once on the new primary, no call is answered ``INTERNAL`` or ``UNKNOWN``, and Updates are
accepted again within ``ACCEPTED_AGAIN_WITHIN`` seconds of the fault.

The faults: the primary SIGKILLed (a dead host), and frozen with SIGSTOP (a hung host: its
sockets stay open and silent). Each test has servers of its own.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import pytest
from google.longrunning import operations_pb2, operations_pb2_grpc
from google.protobuf import duration_pb2

from tests.conftest import AMQP_URL
from tests.e2e.test_metrics import metrics_port
from tests.e2e.test_wait_operation import wait_operations_started
from tests.faults.cluster import PrivatePostgres
from tests.faults.conftest import primary_with_standby
from tests.faults.test_postgres_standby import DATABASE, both, service
from tests.support import ServiceProcess, base_env, connect, create_token, eventually
from yandex.cloud.baremetal.v1alpha import image_service_pb2, image_service_pb2_grpc
from yandex.cloud.operation import operation_service_pb2, operation_service_pb2_grpc

ACCEPTED_AGAIN_WITHIN = 15.0
IMAGES = 40
CALL_DEADLINE = 2.0
WAIT_SECONDS = 45  # a waiter not woken by the new primary's notification answers not done
RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


@pytest.fixture
async def servers() -> AsyncIterator[tuple[PrivatePostgres, PrivatePostgres]]:
    async with primary_with_standby() as both_servers:
        yield both_servers


class Client:
    """Updates with a key each, retried with the same key until answered (or ``give_up``)."""

    def __init__(self, images: image_service_pb2_grpc.ImageServiceStub) -> None:
        self.images = images
        self.accepted: dict[str, tuple[str, float]] = {}  # image -> (operation, when)
        self.codes: dict[str, int] = {}

    async def update(self, image_id: str, give_up: float) -> None:
        key = str(uuid.uuid4())
        request = image_service_pb2.UpdateImageRequest(image_id=image_id, description=key)
        while time.monotonic() < give_up:
            try:
                op = await self.images.Update(
                    request, metadata=(("idempotency-key", key),), timeout=CALL_DEADLINE
                )
            except grpc.aio.AioRpcError as exc:
                self.codes[exc.code().name] = self.codes.get(exc.code().name, 0) + 1
                if exc.code() not in RETRYABLE:
                    return
                await asyncio.sleep(0.2)
                continue
            self.accepted[image_id] = (op.id, time.monotonic())
            return


async def fail_over(
    tmp_path: Path,
    servers: tuple[PrivatePostgres, PrivatePostgres],
    fault: Callable[[PrivatePostgres], None],
    queue_names: Callable[[str], str],
) -> None:
    primary, standby = servers
    url = both(standby, primary)  # the primary listed first, as an operator would
    assert (await asyncio.to_thread(service, url, "migrate")).returncode == 0
    token = await asyncio.to_thread(
        create_token, url, "--subject", "ha", "--folder", "*", "--role", "editor"
    )
    image_ids = ["img" + uuid.uuid4().hex[:17] for _ in range(IMAGES)]
    values = ", ".join(f"('{i}', 'ha', '{i}', 2)" for i in image_ids)
    primary.psql(f"INSERT INTO images (id, folder_id, name, status) VALUES {values}", DATABASE)
    env = base_env(
        DATABASE_URL=url,
        AMQP_URL=AMQP_URL,
        AMQP_QUEUE=queue_names(f"-failover-{uuid.uuid4().hex[:6]}"),  # deleted at the end
        GRPC_LISTEN="127.0.0.1:0",
        METRICS_LISTEN="127.0.0.1:0",
        DB_COMMAND_TIMEOUT_SECONDS="5",
        OUTBOX_INTERVAL_SECONDS="0.5",
        SWEEP_INTERVAL_SECONDS="1",
    )
    api = await ServiceProcess("service", env, tmp_path / "api.log").start().wait_started()
    worker = ServiceProcess("workers", env, tmp_path / "worker.log")
    try:
        async with connect(api.address, token) as channel:
            client = Client(image_service_pb2_grpc.ImageServiceStub(channel))
            operations = operation_service_pb2_grpc.OperationServiceStub(channel)
            lro = operations_pb2_grpc.OperationsStub(channel)
            before = image_ids[: IMAGES // 4]
            await asyncio.gather(*(client.update(i, time.monotonic() + 30) for i in before))
            assert len(client.accepted) == len(before), client.codes
            # Waiters on the Updates accepted before the fault, which no worker has applied
            # yet: they are finished on the new primary, whose notification must reach them.
            waiting = [
                asyncio.ensure_future(
                    lro.WaitOperation(
                        operations_pb2.WaitOperationRequest(
                            name=client.accepted[i][0],
                            timeout=duration_pb2.Duration(seconds=WAIT_SECONDS),
                        )
                    )
                )
                for i in before
            ]
            port = metrics_port(api)

            async def registered() -> bool:
                # Each waiter has read its operation (before the fault) once its call started.
                started = await asyncio.to_thread(wait_operations_started, port)
                return started >= len(waiting)

            await eventually(registered, timeout=30, what="the waiters' calls")

            faulted = time.monotonic()
            await asyncio.to_thread(fault, primary)
            await asyncio.to_thread(standby.promote)
            await worker.start().wait_started()
            after = image_ids[IMAGES // 4 :]
            await asyncio.gather(*(client.update(i, faulted + 60) for i in after))

            again = [when for _, when in client.accepted.values() if when > faulted]
            assert again, f"no Update accepted after the fault: {client.codes}"
            first_again = min(again)
            print(f"\nUpdates accepted again {first_again - faulted:.1f} s after the fault")
            assert first_again - faulted <= ACCEPTED_AGAIN_WITHIN
            assert "INTERNAL" not in client.codes, client.codes
            assert "UNKNOWN" not in client.codes, client.codes

            # Before anything else reads them: only the new primary's notification wakes them.
            woken = await asyncio.wait_for(asyncio.gather(*waiting), WAIT_SECONDS + 10)
            woken_after = time.monotonic() - faulted
            print(f"waiters across the failover answered {woken_after:.1f} s after the fault")
            assert all(op.done for op in woken)
            # Woken by the notification, not answered at their timeout with what a read found.
            assert woken_after < WAIT_SECONDS / 2, "the waiters were not woken"

            async def all_done() -> bool:
                for operation_id, _ in client.accepted.values():
                    try:
                        op = await operations.Get(
                            operation_service_pb2.GetOperationRequest(operation_id=operation_id),
                            timeout=CALL_DEADLINE,
                        )
                    except grpc.aio.AioRpcError as exc:
                        if exc.code() in RETRYABLE:
                            return False
                        raise
                    if not op.done:
                        return False
                return True

            await eventually(all_done, timeout=90, interval=0.5, what="every Update done")
    finally:
        worker.stop()
        api.stop()
    # Applied exactly once each, on the new primary: one revision per acknowledged Update.
    revisions = standby.psql(
        "SELECT id, revision, description FROM images WHERE folder_id = 'ha'", DATABASE
    )
    applied = {line.split("|")[0]: line.split("|")[1:] for line in revisions.splitlines()}
    for image_id in client.accepted:
        assert applied[image_id][0] == "1", (image_id, applied[image_id])
    assert len(client.accepted) == IMAGES, client.codes


async def test_a_killed_primary(tmp_path, servers, queue_names):
    await fail_over(tmp_path, servers, PrivatePostgres.kill, queue_names)


async def test_a_frozen_primary(tmp_path, servers, queue_names):
    await fail_over(tmp_path, servers, PrivatePostgres.freeze, queue_names)
