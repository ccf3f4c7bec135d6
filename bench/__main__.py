"""``python -m bench``: measure the service against a bare gRPC echo server, in one run.

It starts its own stack (a fresh database and queue on the local PostgreSQL and RabbitMQ, the
API and one worker process, and a bare grpc.aio echo server), then drives each phase with the
same load generator (separate processes):

1. echo: unary echo calls per second, the ceiling for Python gRPC here;
2. update: Updates accepted per second (each durably recorded and enqueued; workers running);
3. get: OperationService.Get per second over a mix of finished and unfinished operations;
4. latency: Update -> done as a client sees it (WaitOperation), at 50/s and at half the
   Update rate;
5. sustained: Updates offered at a fixed rate (a fraction of echo's) for a minute by an
   open-loop generator, each followed to done (``bench.sustained``);
6. soak: a steady mixed load, with the RSS of the API and the worker at its start and end.

Then, unless skipped: the same API against a conventional Celery build, by the same
SDK-shaped client (``bench.compare``: Updates at 8, 32 and 128 in flight, Get, the polling
pipeline, Update -> done at a fixed rate), and the cost of an Update as the state grows
(``bench.scale``: 100 and 100,000 images, 10,000 queued, 1,000,000 finished), and what a
synchronous standby costs an Update (``bench.standby``: Update throughput and CPU per Update
on a private primary alone and with its synchronous standby, rounds alternating).

After the Get phase, a REST phase: ``GET /operations/{id}`` over HTTP (``HTTP_LISTEN``) over
the same operations, beside the gRPC Get figure.

``--metrics`` runs it all with the API and the worker serving Prometheus metrics
(``METRICS_LISTEN``), scraped every second. ``--metrics-ab N`` adds N rounds that compare two
more API processes, one with metrics on (scraped every second) and one without, by the Get and
Update rates and the API's CPU per call, alternating which goes first.

It prints a table with each figure and its ratio to the echo ceiling, round two's targets,
and last round three's goals (``bench.goals``), each with its figure, its ratio, its target and
a verdict; it writes the same as JSON. ``--smoke`` judges nothing.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from bench import compare, goals, scale, standby
from bench.run_report import print_report
from bench.service_phases import run_service_phases
from bench.stack import ROOT


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
        help="Updates per second of the second latency phase (default: half the Update rate"
        " measured; the first, round three's goal 4, runs at 50/s)",
    )
    parser.add_argument(
        "--sustained-seconds",
        type=float,
        default=60,
        help="length of the sustained phase (round three's goal 2)",
    )
    parser.add_argument(
        "--sustained-rate",
        type=float,
        default=goals.SUSTAINED_RATE,
        metavar="FRACTION",
        help=f"Updates offered per second in the sustained phase, as a fraction of echo's calls"
        f" per second (default {goals.SUSTAINED_RATE:g})",
    )
    parser.add_argument(
        "--sustained-follow",
        choices=("wait", "poll"),
        default="wait",
        help="follow each sustained Update with WaitOperation (default) or with"
        " OperationService.Get every 5 ms",
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
    parser.add_argument(
        "--no-standby",
        action="store_true",
        help="skip the synchronous standby's cost (bench.standby: private PostgreSQL servers)",
    )
    parser.add_argument("--smoke", action="store_true", help="seconds-long phases, no verdicts")
    parser.add_argument("--out", type=Path, default=None, help="JSON output file")
    args = parser.parse_args()
    if args.sustained_rate <= 0 or args.sustained_seconds <= 0:
        parser.error("--sustained-rate and --sustained-seconds must be above 0")
    if args.smoke:
        args.seconds, args.soak, args.sustained_seconds = 2, 3, 2

    run = uuid.uuid4().hex[:8]
    logs = Path(os.environ.get("BENCH_LOGS", f"/tmp/bench-{run}"))
    logs.mkdir(parents=True, exist_ok=True)
    out = args.out or ROOT / "bench" / "results" / f"{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    phases = run_service_phases(args, run, logs, out)
    figures = phases.figures

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
    if not args.no_standby:
        figures["standby"] = standby.run(args.seconds, smoke=args.smoke, logs=logs)
    echo_cpu = figures["cpu_us_per_echo"]["echo"]
    update_cpu = sum(figures["cpu_us_per_update"].values())
    figures["update_cpu_ratio_to_echo"] = round(update_cpu / max(echo_cpu, 1), 2)
    round_three = goals.round_three(figures, judged=not args.smoke)
    figures["round_three"] = goals.as_json(round_three)
    out.write_text(json.dumps(figures, indent=2))
    print_report(figures, phases.rss_start, phases.rss_end, round_three, judged=not args.smoke)
    if "standby" in figures:
        standby.print_figures(figures["standby"])
    print(f"JSON: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
