"""``python -m bench.profile``: where an Update's time goes, from the database and the processes.

It starts this service fresh (``bench.compare.ServiceStack``), warms it up, then runs one
phase of SDK-shaped Updates (``--concurrency`` in flight, ``--seconds`` long) and drains it,
while:

- ``pg_stat_statements`` counts the statements of the stack's database (calls, rows, execution
  and planning milliseconds). The extension must be preloaded on the server
  (``shared_preload_libraries = 'pg_stat_statements'``, and ``pg_stat_statements.track_planning
  = on`` for the planning column); without it the table is skipped, with a note saying so.
- py-spy (``pip install py-spy``; not a dependency of the project) samples the API and the
  worker, non-blocking; the raw stacks go to ``--out-dir`` and the heaviest frames are printed.
  Without py-spy that part is skipped, with a note.

``--folders N`` spreads the images over N folders (default 1: one busy folder, the case where
accepts and finishes meet on the folder's rows).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import multiprocessing
import shutil
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import asyncpg

from bench import compare
from bench.load import Job, run_job
from bench.stack import ADMIN_URL

_TOP_STATEMENTS = """
SELECT calls, rows, plans,
       round(total_exec_time::numeric, 1) AS exec_ms,
       round(total_plan_time::numeric, 1) AS plan_ms,
       wal_records, wal_bytes,
       left(regexp_replace(query, '\\s+', ' ', 'g'), 100) AS query
FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid
WHERE d.datname = $1
ORDER BY total_exec_time + total_plan_time DESC
LIMIT 12
"""


async def _statements(reset: bool, database: str = "") -> list[asyncpg.Record] | None:
    conn = await asyncpg.connect(ADMIN_URL)
    try:
        loaded = await conn.fetchval(
            "SELECT 'pg_stat_statements' = ANY(string_to_array("
            "current_setting('shared_preload_libraries'), ', '))"
        )
        if not loaded:
            return None
        await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        if reset:
            await conn.execute("SELECT pg_stat_statements_reset()")
            return []
        return list(await conn.fetch(_TOP_STATEMENTS, database))
    finally:
        await conn.close()


def _top_frames(path: Path, limit: int = 15) -> list[tuple[float, str]]:
    """The frames where most samples were taken (self time), as shares of all samples."""
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        total += int(count)
        own[stack.rsplit(";", 1)[-1]] += int(count)
    return [(n / max(total, 1), frame) for frame, n in own.most_common(limit)]


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.profile", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--concurrency", type=int, default=32, help="Updates in flight")
    parser.add_argument("--seconds", type=float, default=10, help="length of the phase")
    parser.add_argument("--folders", type=int, default=1, help="folders the images are in")
    parser.add_argument("--out-dir", type=Path, default=Path("/tmp/bench-profile"))
    args = parser.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stack = compare.ServiceStack(args.out_dir, 12000, args.folders)
    try:
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            warm = Job("update", stack.address, stack.token, 2, args.concurrency)
            pool.submit(run_job, _with_images(warm, stack.image_ids[:2000])).result()
            stack.drain()
            counted = asyncio.run(_statements(reset=True)) is not None
            spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
            spies = []
            if Path(spy).exists():
                for name, pid in zip(("api", "worker"), stack.pids(), strict=True):
                    command = [spy, "record", "--nonblocking", "-p", str(pid), "-f", "raw"]
                    command += ["-r", "100", "-d", str(int(args.seconds) + 5)]
                    command += ["-o", str(args.out_dir / f"{name}.txt")]
                    spies.append((name, subprocess.Popen(command, stdout=subprocess.DEVNULL)))
            phase = Job("update", stack.address, stack.token, args.seconds, args.concurrency)
            result = pool.submit(run_job, _with_images(phase, stack.image_ids[2000:])).result()
            stack.drain()
            for _, process in spies:
                process.wait()
            statements = asyncio.run(_statements(reset=False, database=stack.database))
    finally:
        stack.stop()
    print(
        f"{result.calls} Updates at {args.concurrency} in flight in {args.folders} folder(s):"
        f" {result.calls / result.seconds:.0f}/s, errors {result.error_codes or 'none'}"
    )
    if not counted or statements is None:
        print("pg_stat_statements is not preloaded on the server: statements not counted")
    else:
        print("\nstatements (pg_stat_statements), per Update accepted:")
        print(
            f"{'calls':>7} {'rows':>7} {'plans':>6} {'exec µs':>8} {'plan µs':>8}"
            f" {'WAL rec':>8} {'WAL B':>7}  query"
        )
        for row in statements:
            per = 1000 / max(result.calls, 1)
            wal_records, wal_bytes = (
                row["wal_records"] * per / 1000,
                float(row["wal_bytes"]) * per / 1000,
            )
            print(
                f"{row['calls']:>7} {row['rows']:>7} {row['plans']:>6}"
                f" {float(row['exec_ms']) * per:>8.0f} {float(row['plan_ms']) * per:>8.0f}"
                f" {wal_records:>8.1f} {wal_bytes:>7.0f}"
                f"  {row['query']}"
            )
    if not spies:
        print("\npy-spy is not installed (pip install py-spy): processes not sampled")
    for name, _ in spies:
        print(f"\n{name}: heaviest frames (self time; raw stacks in {args.out_dir / name}.txt)")
        for share, frame in _top_frames(args.out_dir / f"{name}.txt"):
            print(f"{share * 100:6.1f}%  {frame[:110]}")
    return 0


def _with_images(job: Job, image_ids: list[str]) -> Job:
    job.image_ids = image_ids
    return job


if __name__ == "__main__":
    raise SystemExit(main())
