"""``BaselineStack``: the baseline's database, queue, API and Celery worker, for one benchmark run.

Synchronous on purpose (psycopg for its own SQL), so that a plain script and an async test can
both drive it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit, urlunsplit

import kombu
import psycopg
from psycopg import sql
from sqlalchemy import create_engine

from bench.baseline.models import Base, ImageStatus, new_id, utcnow
from bench.baseline.tasks import sqlalchemy_url

ROOT = Path(__file__).resolve().parent.parent.parent
ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"


class _Process:
    """A child process whose output goes to a log file."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.name = name
        self.log = log
        self._file: IO[bytes] = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=self._file, stderr=subprocess.STDOUT
        )

    def line_with(self, text: str) -> str | None:
        for line in self.log.read_text(errors="replace").splitlines():
            if text in line:
                return line
        if self.proc.poll() is not None:
            tail = self.log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{tail}")
        return None

    def wait_for(self, text: str, deadline: float) -> str:
        while True:
            line = self.line_with(text)
            if line is not None:
                return line
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: no {text!r} in {self.log} in time")
            time.sleep(0.05)

    def stop(self, timeout: float = 30) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._file.close()


def started_at(pid: int) -> int | None:
    """When ``pid`` started (clock ticks since boot), to tell it from a later one of that ID."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def children(pid: int) -> list[int]:
    """The child processes of ``pid`` (of any of its threads)."""
    found: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return found
    for task in tasks:
        try:
            found += [int(child) for child in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


class BaselineStack:
    """A fresh database ``imgsvc_baseline_<hex>`` and queue, the API and a Celery worker.

    ``start(image_count)`` makes it all and returns the IDs of READY images; ``stop()`` removes
    it all again. ``address`` and ``token`` are what a client needs.
    """

    def __init__(
        self,
        logs: Path,
        *,
        admin_url: str = ADMIN_URL,
        amqp_url: str = AMQP_URL,
        concurrency: int = 2,
    ) -> None:
        run = uuid.uuid4().hex[:10]
        self.logs = logs
        self.admin_url = admin_url
        self.amqp_url = amqp_url
        self.concurrency = concurrency
        self.database = f"imgsvc_baseline_{run}"
        self.database_url = urlunsplit(urlsplit(admin_url)._replace(path=f"/{self.database}"))
        self.queue = f"baseline-operations-{run}"
        self.node = f"baseline-{run}@%h"
        self.token = uuid.uuid4().hex
        self.port: int | None = None
        self.api: _Process | None = None
        self.worker: _Process | None = None
        self._database_created = False
        self._children: dict[int, int | None] = {}  # pool process -> when it started

    @property
    def address(self) -> str:
        if self.port is None:
            raise RuntimeError("the baseline stack is not started")
        return f"127.0.0.1:{self.port}"

    def start(self, image_count: int, timeout: float = 60) -> list[str]:
        """Create the database and schema, insert READY images, start the API and worker."""
        self.logs.mkdir(parents=True, exist_ok=True)
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.database)))
        self._database_created = True
        engine = create_engine(sqlalchemy_url(self.database_url, "psycopg"))
        try:
            Base.metadata.create_all(engine)
        finally:
            engine.dispose()
        image_ids = self.insert_images(image_count)
        env = dict(
            os.environ,
            BASELINE_DATABASE_URL=self.database_url,
            BASELINE_AMQP_URL=self.amqp_url,
            BASELINE_QUEUE=self.queue,
            BASELINE_TOKEN=self.token,
            BASELINE_LISTEN="127.0.0.1:0",
        )
        self.api = _Process(
            "baseline api",
            [sys.executable, "-m", "bench.baseline.api"],
            env,
            self.logs / "baseline-api.log",
        )
        self.worker = _Process(
            "baseline worker",
            [
                *(sys.executable, "-m", "celery", "-A", "bench.baseline.tasks", "worker"),
                *("--pool", "prefork", "--concurrency", str(self.concurrency)),
                *("-Q", self.queue, "-n", self.node),
                *("--without-gossip", "--without-mingle", "--without-heartbeat"),
                *("-l", "warning"),
            ],
            env,
            self.logs / "baseline-worker.log",
        )
        deadline = time.monotonic() + timeout
        self.port = int(self.api.wait_for("baseline listening", deadline).split()[-1])
        self.worker.wait_for("baseline worker ready", deadline)
        while len(children(self.worker.proc.pid)) < self.concurrency:
            if time.monotonic() > deadline:
                raise RuntimeError("the Celery worker did not start its pool in time")
            time.sleep(0.05)
        return image_ids

    def pids(self) -> list[int]:
        """The API, the Celery parent and its pool processes (whose CPU counts)."""
        found = [process.proc.pid for process in (self.api, self.worker) if process is not None]
        if self.worker is not None:
            now = children(self.worker.proc.pid)
            for pid in now:
                self._children.setdefault(pid, started_at(pid))
            found += now
        return found

    def insert_images(self, n: int) -> list[str]:
        """``n`` new READY images, inserted with COPY; their IDs."""
        ids = [new_id("img") for _ in range(n)]
        created = utcnow()
        columns = "id, folder_id, name, description, labels, status, created_at"
        with (
            psycopg.connect(self.database_url) as conn,
            conn.cursor() as cursor,
            cursor.copy(f"COPY images ({columns}) FROM STDIN") as copy,
        ):
            for image_id in ids:
                copy.write_row(
                    (image_id, "bench", f"b-{image_id}", "", "{}", int(ImageStatus.READY), created)
                )
        return ids

    def drain(self, timeout: float = 300) -> None:
        """Wait until every operation is done; RuntimeError after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            while True:
                row = conn.execute("SELECT count(*) FROM operations WHERE NOT done").fetchone()
                left = int(row[0]) if row else 0
                if left == 0:
                    return
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{left} operations unfinished after {timeout}s")
                time.sleep(0.1)

    def stop(self) -> None:
        """Stop the processes, drop the database, delete the queue."""
        self.pids()  # remember the pool's processes, to end any the parent leaves behind
        for process in (self.api, self.worker):
            if process is not None:
                process.stop()
        for pid, started in self._children.items():
            if started is not None and started_at(pid) == started:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        if self._database_created:
            with psycopg.connect(self.admin_url, autocommit=True) as conn:
                conn.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                        sql.Identifier(self.database)
                    )
                )
            self._database_created = False
        # The queue, and the direct exchange of the same name that Celery declared for it.
        with kombu.Connection(self.amqp_url) as connection:
            channel = connection.default_channel
            channel.queue_delete(self.queue)
            channel.exchange_delete(self.queue)
