"""The phases of ``python -m bench`` on a stack of its own: the echo ceiling, Updates accepted,
Get over gRPC and over REST, Update -> done latency (at 50/s and at half the Update rate), the
sustained phase, the soak, and a large Create."""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from bench import goals, metrics_overhead, seed_and_drain, sustained
from bench.load import Job, Result
from bench.scrape import Scraper
from bench.stack import (
    ADMIN_URL,
    AMQP_URL,
    CpuSample,
    Process,
    _env,
    cpu_per_call,
    drop_database,
    migrate_and_token,
    run_phase,
    split,
    stack_sample,
)


@dataclass
class ServicePhases:
    """The phases' figures, and the RSS readings of the soak as measured (the figures hold
    them rounded)."""

    figures: dict[str, Any]
    rss_start: dict[str, float]
    rss_end: dict[str, float]


def run_service_phases(args: argparse.Namespace, run: str, logs: Path, out: Path) -> ServicePhases:
    """Start the stack (a fresh database and queue, removed after, also on failure), drive
    every phase, and stop it."""
    database = f"imgsvc_bench_{run}"
    url = ADMIN_URL.rsplit("/", 1)[0] + f"/{database}"
    queue = f"bench-{run}"
    env = _env(
        DATABASE_URL=url,
        AMQP_URL=AMQP_URL,
        AMQP_QUEUE=queue,
        GRPC_LISTEN="127.0.0.1:0",
        HTTP_LISTEN="127.0.0.1:0",  # the REST phase
        LOG_LEVEL="WARNING",
        WORKER_CONCURRENCY="64",
        RATE_LIMIT_PER_SECOND="1000000",
        RATE_LIMIT_BURST="1000000",
        MAX_UNFINISHED_OPERATIONS_PER_FOLDER="10000000",
        DB_POOL_MAX="20",
        DOWNLOAD_ALLOWED_NETWORKS="127.0.0.0/8",  # the large Create's file server
        METRICS_LISTEN="127.0.0.1:0" if args.metrics else "",
    )
    token = migrate_and_token(env)

    processes: list[Process] = []
    figures: dict[str, Any] = {}
    scraper: Scraper | None = None
    try:
        echo = Process([sys.executable, "-m", "bench.echo"], env, logs / "echo.log")
        processes.append(echo)
        echo_address = "127.0.0.1:" + echo.wait_for("echo listening").split()[-1]
        env_info = dict(env, LOG_LEVEL="INFO")
        api = Process([sys.executable, "-m", "service"], env_info, logs / "api.log")
        processes.append(api)
        api_address = "127.0.0.1:" + json.loads(api.wait_for('"api.started"'))["port"].__str__()
        http_port = json.loads(api.wait_for('"http.started"'))["port"]
        http_address = f"127.0.0.1:{http_port}"
        worker = Process([sys.executable, "-m", "workers"], env_info, logs / "worker.log")
        processes.append(worker)
        worker.wait_for('"workers.started"')
        scraped = [
            json.loads(p.wait_for('"metrics.started"'))["port"]
            for p in (api, worker)
            if args.metrics
        ]
        scraper = Scraper(scraped).start() if scraped else None

        budget = int(max(args.seconds, 1) * 6000)  # more images than Updates can take
        image_ids = asyncio.run(seed_and_drain.insert_images(url, budget * 2 + 1000))
        unfinished = asyncio.run(seed_and_drain.insert_unfinished(url, 1000))
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(args.processes, mp_context=ctx) as pool:

            def jobs(
                phase: str, address: str, seconds: float = args.seconds, **kw: Any
            ) -> list[Job]:
                return [
                    Job(phase, address, token, seconds, args.concurrency, **kw)
                    for _ in range(args.processes)
                ]

            own = {"echo": echo, "api": api, "worker": worker}

            def stack_cpu() -> CpuSample:
                """Our processes, RabbitMQ, and the PostgreSQL processes serving this
                database or the whole server (not other databases' backends)."""
                return stack_sample(own, database)

            run_phase(pool, jobs("echo", echo_address, seconds=1))  # warm-up
            cpu_before = stack_cpu()
            echo_result = run_phase(pool, jobs("echo", echo_address))
            echo_rate = echo_result.calls / echo_result.seconds
            echo_cpu = cpu_per_call(cpu_before, stack_cpu(), echo_result.calls)

            first, rest = image_ids[:budget], image_ids[budget:]
            update_jobs = [
                Job("update", api_address, token, args.seconds, args.concurrency, image_ids=part)
                for part in split(first, args.processes)
            ]
            cpu_before = stack_cpu()
            update_result = run_phase(pool, update_jobs)
            update_rate = update_result.calls / update_result.seconds

            asyncio.run(
                seed_and_drain.drain(url)
            )  # the Updates above finish before anything is timed again
            # Counted to the end of the drain: every accepted Update's whole cost, applied.
            update_cpu = cpu_per_call(cpu_before, stack_cpu(), update_result.calls)
            mix = update_result.operation_ids[:5000] + unfinished
            cpu_before = stack_cpu()
            get_result = run_phase(pool, jobs("get", api_address, operation_ids=mix))
            get_rate = get_result.calls / get_result.seconds
            get_cpu = cpu_per_call(cpu_before, stack_cpu(), get_result.calls)
            cpu_before = stack_cpu()
            rest_result = run_phase(pool, jobs("rest_get", http_address, operation_ids=mix))
            rest_rate = rest_result.calls / rest_result.seconds
            rest_cpu = cpu_per_call(cpu_before, stack_cpu(), rest_result.calls)
            metrics_ab = (
                metrics_overhead.metrics_overhead(
                    pool, args, env_info, logs, token, url, mix, processes
                )
                if args.metrics_ab
                else None
            )

            def latency_phase(rate: float) -> Result:
                """Update -> done (WaitOperation), Updates started at ``rate`` per second."""
                latency_jobs = [
                    Job(
                        "latency",
                        api_address,
                        token,
                        args.seconds,
                        0,
                        image_ids=part,
                        rate=rate / args.processes,
                    )
                    for part in split(rest[:budget], args.processes)
                ]
                latency_result = run_phase(pool, latency_jobs)
                asyncio.run(seed_and_drain.drain(url))
                return latency_result

            fixed_result = latency_phase(goals.LATENCY_RATE)  # round three's goal 4
            target = args.latency_rate or max(update_rate / 2, 1.0)
            latency_result = latency_phase(target)

            sustained_rate = args.sustained_rate * echo_rate
            sustained_images = asyncio.run(
                seed_and_drain.insert_images(
                    url, sustained.images_needed(sustained_rate, args.processes)
                )
            )
            sustained_figures = sustained.run(
                pool,
                args.processes,
                address=api_address,
                token=token,
                seconds=args.sustained_seconds,
                rate=sustained_rate,
                image_ids=sustained_images,
                follow=args.sustained_follow,
            )
            sustained_figures["fraction_of_echo"] = args.sustained_rate
            asyncio.run(seed_and_drain.drain(url))

            rss_start = {"api": api.rss_mb(), "worker": worker.rss_mb()}
            soak_jobs = [
                Job(
                    "latency",
                    api_address,
                    token,
                    args.soak,
                    0,
                    image_ids=part,
                    rate=max(update_rate / 4, 1.0) / args.processes,
                )
                for part in split(rest[budget:] or rest, args.processes)
            ]
            soak_result = run_phase(pool, soak_jobs)
            rss_end = {"api": api.rss_mb(), "worker": worker.rss_mb()}

        blob = Process([sys.executable, "-m", "bench.blob"], env, logs / "blob.log")
        processes.append(blob)
        blob_port = blob.wait_for("Running on").split(":")[-1].split()[0]
        mib = 16 if args.smoke else 1024
        large = asyncio.run(create_large(api_address, token, blob_port, mib))
        large["worker_peak_rss_mb"] = round(worker.peak_rss_mb(), 1)

        figures = {
            "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
            "settings": vars(args) | {"out": str(out)},
            "echo_per_second": round(echo_rate, 1),
            "update_accepted_per_second": round(update_rate, 1),
            "update_ratio_to_echo": round(update_rate / echo_rate, 3),
            "get_per_second": round(get_rate, 1),
            "get_ratio_to_echo": round(get_rate / echo_rate, 3),
            # Where the time goes: CPU microseconds per call, by process.
            "cpu_us_per_echo": {"echo": echo_cpu["echo"]},
            "cpu_us_per_update": {
                k: update_cpu[k] for k in ("api", "worker", "postgres", "rabbitmq")
            },
            "cpu_us_per_get": {k: get_cpu[k] for k in ("api", "postgres")},
            "rest_get_per_second": round(rest_rate, 1),
            "rest_get_ratio_to_grpc_get": round(rest_rate / get_rate, 3),
            "cpu_us_per_rest_get": {k: rest_cpu[k] for k in ("api", "postgres")},
            "latency_rate_per_second": round(target, 1),
            "latency_p50_ms": round(percentile(latency_result.latencies, 0.5) * 1000, 1),
            "latency_p99_ms": round(percentile(latency_result.latencies, 0.99) * 1000, 1),
            "latency_samples": len(latency_result.latencies),
            "latency_fixed": {
                "rate_per_second": goals.LATENCY_RATE,
                "p50_ms": round(percentile(fixed_result.latencies, 0.5) * 1000, 1),
                "p99_ms": round(percentile(fixed_result.latencies, 0.99) * 1000, 1),
                "samples": len(fixed_result.latencies),
            },
            "sustained": sustained_figures,
            "rss_mb_start": {k: round(v, 1) for k, v in rss_start.items()},
            "rss_mb_end": {k: round(v, 1) for k, v in rss_end.items()},
            "rss_growth_percent": {
                k: round((rss_end[k] / rss_start[k] - 1) * 100, 1) for k in rss_start
            },
            "large_create": large,
            "metrics": args.metrics,
            "metrics_ab": metrics_ab,
            "soak_seconds": args.soak,
            "soak_updates": len(soak_result.latencies),
            "errors": {
                "echo": echo_result.error_codes,
                "update": update_result.error_codes,
                "get": get_result.error_codes,
                "rest_get": rest_result.error_codes,
                "latency_fixed": fixed_result.error_codes,
                "latency": latency_result.error_codes,
                "soak": soak_result.error_codes,
            },
        }
    finally:
        if scraper is not None:
            scraper.stop()
        for process in reversed(processes):
            process.stop()
        asyncio.run(drop_database(database))
        subprocess.run(["rabbitmqctl", "-q", "delete_queue", queue], capture_output=True)
        subprocess.run(["rabbitmqctl", "-q", "delete_queue", f"{queue}.dead"], capture_output=True)

    return ServicePhases(figures, rss_start, rss_end)


async def create_large(address: str, token: str, port: str, mib: int) -> dict[str, Any]:
    """Create an image of ``mib`` MiB and wait for it: the worker streams it through MD5."""
    from google.longrunning import operations_pb2, operations_pb2_grpc
    from google.protobuf import duration_pb2

    from bench.blob import expected_md5
    from yandex.cloud.baremetal.v1alpha import image_pb2, image_service_pb2, image_service_pb2_grpc

    metadata = (("authorization", f"Bearer {token}"),)
    started = time.perf_counter()
    async with grpc.aio.insecure_channel(address) as channel:
        op = await image_service_pb2_grpc.ImageServiceStub(channel).Create(
            image_service_pb2.CreateImageRequest(
                folder_id="bench-large", name="large", uri=f"http://127.0.0.1:{port}/gib/{mib}"
            ),
            metadata=metadata,
        )
        lro = operations_pb2_grpc.OperationsStub(channel)
        while True:
            done = await lro.WaitOperation(
                operations_pb2.WaitOperationRequest(
                    name=op.id, timeout=duration_pb2.Duration(seconds=60)
                ),
                metadata=metadata,
            )
            if done.done:
                break
    image = image_pb2.Image()
    done.response.Unpack(image)
    return {
        "mib": mib,
        "seconds": round(time.perf_counter() - started, 1),
        "checksum_ok": image.checksum == expected_md5(mib),
    }


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
