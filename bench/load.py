"""The load generator: separate processes, each with its own event loop and channel.

Every phase (echo, Update, Get, latency) is driven by the same code with a different call;
the REST phase (``rest_get``) by the same loop over an HTTP client session instead.

The calls are shaped as the official SDKs send them: an ``x-client-request-id`` on every call
and an ``idempotency-key`` (a new UUID) on every Update, so a server that makes keyed calls
take a slower path shows it here. Two phases poll as the SDKs' waiters do, with
``OperationService.Get`` every ``poll_interval`` seconds until the operation is done:
``poll`` (a closed loop of Update-then-poll cycles, counted in cycles) and ``poll_latency``
(Updates started at ``rate`` per second, each timed from the Update to the poll that saw it
done).
"""

from __future__ import annotations

import asyncio
import collections
import random
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import grpc
from google.longrunning import operations_pb2, operations_pb2_grpc
from google.protobuf import duration_pb2

from bench.echo import METHOD
from yandex.cloud.baremetal.v1alpha import image_service_pb2, image_service_pb2_grpc
from yandex.cloud.operation import operation_service_pb2, operation_service_pb2_grpc


@dataclass
class Job:
    phase: str  # echo | update | get | latency | poll | poll_latency | rest_get
    address: str
    token: str
    seconds: float
    concurrency: int
    image_ids: list[str] = field(default_factory=list)
    operation_ids: list[str] = field(default_factory=list)
    rate: float = 0.0  # calls per second, for the open-loop latency phases
    poll_interval: float = 0.005  # seconds between polls of one operation


@dataclass
class Result:
    calls: int = 0
    errors: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    operation_ids: list[str] = field(default_factory=list)
    error_codes: dict[str, int] = field(default_factory=dict)


def run_job(job: Job) -> Result:
    """Entry point of a load process."""
    return asyncio.run(_run(job))


async def _run(job: Job) -> Result:
    if job.phase == "rest_get":
        return await _run_rest(job)
    metadata = (("authorization", f"Bearer {job.token}"),)
    result = Result()
    options = [("grpc.max_concurrent_streams", 1000)]
    async with grpc.aio.insecure_channel(job.address, options=options) as channel:
        await channel.channel_ready()
        call = _caller(job, channel, metadata, result)
        started = time.perf_counter()
        deadline = started + job.seconds
        if job.phase in ("latency", "poll_latency"):
            await _open_loop(call, job.rate, deadline)
        else:
            await asyncio.gather(*(_closed_loop(call, deadline) for _ in range(job.concurrency)))
        result.seconds = time.perf_counter() - started
    return result


async def _run_rest(job: Job) -> Result:
    """``GET /operations/{id}`` over HTTP/1.1 keep-alive connections (one per call in
    flight), as a script polling with curl's library or ``requests`` would."""
    result = Result()
    connector = aiohttp.TCPConnector(limit=job.concurrency)
    headers = {"Authorization": f"Bearer {job.token}"}
    async with aiohttp.ClientSession(
        f"http://{job.address}", connector=connector, headers=headers
    ) as session:

        async def call() -> None:
            operation_id = random.choice(job.operation_ids)
            try:
                async with session.get(f"/operations/{operation_id}") as response:
                    await response.read()
            except aiohttp.ClientError as exc:
                name = type(exc).__name__
            else:
                if response.status == 200:
                    result.calls += 1
                    return
                name = f"HTTP {response.status}"
            result.errors += 1
            result.error_codes[name] = result.error_codes.get(name, 0) + 1

        started = time.perf_counter()
        deadline = started + job.seconds
        await asyncio.gather(*(_closed_loop(call, deadline) for _ in range(job.concurrency)))
        result.seconds = time.perf_counter() - started
    return result


async def _closed_loop(call: Any, deadline: float) -> None:
    while time.perf_counter() < deadline:
        await call()


async def _open_loop(call: Any, rate: float, deadline: float) -> None:
    """Start calls at ``rate`` per second regardless of how long each takes."""
    tasks = set()
    interval = 1.0 / rate
    next_at = time.perf_counter()
    while next_at < deadline:
        now = time.perf_counter()
        if now < next_at:
            await asyncio.sleep(next_at - now)
        task = asyncio.ensure_future(call())
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        next_at += interval
    if tasks:
        await asyncio.wait(tasks)


def _caller(job: Job, channel: grpc.aio.Channel, metadata: Any, result: Result) -> Any:
    images = image_service_pb2_grpc.ImageServiceStub(channel)
    operations = operation_service_pb2_grpc.OperationServiceStub(channel)
    lro = operations_pb2_grpc.OperationsStub(channel)
    echo = channel.unary_unary(METHOD)
    payload = image_service_pb2.UpdateImageRequest(
        image_id="img" + "x" * 17, description="benchmark"
    ).SerializeToString()
    pending = collections.deque(job.image_ids)

    image_id_of: dict[str, str] = {}

    def sdk(*, mutation: bool = False) -> Any:
        """The call's metadata as the official SDKs send it."""
        extra = [("x-client-request-id", str(uuid.uuid4()))]
        if mutation:
            extra.append(("idempotency-key", str(uuid.uuid4())))
        return (*metadata, *extra)

    def failed(exc: grpc.aio.AioRpcError) -> None:
        result.errors += 1
        name = exc.code().name
        result.error_codes[name] = result.error_codes.get(name, 0) + 1

    async def call_echo() -> None:
        try:
            await echo(payload)
            result.calls += 1
        except grpc.aio.AioRpcError as exc:
            failed(exc)

    async def update() -> str | None:
        if not pending:
            return None
        image_id = pending.popleft()
        try:
            op = await images.Update(
                image_service_pb2.UpdateImageRequest(image_id=image_id, description="benchmark"),
                metadata=sdk(mutation=True),
            )
        except grpc.aio.AioRpcError as exc:
            failed(exc)
            return None
        result.calls += 1
        result.operation_ids.append(op.id)
        image_id_of[op.id] = image_id
        return str(op.id)

    async def call_update() -> None:
        if await update() is None and not pending:
            await asyncio.sleep(0.01)  # out of images for this phase

    async def call_get() -> None:
        operation_id = random.choice(job.operation_ids)
        try:
            await operations.Get(
                operation_service_pb2.GetOperationRequest(operation_id=operation_id),
                metadata=sdk(),
            )
            result.calls += 1
        except grpc.aio.AioRpcError as exc:
            failed(exc)

    async def poll_until_done(operation_id: str) -> bool:
        """Poll as the SDKs' waiters do; True once the operation is done."""
        request = operation_service_pb2.GetOperationRequest(operation_id=operation_id)
        while True:
            await asyncio.sleep(job.poll_interval)
            try:
                op = await operations.Get(request, metadata=sdk())
            except grpc.aio.AioRpcError as exc:
                failed(exc)
                return False
            if op.done:
                pending.append(image_id_of.pop(operation_id))  # READY again
                return True

    async def call_poll() -> None:
        operation_id = await update()
        if operation_id is None:
            if not pending:
                await asyncio.sleep(0.01)  # out of images for this phase
            return
        result.calls -= 1  # counted as a whole cycle below, not as an Update
        if await poll_until_done(operation_id):
            result.calls += 1

    async def call_poll_latency() -> None:
        started = time.perf_counter()
        operation_id = await update()
        if operation_id is None:
            return
        if await poll_until_done(operation_id):
            result.latencies.append(time.perf_counter() - started)

    async def call_latency() -> None:
        started = time.perf_counter()
        operation_id = await update()
        if operation_id is None:
            return
        request = operations_pb2.WaitOperationRequest(
            name=operation_id, timeout=duration_pb2.Duration(seconds=30)
        )
        try:
            op = await lro.WaitOperation(request, metadata=metadata)
        except grpc.aio.AioRpcError as exc:
            failed(exc)
            return
        if op.done:
            result.latencies.append(time.perf_counter() - started)
            # READY again: the image can take another Update (a long soak cycles through them).
            pending.append(image_id_of.pop(operation_id))

    return {
        "echo": call_echo,
        "update": call_update,
        "get": call_get,
        "latency": call_latency,
        "poll": call_poll,
        "poll_latency": call_poll_latency,
    }[job.phase]
