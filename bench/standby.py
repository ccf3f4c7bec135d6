"""``python -m bench.standby``: what a synchronous standby costs an Update, in one run.

Rounds alternate (alone, standby, alone, standby by default): each starts a private
PostgreSQL 15 primary of its own (``tests.faults.cluster.PrivatePostgres``: own port and data
directory, ``fsync`` and ``synchronous_commit`` on), in the ``standby`` rounds with a streaming
standby made by ``pg_basebackup -R`` and made synchronous (``synchronous_standby_names =
'*'``, ``sync_state = sync``) before the load; then the API and one worker on it, READY
images, and Updates by the load processes for ``seconds``, followed to the drain.

Each round reports the Updates accepted per second and the CPU per accepted Update of the
PostgreSQL servers (every process of both: postmaster, backends, WAL sender, the standby's
WAL receiver and startup process), of RabbitMQ, of the API and of the worker, from the start
of the load to the end of the drain. Backends that exited meanwhile are not counted (the pools
keep theirs). On one machine the standby's round trip is a loopback's: this is the CPU a
standby adds, not the latency a standby in another rack adds to every commit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import statistics
import subprocess
import sys
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from bench import seed_and_drain
from bench.load import Job
from bench.stack import Process, cpu_seconds, migrate_and_token, run_phase, service_env, split
from tests.faults.cluster import PrivatePostgres, _descendants, new_base_dir

MODES = ("alone", "standby")
PROCESSES = 2
CONCURRENCY = 64


def _server_cpu(servers: list[PrivatePostgres]) -> dict[int, float]:
    """CPU seconds so far of every process of the servers, by PID."""
    pids = [pid for s in servers if s.running for pid in (s.pid, *_descendants(s.pid))]
    return {pid: cpu_seconds(pid) for pid in pids}


def _rabbit_cpu() -> dict[int, float]:
    sample: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().startswith("beam"):
                    sample[int(entry.name)] = cpu_seconds(int(entry.name))
            except OSError:
                continue
    return sample


def _used(before: dict[int, float], after: dict[int, float]) -> float:
    return sum(seconds - before.get(pid, 0.0) for pid, seconds in after.items())


def _synchronous(primary: PrivatePostgres, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    query = "SELECT string_agg(sync_state, ',') FROM pg_stat_replication"
    while primary.psql(query).strip() != "sync":
        if time.monotonic() > deadline:
            raise SystemExit("the standby did not become synchronous")
        time.sleep(0.1)


def one_round(
    pool: ProcessPoolExecutor, mode: str, seconds: float, logs: Path, images: int
) -> dict[str, Any]:
    with_standby = mode == "standby"
    settings = {"synchronous_standby_names": "*"} if with_standby else {}
    primary = PrivatePostgres(new_base_dir("bench-pg-primary-"), settings=settings)
    standby = (
        PrivatePostgres(new_base_dir("bench-pg-standby-"), standby_of=primary)
        if with_standby
        else None
    )
    servers = [primary] + ([standby] if standby else [])
    processes: list[Process] = []
    queue = f"bench-standby-{uuid.uuid4().hex[:8]}"
    try:
        primary.start()
        if standby is not None:
            standby.start()
            _synchronous(primary)
        url = primary.url("images")
        env = service_env(url, queue)
        token = migrate_and_token(env)
        api = Process([sys.executable, "-m", "service"], env, logs / f"standby-{mode}-api.log")
        processes.append(api)
        started = json.loads(api.wait_for('"api.started"'))
        address = f"127.0.0.1:{started['port']}"
        worker = Process([sys.executable, "-m", "workers"], env, logs / f"standby-{mode}-w.log")
        processes.append(worker)
        worker.wait_for('"workers.started"')
        image_ids = asyncio.run(seed_and_drain.insert_images(url, images))
        primary.psql("CHECKPOINT")

        own = {"api": api, "worker": worker}
        before = (_server_cpu(servers), _rabbit_cpu())
        own_before = {name: cpu_seconds(p.proc.pid) for name, p in own.items()}
        jobs = [
            Job("update", address, token, seconds, CONCURRENCY, image_ids=part)
            for part in split(image_ids, PROCESSES)
        ]
        result = run_phase(pool, jobs)
        asyncio.run(seed_and_drain.drain(url))
        calls = max(result.calls, 1)
        cpu = {
            "postgres": _used(before[0], _server_cpu(servers)),
            "rabbitmq": _used(before[1], _rabbit_cpu()),
            **{name: cpu_seconds(p.proc.pid) - own_before[name] for name, p in own.items()},
        }
        per_update = {role: round(s / calls * 1e6) for role, s in cpu.items()}
        return {
            "mode": mode,
            "updates_per_second": round(result.calls / result.seconds),
            "errors": result.errors,
            "cpu_us_per_update": per_update,
            "total_cpu_us_per_update": sum(per_update.values()),
        }
    finally:
        for process in processes:
            process.stop()
        for server in reversed(servers):
            server.cleanup()
        for name in (queue, f"{queue}.dead"):
            subprocess.run(["rabbitmqctl", "-q", "delete_queue", name], capture_output=True)


def run(
    seconds: float = 10, rounds: int = 2, *, smoke: bool = False, logs: Path | None = None
) -> dict[str, Any]:
    """``rounds`` of each mode, alternating; the medians and the ratio standby / alone."""
    logs = logs or Path(f"/tmp/bench-standby-{uuid.uuid4().hex[:8]}")
    logs.mkdir(parents=True, exist_ok=True)
    images = int(max(seconds, 1) * 3000)  # more images than the Updates can take
    if smoke:
        seconds, rounds, images = 1, 1, 3000
    measured: list[dict[str, Any]] = []
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(PROCESSES, mp_context=ctx) as pool:
        for _ in range(rounds):
            for mode in MODES:
                measured.append(one_round(pool, mode, seconds, logs, images))
    figures: dict[str, Any] = {"rounds": measured}
    for mode in MODES:
        mine = [r for r in measured if r["mode"] == mode]
        figures[mode] = {
            "updates_per_second": statistics.median(r["updates_per_second"] for r in mine),
            "postgres_cpu_us_per_update": statistics.median(
                r["cpu_us_per_update"]["postgres"] for r in mine
            ),
            "total_cpu_us_per_update": statistics.median(
                r["total_cpu_us_per_update"] for r in mine
            ),
        }
    alone, standby = figures["alone"], figures["standby"]
    figures["throughput_ratio"] = round(
        standby["updates_per_second"] / max(alone["updates_per_second"], 1), 2
    )
    figures["postgres_cpu_ratio"] = round(
        standby["postgres_cpu_us_per_update"] / max(alone["postgres_cpu_us_per_update"], 1), 2
    )
    figures["total_cpu_ratio"] = round(
        standby["total_cpu_us_per_update"] / max(alone["total_cpu_us_per_update"], 1), 2
    )
    return figures


def print_figures(figures: dict[str, Any]) -> None:
    print("\nsynchronous standby (private PostgreSQL 15 servers, rounds alternating):")
    print(f"  {'round':<10}{'Updates/s':>11}{'PG µs/Update':>14}{'all µs/Update':>15}")
    for r in figures["rounds"]:
        print(
            f"  {r['mode']:<10}{r['updates_per_second']:>11}"
            f"{r['cpu_us_per_update']['postgres']:>14}{r['total_cpu_us_per_update']:>15}"
        )
    print(
        f"  standby / alone: throughput {figures['throughput_ratio']} x, PostgreSQL CPU "
        f"{figures['postgres_cpu_ratio']} x, whole stack CPU {figures['total_cpu_ratio']} x"
    )


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.standby", description=__doc__)
    parser.add_argument("--seconds", type=float, default=10, help="length of each round's load")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of each mode")
    parser.add_argument("--smoke", action="store_true", help="one short round of each mode")
    args = parser.parse_args()
    figures = run(args.seconds, args.rounds, smoke=args.smoke)
    print_figures(figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
