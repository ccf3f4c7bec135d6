"""``python -m bench``: measure the service against a bare gRPC echo server, in one run.

It starts its own stack (a fresh database and queue on the local PostgreSQL and RabbitMQ, the
API and one worker process, and a bare grpc.aio echo server), then drives each phase with the
same load generator (separate processes):

1. echo: unary echo calls per second, the ceiling for Python gRPC here;
2. update: Updates accepted per second (each durably recorded and enqueued; workers running);
3. get: OperationService.Get per second over a mix of finished and unfinished operations;
4. latency: Update -> done as a client sees it (WaitOperation), at half the Update rate;
5. soak: a steady mixed load, with the RSS of the API and the worker at its start and end.

Then, unless skipped: the same API against a conventional Celery build, by the same
SDK-shaped client (``bench.compare``: Updates at 8, 32 and 128 in flight, Get, the polling
pipeline, Update -> done at a fixed rate), and the cost of an Update as the state grows
(``bench.scale``: 100 and 100,000 images, 10,000 queued, 1,000,000 finished).

After the Get phase, a REST phase: ``GET /operations/{id}`` over HTTP (``HTTP_LISTEN``) over
the same operations, beside the gRPC Get figure.

``--metrics`` runs it all with the API and the worker serving Prometheus metrics
(``METRICS_LISTEN``), scraped every second. ``--metrics-ab N`` adds N rounds that compare two
more API processes, one with metrics on (scraped every second) and one without, by the Get and
Update rates and the API's CPU per call, alternating which goes first.

It prints a table with each figure and its ratio to the echo ceiling, and writes JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import asyncpg
import grpc

from bench import compare, scale, scale_report
from bench.load import Job
from bench.scrape import Scraper
from bench.stack import (
    ADMIN_URL,
    AMQP_URL,
    ROOT,
    Process,
    _env,
    cpu_per_call,
    cpu_seconds,
    drop_database,
    migrate_and_token,
    run_phase,
    split,
    stack_cpu,
)
from service.domain.ids import IMAGE_PREFIX, OPERATION_PREFIX, new_id


async def insert_images(url: str, count: int) -> list[str]:
    ids = [new_id(IMAGE_PREFIX) for _ in range(count)]
    conn = await asyncpg.connect(url)
    try:
        await conn.copy_records_to_table(
            "images",
            records=[(i, "bench", f"b-{i}", 2) for i in ids],
            columns=["id", "folder_id", "name", "status"],
        )
    finally:
        await conn.close()
    return ids


async def insert_unfinished(url: str, count: int) -> list[str]:
    ids = [new_id(OPERATION_PREFIX) for _ in range(count)]
    conn = await asyncpg.connect(url)
    try:
        # Published and never claimed: they stay unfinished for the whole run.
        await conn.executemany(
            "INSERT INTO operations (id, kind, image_id, folder_id, description, request,"
            " published_at) VALUES ($1, 'update_image', 'imgnone', 'bench', 'Update image',"
            " '{}', now())",
            [(i,) for i in ids],
        )
    finally:
        await conn.close()
    return ids


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


async def drain(url: str, timeout: float = 300) -> None:
    """Wait until the workers have finished every Update (the synthetic ones excepted)."""
    conn = await asyncpg.connect(url)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            left = await conn.fetchval(
                "SELECT count(*) FROM operations WHERE NOT done AND image_id <> 'imgnone'"
            )
            if left == 0:
                return
            await asyncio.sleep(0.2)
        raise SystemExit(f"the workers did not finish the backlog in {timeout}s")
    finally:
        await conn.close()


def metrics_overhead(
    pool: ProcessPoolExecutor,
    args: argparse.Namespace,
    env: dict[str, str],
    logs: Path,
    token: str,
    url: str,
    operation_ids: list[str],
    processes: list[Process],
) -> dict[str, Any]:
    """What serving metrics costs: two more API processes over the same stack, one with
    ``METRICS_LISTEN`` set (and scraped every second), one without; in each round a Get phase
    and an Update phase against each, in alternating order, so drift of the machine falls on
    both alike. Medians of the rates, and of the API's CPU per call."""
    apis: dict[str, tuple[Process, str]] = {}
    on = "" if args.metrics_ab_control else "127.0.0.1:0"
    for name, listen in (("off", ""), ("on", on)):
        process = Process(
            [sys.executable, "-m", "service"],
            dict(env, METRICS_LISTEN=listen),
            logs / f"api-metrics-{name}.log",
        )
        processes.append(process)
        port = json.loads(process.wait_for('"api.started"'))["port"]
        apis[name] = (process, f"127.0.0.1:{port}")
    scraped = (
        []
        if args.metrics_ab_control
        else [json.loads(apis["on"][0].wait_for('"metrics.started"'))["port"]]
    )
    for _, address in apis.values():  # fills each one's cache of finished operations
        run_phase(
            pool,
            [
                Job(
                    "get",
                    address,
                    token,
                    args.seconds,
                    args.concurrency,
                    operation_ids=operation_ids,
                )
                for _ in range(args.processes)
            ],
        )
    per_phase = int(max(args.seconds, 1) * 2000)  # more images than one phase's Updates
    images = asyncio.run(insert_images(url, per_phase * 2 * args.metrics_ab))
    rates: dict[tuple[str, str], list[float]] = {}
    cpu: dict[tuple[str, str], list[float]] = {}
    with Scraper(scraped):
        for round_number in range(args.metrics_ab):
            for name in ("off", "on") if round_number % 2 == 0 else ("on", "off"):
                process, address = apis[name]
                part, images = images[:per_phase], images[per_phase:]
                for phase, jobs in (
                    (
                        "get",
                        [
                            Job("get", address, token, args.seconds, args.concurrency,
                                operation_ids=operation_ids)
                            for _ in range(args.processes)
                        ],
                    ),
                    (
                        "update",
                        [
                            Job("update", address, token, args.seconds, args.concurrency,
                                image_ids=ids)
                            for ids in split(part, args.processes)
                        ],
                    ),
                ):  # fmt: skip
                    before = cpu_seconds(process.proc.pid)
                    result = run_phase(pool, jobs)
                    used = cpu_seconds(process.proc.pid) - before
                    rates.setdefault((phase, name), []).append(result.calls / result.seconds)
                    cpu.setdefault((phase, name), []).append(used / max(result.calls, 1) * 1e6)
                asyncio.run(drain(url))
    summary: dict[str, Any] = {"rounds": args.metrics_ab, "control": args.metrics_ab_control}
    for phase in ("get", "update"):
        off, on = (statistics.median(rates[(phase, name)]) for name in ("off", "on"))
        summary[phase] = {
            "off": round(off, 1),
            "on": round(on, 1),
            # Each round's on/off ratio, averaged geometrically: whichever API goes second in a
            # round runs on a machine the first one left warmer (or busier); with the order
            # alternating, that factor cancels out of this mean, not out of the medians.
            "change_percent": _paired_change(rates, phase),
            "api_cpu_change_percent": _paired_change(cpu, phase),
            "api_cpu_us_off": round(statistics.median(cpu[(phase, "off")])),
            "api_cpu_us_on": round(statistics.median(cpu[(phase, "on")])),
            "rates_off": [round(r) for r in rates[(phase, "off")]],
            "rates_on": [round(r) for r in rates[(phase, "on")]],
            "api_cpu_us_per_round_off": [round(c) for c in cpu[(phase, "off")]],
            "api_cpu_us_per_round_on": [round(c) for c in cpu[(phase, "on")]],
        }
    return summary


def _paired_change(values: dict[tuple[str, str], list[float]], phase: str) -> float:
    """The geometric mean of the rounds' on/off ratios, as a change in percent."""
    ratios = [
        on / off for off, on in zip(values[(phase, "off")], values[(phase, "on")], strict=True)
    ]
    return round((statistics.geometric_mean(ratios) - 1) * 100, 1)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10, help="length of each rate phase")
    parser.add_argument("--soak", type=float, default=300, help="length of the soak (RSS) phase")
    parser.add_argument("--processes", type=int, default=2, help="load generator processes")
    parser.add_argument("--concurrency", type=int, default=64, help="calls in flight per process")
    parser.add_argument(
        "--latency-rate",
        type=float,
        default=None,
        help="Updates per second of the latency phase (default: half the Update rate measured)",
    )
    parser.add_argument(
        "--metrics",
        action="store_true",
        help="the API and the worker serve Prometheus metrics (scraped every second)",
    )
    parser.add_argument(
        "--metrics-ab",
        type=int,
        default=0,
        metavar="ROUNDS",
        help="rounds of Get and Update against an API with metrics on and one with them off",
    )
    parser.add_argument(
        "--metrics-ab-control",
        action="store_true",
        help="the same rounds with metrics off in both APIs: the noise floor of the comparison",
    )
    parser.add_argument(
        "--no-compare",
        action="store_true",
        help="skip the comparison with the conventional Celery build (bench.compare)",
    )
    parser.add_argument(
        "--no-scale", action="store_true", help="skip the scale phases (bench.scale)"
    )
    parser.add_argument("--smoke", action="store_true", help="seconds-long phases, no verdicts")
    parser.add_argument("--out", type=Path, default=None, help="JSON output file")
    args = parser.parse_args()
    if args.smoke:
        args.seconds, args.soak = 2, 3

    run = uuid.uuid4().hex[:8]
    database = f"imgsvc_bench_{run}"
    url = ADMIN_URL.rsplit("/", 1)[0] + f"/{database}"
    queue = f"bench-{run}"
    logs = Path(os.environ.get("BENCH_LOGS", f"/tmp/bench-{run}"))
    logs.mkdir(parents=True, exist_ok=True)
    out = args.out or ROOT / "bench" / "results" / f"{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
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
        image_ids = asyncio.run(insert_images(url, budget * 2 + 1000))
        unfinished = asyncio.run(insert_unfinished(url, 1000))
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
            run_phase(pool, jobs("echo", echo_address, seconds=1))  # warm-up
            cpu_before = stack_cpu(own)
            echo_result = run_phase(pool, jobs("echo", echo_address))
            echo_rate = echo_result.calls / echo_result.seconds
            echo_cpu = cpu_per_call(cpu_before, stack_cpu(own), echo_result.calls)

            first, rest = image_ids[:budget], image_ids[budget:]
            update_jobs = [
                Job("update", api_address, token, args.seconds, args.concurrency, image_ids=part)
                for part in split(first, args.processes)
            ]
            cpu_before = stack_cpu(own)
            update_result = run_phase(pool, update_jobs)
            update_rate = update_result.calls / update_result.seconds

            asyncio.run(drain(url))  # the Updates above finish before anything is timed again
            # Counted to the end of the drain: every accepted Update's whole cost, applied.
            update_cpu = cpu_per_call(cpu_before, stack_cpu(own), update_result.calls)
            mix = update_result.operation_ids[:5000] + unfinished
            cpu_before = stack_cpu(own)
            get_result = run_phase(pool, jobs("get", api_address, operation_ids=mix))
            get_rate = get_result.calls / get_result.seconds
            get_cpu = cpu_per_call(cpu_before, stack_cpu(own), get_result.calls)
            cpu_before = stack_cpu(own)
            rest_result = run_phase(pool, jobs("rest_get", http_address, operation_ids=mix))
            rest_rate = rest_result.calls / rest_result.seconds
            rest_cpu = cpu_per_call(cpu_before, stack_cpu(own), rest_result.calls)
            metrics_ab = (
                metrics_overhead(pool, args, env_info, logs, token, url, mix, processes)
                if args.metrics_ab
                else None
            )

            target = args.latency_rate or max(update_rate / 2, 1.0)
            latency_jobs = [
                Job(
                    "latency",
                    api_address,
                    token,
                    args.seconds,
                    0,
                    image_ids=part,
                    rate=target / args.processes,
                )
                for part in split(rest[:budget], args.processes)
            ]
            latency_result = run_phase(pool, latency_jobs)
            asyncio.run(drain(url))

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

    if not args.no_compare:
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            figures["compare"] = compare.compare(
                pool,
                logs,
                seconds=1 if args.smoke else args.seconds,
                images=1500 if args.smoke else 12000,
            )
    if not args.no_scale:
        figures["scale"] = scale.run(args.smoke, logs=logs)
    echo_cpu = figures["cpu_us_per_echo"]["echo"]
    update_cpu = sum(figures["cpu_us_per_update"].values())
    figures["update_cpu_ratio_to_echo"] = round(update_cpu / max(echo_cpu, 1), 2)
    out.write_text(json.dumps(figures, indent=2))
    rows = [
        ("echo (bare grpc.aio unary)", f"{figures['echo_per_second']:.0f}/s", "1.00"),
        (
            "Update accepted",
            f"{figures['update_accepted_per_second']:.0f}/s",
            f"{figures['update_ratio_to_echo']:.2f}",
        ),
        (
            "OperationService.Get",
            f"{figures['get_per_second']:.0f}/s",
            f"{figures['get_ratio_to_echo']:.2f}"
            + _verdict(figures["get_ratio_to_echo"] >= 0.85, "≥ 0.85"),
        ),
        (
            "whole-stack CPU per Update (API+worker+PG+RMQ)",
            f"{update_cpu} µs",
            f"{figures['update_cpu_ratio_to_echo']:.2f} x echo's CPU per call"
            + _verdict(figures["update_cpu_ratio_to_echo"] <= 4, "≤ 4"),
        ),
        (
            "REST GET /operations/{id}",
            f"{figures['rest_get_per_second']:.0f}/s",
            f"{figures['rest_get_per_second'] / figures['echo_per_second']:.2f}"
            f" ({figures['rest_get_ratio_to_grpc_get']:.2f} of gRPC Get)",
        ),
        (
            f"Update->done p50 @ {figures['latency_rate_per_second']:.0f}/s",
            f"{figures['latency_p50_ms']} ms",
            "",
        ),
        (
            f"Update->done p99 @ {figures['latency_rate_per_second']:.0f}/s",
            f"{figures['latency_p99_ms']} ms",
            "",
        ),
        (
            "RSS api start -> end",
            f"{rss_start['api']:.0f} -> {rss_end['api']:.0f} MB",
            f"{figures['rss_growth_percent']['api']:+.1f}%",
        ),
        (
            "RSS worker start -> end",
            f"{rss_start['worker']:.0f} -> {rss_end['worker']:.0f} MB",
            f"{figures['rss_growth_percent']['worker']:+.1f}%",
        ),
        (
            f"worker peak RSS, {large['mib']} MiB Create",
            f"{large['worker_peak_rss_mb']:.0f} MB",
            f"({large['seconds']} s, md5 ok: {large['checksum_ok']})",
        ),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"{'figure':<{width}}  {'value':>22}  ratio to echo")
    for name, value, ratio in rows:
        print(f"{name:<{width}}  {value:>22}  {ratio}")
    print(
        "CPU µs per call — echo server: "
        f"{figures['cpu_us_per_echo']['echo']}; Update: "
        + ", ".join(f"{k} {v}" for k, v in figures["cpu_us_per_update"].items())
        + "; Get: "
        + ", ".join(f"{k} {v}" for k, v in figures["cpu_us_per_get"].items())
        + "; REST Get: "
        + ", ".join(f"{k} {v}" for k, v in figures["cpu_us_per_rest_get"].items())
    )
    if metrics_ab is not None:
        print(
            f"metrics on/off ({args.metrics_ab} rounds; medians, then the paired change): "
            + "; ".join(
                f"{phase} {metrics_ab[phase]['off']:.0f}/s -> {metrics_ab[phase]['on']:.0f}/s"
                f" ({metrics_ab[phase]['change_percent']:+.1f}%), API CPU"
                f" {metrics_ab[phase]['api_cpu_us_off']} -> {metrics_ab[phase]['api_cpu_us_on']} µs"
                f" ({metrics_ab[phase]['api_cpu_change_percent']:+.1f}%)"
                for phase in ("get", "update")
            )
        )
    print(f"errors: {json.dumps(figures['errors'])}")
    if "compare" in figures:
        print(
            "\nAgainst a conventional Celery build (bench.compare), one load process, SDK-shaped:"
        )
        print(compare.table(figures["compare"]))
    if "scale" in figures:
        print("\nCost at scale (bench.scale), whole-stack CPU per Update:")
        print(scale_report.table(figures["scale"]))
    print(f"JSON: {out}")
    return 0


def _verdict(met: bool, target: str) -> str:
    return f"  (target {target}: {'met' if met else 'missed'})"


if __name__ == "__main__":
    raise SystemExit(main())
