"""The sustained phase: Updates offered at a fixed rate for a minute, each followed to done.

An open-loop generator in each load process: the i-th Update is due at ``start + i / rate``
and is sent then, whatever happened to the ones before, as long as fewer than ``in_flight``
of this process's Updates are still unfinished. When the bound is reached the Update waits
for a slot, in order, and is sent as soon as one frees; a send more than ``LATE_SECONDS``
after its due time is counted as late (whatever held it: the bound, or a load process that
fell behind). An Update still waiting when the schedule ends is not sent and is counted as
such, never left out silently.

Each Update is followed to done with ``WaitOperation`` (the default: one call per Update,
answered when the database's notification of the finished operation reaches the API), or
with ``--sustained-follow poll``: ``OperationService.Get`` every 5 ms, as the SDKs' waiters
and the polling phases do. Update -> done is timed from the Update's *due* time, so a late
send's wait is in its latency and an overloaded stack cannot hide behind a slower generator.

Every non-OK status on an Update counts as refused, by code; failures while following an
operation count separately.
"""

from __future__ import annotations

import asyncio
import collections
import math
import time
import uuid
from collections.abc import Callable, Coroutine
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.longrunning import operations_pb2, operations_pb2_grpc
from google.protobuf import duration_pb2

from bench.stack import split
from yandex.cloud.baremetal.v1alpha import image_service_pb2, image_service_pb2_grpc
from yandex.cloud.operation import operation_service_pb2, operation_service_pb2_grpc

LATE_SECONDS = 0.010  # a send this long after its due time is late
BOUND_SECONDS = 0.5  # in flight at most: this many seconds' worth of the rate (5 x the target)
FOLLOW_TIMEOUT_SECONDS = 60.0  # an operation not done by then counts as not done
POLL_SECONDS = 0.005


@dataclass
class SustainedJob:
    address: str
    token: str
    seconds: float
    rate: float  # Updates per second offered by this process
    in_flight: int  # Updates sent and not yet done, at most
    image_ids: list[str]
    follow: str = "wait"  # wait (WaitOperation) | poll (OperationService.Get every 5 ms)


@dataclass
class SustainedResult:
    scheduled: int = 0
    sent: int = 0
    late: int = 0
    not_sent: int = 0
    max_late_ms: float = 0.0
    latencies: list[float] = field(default_factory=list)  # due time -> seen done
    from_send: list[float] = field(default_factory=list)  # sent -> seen done
    refused: dict[str, int] = field(default_factory=dict)  # status code of the Update
    follow_errors: dict[str, int] = field(default_factory=dict)
    not_done: int = 0


def images_needed(rate: float, processes: int) -> int:
    """READY images the phase needs: one per Update in flight, twice over (an image whose
    operation timed out is not handed out again)."""
    return 2 * processes * (bound(rate / processes) + 1)


def bound(rate: float) -> int:
    return max(16, math.ceil(rate * BOUND_SECONDS))


def run(
    pool: ProcessPoolExecutor,
    processes: int,
    *,
    address: str,
    token: str,
    seconds: float,
    rate: float,
    image_ids: list[str],
    follow: str,
) -> dict[str, Any]:
    """Offer ``rate`` Updates per second in all (split over ``processes`` load processes);
    the phase's figures."""
    each = rate / processes
    jobs = [
        SustainedJob(address, token, seconds, each, bound(each), part, follow)
        for part in split(image_ids, processes)
    ]
    results = list(pool.map(run_job, jobs))
    return figures(results, rate, seconds, follow, sum(job.in_flight for job in jobs))


def figures(
    results: list[SustainedResult], rate: float, seconds: float, follow: str, in_flight: int
) -> dict[str, Any]:
    latencies = sorted(x for r in results for x in r.latencies)
    from_send = sorted(x for r in results for x in r.from_send)
    refused: dict[str, int] = {}
    follow_errors: dict[str, int] = {}
    for r in results:
        for code, n in r.refused.items():
            refused[code] = refused.get(code, 0) + n
        for code, n in r.follow_errors.items():
            follow_errors[code] = follow_errors.get(code, 0) + n
    sent = sum(r.sent for r in results)
    return {
        "follow": "WaitOperation" if follow == "wait" else "OperationService.Get every 5 ms",
        "seconds": seconds,
        "offered_per_second": round(rate, 1),
        "in_flight_bound": in_flight,
        "scheduled": sum(r.scheduled for r in results),
        "sent": sent,
        "sent_per_second": round(sent / seconds, 1),
        "done_per_second": round(len(latencies) / seconds, 1),
        "late": sum(r.late for r in results),
        "late_after_ms": LATE_SECONDS * 1000,
        "max_late_ms": round(max((r.max_late_ms for r in results), default=0.0), 1),
        "not_sent": sum(r.not_sent for r in results),
        "done": len(latencies),
        "not_done": sum(r.not_done for r in results),
        "refused": refused,
        "refused_total": sum(refused.values()),
        "follow_errors": follow_errors,
        "p50_ms": _ms(latencies, 0.5),
        "p99_ms": _ms(latencies, 0.99),
        "max_ms": _ms(latencies, 1.0),
        # The stack's part alone: the same, timed from the send (equal when nothing is late).
        "from_send_p50_ms": _ms(from_send, 0.5),
        "from_send_p99_ms": _ms(from_send, 0.99),
    }


def _ms(ordered: list[float], q: float) -> float:
    if not ordered:
        return float("nan")
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 1)


def run_job(job: SustainedJob) -> SustainedResult:
    """Entry point of a load process."""
    return asyncio.run(_offer(job))


async def _offer(job: SustainedJob) -> SustainedResult:
    result = SustainedResult()
    options = [("grpc.max_concurrent_streams", 1000)]
    async with grpc.aio.insecure_channel(job.address, options=options) as channel:
        await channel.channel_ready()
        follower = _Follower(channel, job, result)
        images = collections.deque(job.image_ids)
        follow = follower.update_until_done
        await offer(job.seconds, job.rate, job.in_flight, images, follow, result)
    return result


Follow = Callable[[float, str, "collections.deque[str]"], Coroutine[Any, Any, None]]


async def offer(
    seconds: float,
    rate: float,
    in_flight: int,
    images: collections.deque[str],
    follow: Follow,
    result: SustainedResult,
) -> None:
    """The open loop: ``follow(due, image_id, images)`` for each Update on schedule (it hands
    the image back when it may take another Update), at most ``in_flight`` unfinished; the
    counts go to ``result``. Returns when every Update sent is finished."""
    slots = asyncio.Semaphore(in_flight)
    tasks: set[asyncio.Task[None]] = set()
    total = max(1, int(seconds * rate))
    start = time.perf_counter() + 0.05
    end = start + seconds
    result.scheduled = total

    def finished(task: asyncio.Task[None]) -> None:
        tasks.discard(task)
        slots.release()
        if (exc := task.exception()) is not None:  # not a status: counted, not lost
            _count(result.follow_errors, type(exc).__name__)

    for i in range(total):
        due = start + i / rate
        now = time.perf_counter()
        if now < due:
            await asyncio.sleep(due - now)
        else:
            # Behind schedule (a busy machine): Updates that finished meanwhile hand their
            # slots back first, so a late load generator is not counted as a slow stack.
            await asyncio.sleep(0)
        if slots.locked():  # the bound is full: wait for a slot, until the schedule ends
            try:
                await asyncio.wait_for(slots.acquire(), timeout=max(end - time.perf_counter(), 0))
            except TimeoutError:
                result.not_sent = total - i
                break
        else:
            await slots.acquire()
        if not images:
            slots.release()
            result.not_sent = total - i
            break
        late = time.perf_counter() - due
        if late > LATE_SECONDS:
            result.late += 1
            result.max_late_ms = max(result.max_late_ms, late * 1000)
        result.sent += 1
        task = asyncio.create_task(follow(due, images.popleft(), images))
        tasks.add(task)
        task.add_done_callback(finished)
    if tasks:
        await asyncio.wait(tasks)


class _Follower:
    """One Update and the calls that follow it to done, shaped as the official SDKs send
    them (a request ID on every call, an idempotency key on the Update)."""

    def __init__(self, channel: grpc.aio.Channel, job: SustainedJob, result: SustainedResult):
        self._images = image_service_pb2_grpc.ImageServiceStub(channel)
        self._operations = operation_service_pb2_grpc.OperationServiceStub(channel)
        self._lro = operations_pb2_grpc.OperationsStub(channel)
        self._auth = ("authorization", f"Bearer {job.token}")
        self._poll = job.follow == "poll"
        self._result = result

    def _metadata(self, *, mutation: bool = False) -> Any:
        extra = [("x-client-request-id", str(uuid.uuid4()))]
        if mutation:
            extra.append(("idempotency-key", str(uuid.uuid4())))
        return (self._auth, *extra)

    async def update_until_done(
        self, due: float, image_id: str, images: collections.deque[str]
    ) -> None:
        sent = time.perf_counter()
        try:
            op = await self._images.Update(
                image_service_pb2.UpdateImageRequest(image_id=image_id, description="sustained"),
                metadata=self._metadata(mutation=True),
            )
        except grpc.aio.AioRpcError as exc:
            _count(self._result.refused, exc.code().name)
            images.append(image_id)
            return
        try:
            async with asyncio.timeout(FOLLOW_TIMEOUT_SECONDS):
                await (self._poll_until_done(op.id) if self._poll else self._wait(op.id))
        except TimeoutError:
            self._result.not_done += 1
            return
        except grpc.aio.AioRpcError as exc:
            _count(self._result.follow_errors, exc.code().name)
            return
        now = time.perf_counter()
        self._result.latencies.append(now - due)
        self._result.from_send.append(now - sent)
        images.append(image_id)  # READY again

    async def _wait(self, operation_id: str) -> None:
        request = operations_pb2.WaitOperationRequest(
            name=operation_id, timeout=duration_pb2.Duration(seconds=30)
        )
        while not (await self._lro.WaitOperation(request, metadata=self._metadata())).done:
            pass

    async def _poll_until_done(self, operation_id: str) -> None:
        request = operation_service_pb2.GetOperationRequest(operation_id=operation_id)
        while True:
            await asyncio.sleep(POLL_SECONDS)
            if (await self._operations.Get(request, metadata=self._metadata())).done:
                return


def _count(counts: dict[str, int], code: str) -> None:
    counts[code] = counts.get(code, 0) + 1
