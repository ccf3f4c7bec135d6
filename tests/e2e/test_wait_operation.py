"""google.longrunning.Operations: GetOperation and WaitOperation over the same operations."""

from __future__ import annotations

import asyncio
import time
from urllib.parse import urlsplit, urlunsplit

import grpc
from google.longrunning import operations_pb2, operations_pb2_grpc
from google.protobuf import duration_pb2

from tests.e2e.client import folder, rpc_error, unique, wait_done
from tests.e2e.test_metrics import metrics_port, scrape
from tests.integration.conftest import own_database
from tests.support import TcpProxy, connect, create_token, eventually
from yandex.cloud.baremetal.v1alpha import image_pb2, image_service_pb2, image_service_pb2_grpc

WAITERS = 1000
# How long the API must send its database nothing while the waiters wait.
QUIET_SECONDS = 3.0


def wait_request(name: str, seconds: float) -> operations_pb2.WaitOperationRequest:
    return operations_pb2.WaitOperationRequest(
        name=name, timeout=duration_pb2.Duration(seconds=int(seconds), nanos=0)
    )


async def test_get_operation_is_the_same_operation(channel, images, operations, blobs):
    created = await images.Create(
        image_service_pb2.CreateImageRequest(
            folder_id=folder(), name=unique("img"), uri=blobs.url("/blob/8")
        )
    )
    done = await wait_done(operations, created.id)
    lro = await operations_pb2_grpc.OperationsStub(channel).GetOperation(
        operations_pb2.GetOperationRequest(name=created.id)
    )
    assert lro.name == done.id
    assert lro.done
    assert lro.metadata == done.metadata
    assert lro.response == done.response


async def test_wait_operation_returns_when_the_operation_finishes(channel, images, blobs):
    blobs.gate.clear()
    created = await images.Create(
        image_service_pb2.CreateImageRequest(
            folder_id=folder(), name=unique("img"), uri=blobs.url("/gated/1000")
        )
    )
    lro = operations_pb2_grpc.OperationsStub(channel)
    waiting = asyncio.ensure_future(lro.WaitOperation(wait_request(created.id, 30)))
    await asyncio.sleep(0)  # let the call go out; the download is held by the gate
    assert not waiting.done()
    started = time.monotonic()
    blobs.release()
    finished = await waiting
    assert finished.done
    assert finished.response.Is(image_pb2.Image.DESCRIPTOR)
    assert time.monotonic() - started < 10


async def test_wait_operation_answers_the_current_state_after_its_timeout(
    processes, own_stack_env, blobs
):
    api = await processes.start("service", own_stack_env(), "api-wait-timeout")  # no workers
    async with connect(api.address) as channel:
        images = image_service_pb2_grpc.ImageServiceStub(channel)
        created = await images.Create(
            image_service_pb2.CreateImageRequest(
                folder_id=folder(), name=unique("img"), uri=blobs.url("/blob/8")
            )
        )
        started = time.monotonic()
        lro = await operations_pb2_grpc.OperationsStub(channel).WaitOperation(
            wait_request(created.id, 1)
        )
    assert not lro.done
    assert 0.9 < time.monotonic() - started < 5


async def test_a_thousand_waiters_are_woken_by_events_not_by_polling(
    processes, own_stack_env, run_id
):
    """The API has a database of its own and no workers: what it sends that database, through
    a proxy that notes every byte, is all its own. Once the 1,000 calls have reached it, it
    must send nothing for QUIET_SECONDS, then answer every waiter when the workers come."""
    async with own_database(run_id, "waiters") as (url, db):
        path = await WatchedPath(url).start()
        try:
            token = await asyncio.to_thread(
                create_token, url, "--subject", "waiters", "--folder", "*", "--role", "editor"
            )
            env = own_stack_env(DATABASE_URL=url)
            api = await processes.start(
                "service",
                {
                    **env,
                    "DATABASE_URL": path.url,
                    # Its one loop that reads the database runs once, at start: the window
                    # below holds the waiters' statements alone.
                    "HEALTH_INTERVAL_SECONDS": "3600",
                    "METRICS_LISTEN": "127.0.0.1:0",
                },
                "api-waiters",
            )
            async with connect(api.address, token) as channel:
                results = await wait_quietly_then_finish(channel, db, api, path, processes, env)
        finally:
            # The processes end before their database does.
            await asyncio.to_thread(processes.stop_all)
            await path.close()
    assert all(r.done for r in results)
    assert len(results) == WAITERS


async def wait_quietly_then_finish(channel, db, api, path, processes, env) -> list:
    images = image_service_pb2_grpc.ImageServiceStub(channel)
    lro = operations_pb2_grpc.OperationsStub(channel)
    folder_id = folder()
    ready = [await create_ready_image_without_worker(db, folder_id) for _ in range(WAITERS // 10)]
    updates = [
        await images.Update(
            image_service_pb2.UpdateImageRequest(image_id=image_id, description="woken")
        )
        for image_id in ready
    ]
    # Ten waiters on each of a hundred unfinished operations.
    waiting = [
        asyncio.ensure_future(lro.WaitOperation(wait_request(op.id, 60)))
        for op in updates
        for _ in range(10)
    ]
    port = metrics_port(api)

    async def all_calls_arrived() -> float | None:
        started = await asyncio.to_thread(wait_operations_started, port)
        return time.monotonic() if started >= WAITERS else None

    arrived = await eventually(all_calls_arrived, timeout=60, what="the waiters' calls")

    async def quiet() -> bool:
        # Each waiter reads its operation once, on arrival: the window starts after the last
        # statement the API sent and after the last call arrived, and must last QUIET_SECONDS.
        return time.monotonic() - max(path.last_sent, arrived) >= QUIET_SECONDS

    # A design that polled for its waiters more often than every QUIET_SECONDS would never
    # leave the database alone this long: this times out instead.
    await eventually(
        quiet, timeout=60, what=f"{QUIET_SECONDS}s in which the API sends its database nothing"
    )
    assert not any(w.done() for w in waiting)
    await processes.start("workers", env, "worker-waiters")
    return list(await asyncio.wait_for(asyncio.gather(*waiting), 60))


def wait_operations_started(port: int) -> float:
    return sum(
        count
        for (name, labels), count in scrape(port).items()
        if name == "grpc_server_started_total" and ("grpc_method", "WaitOperation") in labels
    )


class WatchedPath(TcpProxy):
    """The API's way to its database: a proxy that notes when the API last sent it anything."""

    def __init__(self, database_url: str) -> None:
        parts = urlsplit(database_url)
        super().__init__(parts.hostname or "127.0.0.1", parts.port or 5432)
        self._parts = parts
        self.last_sent = time.monotonic()

    @property
    def url(self) -> str:
        """The database's URL through this proxy."""
        user = self._parts.netloc.rpartition("@")[0]
        return urlunsplit(self._parts._replace(netloc=f"{user}@127.0.0.1:{self.port}"))

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await super()._handle(_Noted(reader, self), writer)

    def noted(self) -> None:
        self.last_sent = time.monotonic()


class _Noted:
    """The reading side of the API's connection: each read notes the time."""

    def __init__(self, reader: asyncio.StreamReader, path: WatchedPath) -> None:
        self._reader = reader
        self._path = path

    async def read(self, n: int) -> bytes:
        data = await self._reader.read(n)
        if data:
            self._path.noted()
        return data


async def test_wait_on_an_unknown_operation_is_not_found(channel):
    error = await rpc_error(
        operations_pb2_grpc.OperationsStub(channel).WaitOperation(wait_request("opnnope", 1))
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND


async def create_ready_image_without_worker(db, folder_id: str) -> str:
    from service.domain.ids import IMAGE_PREFIX, new_id

    image_id = new_id(IMAGE_PREFIX)
    await db.execute(
        "INSERT INTO images (id, folder_id, name, status) VALUES ($1, $2, $3, 2)",
        image_id,
        folder_id,
        unique("img"),
    )
    return image_id
