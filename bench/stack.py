"""The stack a benchmark runs: its processes, their CPU time, and the load phases that drive it.

Shared by ``python -m bench`` and ``python -m bench.scale``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import asyncpg

from bench.load import Job, Result, run_job

ROOT = Path(__file__).resolve().parent.parent
ADMIN_URL = os.environ.get(
    "BENCH_DATABASE_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
AMQP_URL = os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")


def _env(**overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "AMQP_"))}
    env.update(overrides)
    return env


def service_env(database_url: str, queue: str, **overrides: str) -> dict[str, str]:
    """The API's and the worker's environment in a benchmark: no limit that would refuse the
    load, and INFO logs (where the processes say they started and on which port)."""
    return _env(
        DATABASE_URL=database_url,
        AMQP_URL=AMQP_URL,
        AMQP_QUEUE=queue,
        GRPC_LISTEN="127.0.0.1:0",
        LOG_LEVEL="INFO",
        WORKER_CONCURRENCY="64",
        RATE_LIMIT_PER_SECOND="1000000",
        RATE_LIMIT_BURST="1000000",
        MAX_UNFINISHED_OPERATIONS_PER_FOLDER="10000000",
        DB_POOL_MAX="20",
        **overrides,
    )


class Process:
    def __init__(self, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self._file = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=self._file, stderr=subprocess.STDOUT
        )

    def wait_for(self, text: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.log.read_text(errors="replace").splitlines():
                if text in line:
                    return line
            if self.proc.poll() is not None:
                raise SystemExit(f"{self.log.name} exited:\n{self.log.read_text()[-2000:]}")
            time.sleep(0.1)
        raise SystemExit(f"{self.log.name}: no {text!r} within {timeout}s")

    def peak_rss_mb(self) -> float:
        """The process's peak resident size so far (VmHWM)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self._file.close()


def migrate_and_token(env: dict[str, str], subject: str = "bench") -> str:
    """Migrate the database ``env`` names, and create an editor token of every folder."""
    service = [sys.executable, "-m", "service"]
    subprocess.run([*service, "migrate"], cwd=ROOT, env=env, check=True, capture_output=True)
    created = subprocess.run(
        [*service, "token", "create", "--subject", subject, "--folder", "*", "--role", "editor"],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return created.stdout.strip().splitlines()[-1]


def cpu_seconds(pid: int) -> float:
    """User and system CPU time a live process has used so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0  # gone meanwhile
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_phase(pool: ProcessPoolExecutor, jobs: list[Job]) -> Result:
    total = Result()
    for result in pool.map(run_job, jobs):
        total.calls += result.calls
        total.errors += result.errors
        total.seconds = max(total.seconds, result.seconds)
        total.latencies += result.latencies
        total.operation_ids += result.operation_ids
        for code, n in result.error_codes.items():
            total.error_codes[code] = total.error_codes.get(code, 0) + n
    return total


def split(items: list[str], parts: int) -> list[list[str]]:
    return [items[i::parts] for i in range(parts)]


async def drop_database(name: str) -> None:
    conn = await asyncpg.connect(ADMIN_URL)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


# A client backend's title ends with its client's address: "user database 127.0.0.1(5432) idle".
_CLIENT = re.compile(r"\S+\(\d+\)|\[local\]")
_PARALLEL = re.compile(r"parallel worker for PID (\d+)")

CpuSample = dict[tuple[str, int], float]


def stack_sample(
    own: dict[str, Process], database: str, skip: frozenset[int] = frozenset()
) -> CpuSample:
    """CPU seconds so far of each process of the stack, by role and PID: ours (by the names
    given), RabbitMQ's, and those of PostgreSQL that serve ``database`` or the whole server
    (checkpointer, WAL writer...). Backends of other databases, on a server others use too,
    are left out, and so are the PIDs in ``skip`` (the benchmark's own connection)."""
    sample = {(name, p.proc.pid): cpu_seconds(p.proc.pid) for name, p in own.items()}
    parallel: dict[int, int] = {}  # parallel worker -> the backend it works for
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in skip:
            continue
        pid = int(entry.name)
        try:
            command = (entry / "comm").read_text().strip()
            if command.startswith("beam"):
                sample[("rabbitmq", pid)] = cpu_seconds(pid)
                continue
            if not command.startswith("postgres"):
                continue
            title = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # gone meanwhile
        if leader := _PARALLEL.search(title):
            parallel[pid] = int(leader.group(1))
        elif not _CLIENT.search(title) or database in title.split():
            sample[("postgres", pid)] = cpu_seconds(pid)
    for pid, leader in parallel.items():
        if ("postgres", leader) in sample:
            sample[("postgres", pid)] = cpu_seconds(pid)
    return sample


def cpu_between(before: CpuSample, after: CpuSample) -> dict[str, float]:
    """CPU seconds used between two samples, by role: of the processes in both, and of those
    started in between. One that exited meanwhile is left out (its count is gone with it)."""
    used: dict[str, float] = {}
    for (role, pid), seconds in after.items():
        used[role] = used.get(role, 0.0) + seconds - before.get((role, pid), 0.0)
    return used


def cpu_per_call(before: CpuSample, after: CpuSample, calls: int) -> dict[str, int]:
    """Microseconds of CPU per call, by role, between two samples."""
    return {
        role: round(seconds / max(calls, 1) * 1e6)
        for role, seconds in cpu_between(before, after).items()
    }
