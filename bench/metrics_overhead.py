"""``python -m bench --metrics-ab N``: what serving Prometheus metrics costs the API, by the
Get and Update rates and the API's CPU per call, metrics on against metrics off."""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from bench import seed_and_drain
from bench.load import Job
from bench.scrape import Scraper
from bench.stack import Process, cpu_seconds, run_phase, split


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
    images = asyncio.run(seed_and_drain.insert_images(url, per_phase * 2 * args.metrics_ab))
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
                asyncio.run(seed_and_drain.drain(url))
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
