"""``python -m bench.scale``: does an Update cost more when the database and the broker hold more?

One stack (a fresh database and queue on the local PostgreSQL and RabbitMQ, the API and one
worker process) goes through four phases. Each sets its state up on top of the one before,
with SQL in the service's own schema (never through the API):

1. ``100 images``: one folder of 100 READY images;
2. ``100,000 images``: 99,900 more, over 10 folders;
3. ``10,000 queued``: 10,000 unfinished Updates waiting in the queue: rows inserted as an API
   that stopped before publishing them leaves them, then sent by the service's outbox relay;
4. ``1,000,000 finished``: a million finished operations over the folders and images.

Each phase measures two steps, by the CPU time of the processes of the stack (the API, the
worker, this database's PostgreSQL processes, RabbitMQ):

- *accept*: the worker held back, N Updates of READY images by two load processes with 16
  in flight each; CPU per accepted Update, and the accept rate (from the operations' own
  timestamps). In phase 3 the 10,000 wait in the queue meanwhile.
- *apply*: the worker let go until every unfinished operation is finished (in phase 3 the
  10,000 too); CPU per operation applied. The API's share (the finished operations it is
  told of) is counted here as well.

Each phase is measured three times, N/3 Updates each (phase 3 queues its 10,000 again each
time), and the repeat with the median total stands for it: the machine may be shared.

The worker is held back with SIGSTOP and let go with SIGCONT: one process throughout, so no
step pays for a worker's start. Phase 1 has 100 images, so it takes its N Updates in rounds
of 100, each applied before the next. ``--restart-worker`` terminates the worker instead and
starts a new one for each apply, whose start is then counted in it.

Before each phase is measured, the database is vacuumed and analyzed and a checkpoint taken,
so no step pays for the setup's writes (autovacuum may be off on the server).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench import scale_report
from bench.scale_measure import CONCURRENCY, CONSUMING, PROCESSES, Workers
from bench.scale_phases import FULL, SMOKE, measure_phases
from bench.stack import ADMIN_URL, AMQP_URL, ROOT, Process, _env, drop_database, migrate_and_token

TARGET_RATIO = 1.2  # every phase's total within this factor of every other's


def run(
    smoke: bool = False, *, restart_worker: bool = False, logs: Path | None = None
) -> dict[str, Any]:
    """Run the scale phases on a stack of their own (removed after, also on failure); the
    figures, for JSON and ``table``."""
    started = time.perf_counter()
    sizes = SMOKE if smoke else FULL
    run_id = uuid.uuid4().hex[:8]
    logs = logs or Path(f"/tmp/bench-scale-{run_id}")
    logs.mkdir(parents=True, exist_ok=True)
    database = f"imgsvc_scale_{run_id}"
    url = ADMIN_URL.rsplit("/", 1)[0] + f"/{database}"
    queue = f"scale-{run_id}"
    env = _env(
        DATABASE_URL=url,
        AMQP_URL=AMQP_URL,
        AMQP_QUEUE=queue,
        GRPC_LISTEN="127.0.0.1:0",
        LOG_LEVEL="INFO",
        WORKER_CONCURRENCY=str(CONSUMING),
        RATE_LIMIT_PER_SECOND="1000000",
        RATE_LIMIT_BURST="1000000",
        MAX_UNFINISHED_OPERATIONS_PER_FOLDER="10000000",
        DB_POOL_MAX="20",
        METRICS_LISTEN="",
    )
    workers = Workers(env, logs, restart_worker)
    api: Process | None = None
    try:
        token = migrate_and_token(env, "scale")
        api = Process([sys.executable, "-m", "service"], env, logs / "api.log")
        phases = asyncio.run(measure_phases(sizes, (database, url, queue), api, token, workers))
    finally:
        workers.close()
        if api is not None:
            api.stop()
        asyncio.run(drop_database(database))
        for name in (queue, f"{queue}.dead"):
            subprocess.run(["rabbitmqctl", "-q", "delete_queue", name], capture_output=True)
    totals = [p["total_us"] for p in phases]
    return {
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "sizes": asdict(sizes),
        "worker_held_back_by": "restart" if restart_worker else "SIGSTOP",
        "load": {"processes": PROCESSES, "in_flight_each": CONCURRENCY},
        "phases": phases,
        "spread": round(max(totals) / min(totals), 2),
        "target_ratio": TARGET_RATIO,
        "target_met": max(totals) <= TARGET_RATIO * min(totals),
        # A worker held back longer than the broker's heartbeat timeout loses its connection.
        "worker_reconnects": sum(
            log.read_text(errors="replace").count('"broker.connection_lost"')
            for log in logs.glob("worker-*.log")
        ),
        "seconds": round(time.perf_counter() - started, 1),
        "logs": str(logs),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.scale", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--smoke", action="store_true", help="small state, 300 Updates a phase")
    parser.add_argument(
        "--restart-worker",
        action="store_true",
        help="terminate the worker while accepting, start a new one to apply (counted)",
    )
    parser.add_argument("--out", type=Path, default=None, help="JSON output file")
    args = parser.parse_args()
    out = args.out or ROOT / "bench" / "results" / f"scale-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    figures = run(args.smoke, restart_worker=args.restart_worker)
    out.write_text(json.dumps(figures, indent=2))
    print(scale_report.table(figures, judged=not args.smoke))
    print(f"JSON: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
