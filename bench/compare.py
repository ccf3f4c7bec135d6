"""This service against a conventional Celery build of the same API, by the same client.

Both stacks start fresh (a new database with the same number of READY images in one folder,
a new queue) and go through the same phases, one stack after the other, driven by one load
process with the official SDK's call shape (``bench.load``: a request ID on every call, an
idempotency key on every Update):

1. ``update@8``, ``update@32``, ``update@128``: Updates accepted per second with that many
   calls in flight, each step drained before the next; the CPU of the whole stack (its own
   processes, PostgreSQL and RabbitMQ) per Update, counted until every one is applied;
2. ``get``: ``OperationService.Get`` per second, 32 in flight, over the finished operations;
3. ``poll``: 32 clients, each an Update then a poll of ``OperationService.Get`` every 5 ms
   until done, again and again: cycles per second;
4. ``latency``: Updates at a fixed rate (50/s), each polled every 5 ms until done: p50 and
   p99 of Update -> done.

The conventional build is ``bench.baseline`` (grpc.aio + SQLAlchemy for the API, a Celery
prefork worker with ``acks_late`` applying the change through SQLAlchemy).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Protocol

import asyncpg

from bench.load import Job, Result, run_job
from bench.stack import (
    ADMIN_URL,
    Process,
    cpu_between,
    cpu_seconds,
    drop_database,
    migrate_and_token,
    service_env,
    stack_sample,
)

SWEEP = (8, 32, 128)
FOLDER = "bench-compare"


class Stack(Protocol):
    """What the phases need of a running stack."""

    address: str
    token: str
    database: str

    def pids(self) -> list[int]: ...
    def drain(self, timeout: float = 300) -> None: ...
    def stop(self) -> None: ...


def whole_stack_cpu(stack: Stack) -> dict[tuple[str, int], float]:
    """CPU seconds so far of the stack's own processes, of RabbitMQ, and of the PostgreSQL
    processes serving its database or the whole server."""
    sample = stack_sample({}, stack.database)
    sample |= {("own", pid): cpu_seconds(pid) for pid in stack.pids()}
    return sample


class ServiceStack:
    """This service: a migrated fresh database, the API and one worker process."""

    def __init__(self, logs: Path, images: int, folders: int = 1) -> None:
        run = uuid.uuid4().hex[:8]
        self.database = f"imgsvc_compare_{run}"
        self._url = ADMIN_URL.rsplit("/", 1)[0] + f"/{self.database}"
        self._queue = f"bench-compare-{run}"
        env = service_env(self._url, self._queue)
        self.token = migrate_and_token(env)
        self.image_ids = asyncio.run(_insert_images(self._url, images, folders))
        self._api = Process([sys.executable, "-m", "service"], env, logs / "compare-api.log")
        self._worker = Process([sys.executable, "-m", "workers"], env, logs / "compare-worker.log")
        port = json.loads(self._api.wait_for('"api.started"'))["port"]
        self.address = f"127.0.0.1:{port}"
        self._worker.wait_for('"workers.started"')

    def pids(self) -> list[int]:
        return [self._api.proc.pid, self._worker.proc.pid]

    def drain(self, timeout: float = 300) -> None:
        asyncio.run(_wait_all_done(self._url, timeout))

    def stop(self) -> None:
        self._worker.stop()
        self._api.stop()
        asyncio.run(drop_database(self.database))
        for queue in (self._queue, f"{self._queue}.dead"):
            subprocess.run(["rabbitmqctl", "-q", "delete_queue", queue], capture_output=True)


async def _insert_images(url: str, count: int, folders: int = 1) -> list[str]:
    """READY images, in one folder (as one busy client's) or spread over ``folders``."""
    from service.domain.ids import IMAGE_PREFIX, new_id

    ids = [new_id(IMAGE_PREFIX) for _ in range(count)]
    conn = await asyncpg.connect(url)
    try:
        await conn.copy_records_to_table(
            "images",
            records=[
                (i, FOLDER if folders == 1 else f"{FOLDER}-{n % folders}", f"c-{i}", 2)
                for n, i in enumerate(ids)
            ],
            columns=["id", "folder_id", "name", "status"],
        )
        await conn.execute("ANALYZE images")
    finally:
        await conn.close()
    return ids


async def _wait_all_done(url: str, timeout: float) -> None:
    conn = await asyncpg.connect(url)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not await conn.fetchval("SELECT count(*) FROM operations WHERE NOT done"):
                return
            await asyncio.sleep(0.1)
        raise SystemExit(f"the workers did not finish the backlog in {timeout}s")
    finally:
        await conn.close()


def _run(pool: ProcessPoolExecutor, job: Job) -> Result:
    return pool.submit(run_job, job).result()


def measure(
    pool: ProcessPoolExecutor,
    stack: Stack,
    image_ids: list[str],
    seconds: float,
    latency_rate: float,
) -> dict[str, Any]:
    """Every phase against one running stack; the figures as a dict."""
    figures: dict[str, Any] = {}

    def job(phase: str, concurrency: int, **kw: Any) -> Job:
        return Job(phase, stack.address, stack.token, seconds, concurrency, **kw)

    _run(pool, Job("update", stack.address, stack.token, 1, 8, image_ids=image_ids[:200]))
    stack.drain()  # warm: connections, plans, caches
    finished: list[str] = []
    for concurrency in SWEEP:
        before = whole_stack_cpu(stack)
        result = _run(pool, job("update", concurrency, image_ids=image_ids))
        stack.drain()
        used = cpu_between(before, whole_stack_cpu(stack))
        cpu = {k: round(v / max(result.calls, 1) * 1e6) for k, v in sorted(used.items())}
        figures[f"update@{concurrency}"] = {
            "per_second": round(result.calls / result.seconds, 1),
            "errors": result.error_codes,
            "cpu_us_per_update": cpu,
            "cpu_total_us": sum(cpu.values()),
        }
        finished += result.operation_ids
    result = _run(pool, job("get", 32, operation_ids=finished[-5000:]))
    figures["get"] = {
        "per_second": round(result.calls / result.seconds, 1),
        "errors": result.error_codes,
    }
    result = _run(pool, job("poll", 32, image_ids=image_ids))
    figures["poll"] = {
        "cycles_per_second": round(result.calls / result.seconds, 1),
        "errors": result.error_codes,
    }
    stack.drain()
    result = _run(pool, job("poll_latency", 0, image_ids=image_ids, rate=latency_rate))
    stack.drain()
    latencies = sorted(result.latencies)
    figures["latency"] = {
        "rate": latency_rate,
        "samples": len(latencies),
        "p50_ms": round(_percentile(latencies, 0.5) * 1000, 1),
        "p99_ms": round(_percentile(latencies, 0.99) * 1000, 1),
        "errors": result.error_codes,
    }
    return figures


def _percentile(ordered: list[float], q: float) -> float:
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def compare(
    pool: ProcessPoolExecutor,
    logs: Path,
    *,
    seconds: float,
    images: int,
    latency_rate: float = 50.0,
) -> dict[str, Any]:
    """Both stacks through the same phases, this service first; the figures and the ratios."""
    from bench.baseline.stack import BaselineStack

    results: dict[str, Any] = {}
    ours = ServiceStack(logs, images)
    try:
        results["service"] = measure(pool, ours, ours.image_ids, seconds, latency_rate)
    finally:
        ours.stop()
    baseline = BaselineStack(logs)
    try:
        baseline_ids = baseline.start(images)
        results["baseline"] = measure(pool, baseline, baseline_ids, seconds, latency_rate)
    finally:
        baseline.stop()
    results["ratios"] = ratios(results["service"], results["baseline"])
    return results


def ratios(ours: dict[str, Any], theirs: dict[str, Any]) -> dict[str, float]:
    """This service over the baseline: above 1 is better, for every figure (for the latency,
    the baseline's p99 over ours)."""
    out = {
        f"update@{c}": ours[f"update@{c}"]["per_second"] / theirs[f"update@{c}"]["per_second"]
        for c in SWEEP
    }
    out["cpu_per_update@32"] = (
        theirs["update@32"]["cpu_total_us"] / ours["update@32"]["cpu_total_us"]
    )
    out["get"] = ours["get"]["per_second"] / theirs["get"]["per_second"]
    out["poll"] = ours["poll"]["cycles_per_second"] / theirs["poll"]["cycles_per_second"]
    out["latency_p50"] = theirs["latency"]["p50_ms"] / ours["latency"]["p50_ms"]
    out["latency_p99"] = theirs["latency"]["p99_ms"] / ours["latency"]["p99_ms"]
    return {k: round(v, 2) for k, v in out.items()}


TARGETS = {
    "update@8": 2.0,
    "update@32": 2.0,
    "update@128": 2.0,
    "get": 3.0,
    "poll": 2.0,
    "latency_p99": 2.0,
}


def table(results: dict[str, Any], judged: bool = True) -> str:
    """The comparison as printed by ``python -m bench`` (a smoke run's verdicts not judged)."""
    ours, theirs, ratio = results["service"], results["baseline"], results["ratios"]

    def _verdict(value: float, target: float) -> str:
        if not judged:
            return f"≥{target:g}: not judged"
        return f"≥{target:g}: " + ("met" if value >= target else f"missed ({value / target:.2f})")

    rows = [("figure (same client, same run)", "this service", "Celery build", "ratio", "target")]
    for c in SWEEP:
        key = f"update@{c}"
        rows.append(
            (
                f"Updates accepted/s, {c} in flight",
                f"{ours[key]['per_second']:.0f}",
                f"{theirs[key]['per_second']:.0f}",
                f"{ratio[key]:.2f}",
                _verdict(ratio[key], TARGETS[key]),
            )
        )
    rows.append(
        (
            "whole-stack CPU µs per Update, 32 in flight",
            str(ours["update@32"]["cpu_total_us"]),
            str(theirs["update@32"]["cpu_total_us"]),
            f"{ratio['cpu_per_update@32']:.2f}",
            "",
        )
    )
    rows.append(
        (
            "OperationService.Get/s, 32 in flight",
            f"{ours['get']['per_second']:.0f}",
            f"{theirs['get']['per_second']:.0f}",
            f"{ratio['get']:.2f}",
            _verdict(ratio["get"], TARGETS["get"]),
        )
    )
    rows.append(
        (
            "polling pipeline, cycles/s (32 clients, 5 ms)",
            f"{ours['poll']['cycles_per_second']:.0f}",
            f"{theirs['poll']['cycles_per_second']:.0f}",
            f"{ratio['poll']:.2f}",
            _verdict(ratio["poll"], TARGETS["poll"]),
        )
    )
    rate = ours["latency"]["rate"]
    for q in ("p50", "p99"):
        rows.append(
            (
                f"Update->done {q} at {rate:.0f}/s (polled), ms",
                f"{ours['latency'][f'{q}_ms']}",
                f"{theirs['latency'][f'{q}_ms']}",
                f"{ratio[f'latency_{q}']:.2f}",
                _verdict(ratio["latency_p99"], TARGETS["latency_p99"]) if q == "p99" else "",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    return "\n".join(
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    )


def main() -> int:
    import argparse
    import multiprocessing

    parser = argparse.ArgumentParser(
        prog="python -m bench.compare", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--seconds", type=float, default=10, help="length of each phase")
    parser.add_argument("--images", type=int, default=12000, help="READY images in each stack")
    parser.add_argument("--latency-rate", type=float, default=50, help="Updates/s, latency phase")
    parser.add_argument("--only", choices=("service", "baseline"), help="measure one stack")
    parser.add_argument("--smoke", action="store_true", help="second-long phases")
    parser.add_argument("--out", type=Path, default=None, help="JSON output file")
    args = parser.parse_args()
    if args.smoke:
        args.seconds, args.images = 1, 1500
    logs = Path(os.environ.get("BENCH_LOGS", f"/tmp/bench-compare-{uuid.uuid4().hex[:8]}"))
    logs.mkdir(parents=True, exist_ok=True)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=context) as pool:
        if args.only:
            stack: Stack
            if args.only == "service":
                stack = ServiceStack(logs, args.images)
                ids = stack.image_ids
            else:
                from bench.baseline.stack import BaselineStack

                stack = BaselineStack(logs)
                ids = stack.start(args.images)
            try:
                results = {args.only: measure(pool, stack, ids, args.seconds, args.latency_rate)}
            finally:
                stack.stop()
            print(json.dumps(results, indent=2))
        else:
            results = compare(
                pool, logs, seconds=args.seconds, images=args.images,
                latency_rate=args.latency_rate,
            )  # fmt: skip
            print(table(results, judged=not args.smoke))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
