"""What the fault-suite runs share: SDK-like clients that tally every answer they get, the
service processes, the ledger check, the deadlock count, and a summary of the service logs.

Used by test_fault_injection.py (one broker, in CI), test_cluster_faults.py (a three-node
RabbitMQ cluster) and test_backlog.py (a long backlog).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import os
import random
import re
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from tests.faults.cluster import PrivatePostgres
from tests.support import BlobServer, ServiceProcess, base_env, blob, connect, eventually
from yandex.cloud.baremetal.v1alpha import image_pb2, image_service_pb2, image_service_pb2_grpc
from yandex.cloud.operation import operation_service_pb2, operation_service_pb2_grpc

Code = grpc.StatusCode
RETRYABLE = {  # what the official SDKs retry, with the same idempotency key
    Code.UNAVAILABLE,
    Code.RESOURCE_EXHAUSTED,
    Code.INTERNAL,
    Code.DEADLINE_EXCEEDED,
    Code.UNKNOWN,
    Code.CANCELLED,
    Code.ABORTED,
}
# How a fault may reach a client: retryable, and never a reason to give up (ABORTED must also
# say when to retry).
FAULT_CODES = {Code.UNAVAILABLE, Code.DEADLINE_EXCEEDED, Code.ABORTED}
# What the clients here may be told outside any fault: the rate limit, and an Update of an
# image that turned out not to be READY.
REFUSAL_CODES = {Code.RESOURCE_EXHAUSTED, Code.FAILED_PRECONDITION}
TRANSITIONAL = (image_pb2.Image.CREATING, image_pb2.Image.UPDATING, image_pb2.Image.DELETING)
BLOB_SIZES = (1_000, 70_000, 300_000)
DATABASE = "images"


def fault_env(database_url: str, amqp_url: str, port: int, **overrides: str) -> dict[str, str]:
    """The environment of the API and the workers in a fault run: short intervals, so that
    recovery happens within the run."""
    settings = dict(
        DATABASE_URL=database_url,
        AMQP_URL=amqp_url,
        AMQP_QUEUE="image-operations",
        GRPC_LISTEN=f"127.0.0.1:{port}",
        LOG_LEVEL="INFO",
        WORKER_CONCURRENCY="8",
        LEASE_SECONDS="3",
        SWEEP_INTERVAL_SECONDS="0.5",
        OUTBOX_INTERVAL_SECONDS="0.2",
        OUTBOX_GRACE_SECONDS="0.5",
        REPUBLISH_AFTER_SECONDS="15",
        RETRY_MAX_SECONDS="120",
        DB_COMMAND_TIMEOUT_SECONDS="5",
        PUBLISH_TIMEOUT_SECONDS="1",
        CONSUMER_WATCH_INTERVAL_SECONDS="1",
        CONSUMER_STALL_SECONDS="5",
        AMQP_DELIVERY_LIMIT="20",
        GRPC_GRACE_SECONDS="2",
        WORKER_GRACE_SECONDS="5",
        DOWNLOAD_ALLOWED_NETWORKS="127.0.0.0/8",
        # All clients share one subject; the default per-subject rate would throttle them.
        RATE_LIMIT_PER_SECOND="5000",
        RATE_LIMIT_BURST="5000",
    )
    return base_env(**{**settings, **overrides})


# --- what the clients were told ------------------------------------------------------------


def has_retry_info(error: grpc.aio.AioRpcError) -> bool:
    """Whether a failed call's rich status carries a ``google.rpc.RetryInfo``."""
    try:
        status = rpc_status.from_call(error)
    except ValueError:  # a status detail that disagrees with the call's code or message
        return False
    return status is not None and any(
        detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR) for detail in status.details
    )


@dataclass
class Answers:
    """Every answer the clients got, by gRPC code (``OK`` included) and by method."""

    by_code: Counter[str] = field(default_factory=Counter)
    by_method: Counter[str] = field(default_factory=Counter)  # "Method CODE"
    aborted_without_retry_info: int = 0
    # The first few details of each code other than OK: what to look for in the logs.
    examples: dict[str, list[str]] = field(default_factory=dict)

    def record(self, method: str, error: grpc.aio.AioRpcError | None) -> None:
        code = Code.OK if error is None else error.code()
        self.by_code[code.name] += 1
        self.by_method[f"{method} {code.name}"] += 1
        if error is None:
            return
        if code == Code.ABORTED and not has_retry_info(error):
            self.aborted_without_retry_info += 1
        seen = self.examples.setdefault(code.name, [])
        if len(seen) < 3:
            seen.append(f"{method}: {error.details()}")

    @property
    def unexpected(self) -> int:
        """Answers that are neither OK, nor a fault's, nor a refusal these clients expect."""
        allowed = {c.name for c in {Code.OK, *FAULT_CODES, *REFUSAL_CODES}}
        return sum(n for name, n in self.by_code.items() if name not in allowed)

    def figures(self) -> dict[str, Any]:
        return {
            "internal": self.by_code[Code.INTERNAL.name],
            "unknown": self.by_code[Code.UNKNOWN.name],
            "unexpected": self.unexpected,
            "aborted_without_retry_info": self.aborted_without_retry_info,
            "answers": dict(self.by_code.most_common()),
        }


# --- the clients ---------------------------------------------------------------------------


@dataclass
class Accepted:
    operation_id: str
    kind: str
    image_id: str
    change: dict[str, Any]


@dataclass
class Ledger:
    accepted: dict[str, Accepted] = field(default_factory=dict)
    refused: Counter[str] = field(default_factory=Counter)
    answers: Answers = field(default_factory=Answers)
    retries: int = 0
    # When each accepted call's successful attempt was sent (monotonic): how long a fault
    # kept the service from accepting.
    accepted_at: list[float] = field(default_factory=list)

    def add(self, entry: Accepted, sent: float | None = None) -> None:
        known = self.accepted.get(entry.operation_id)
        assert known is None or known == entry, f"one key, two requests: {known} {entry}"
        self.accepted[entry.operation_id] = entry
        self.accepted_at.append(time.monotonic() if sent is None else sent)

    def first_accepted_after(self, moment: float) -> float | None:
        """Seconds from ``moment`` to the first call sent after it that was accepted."""
        later = [t for t in self.accepted_at if t > moment]
        return min(later) - moment if later else None


class Client:
    """One SDK-like client: creates images in its folder and updates the ready ones."""

    def __init__(
        self, number: int, address: str, token: str, blobs: BlobServer, ledger: Ledger
    ) -> None:
        self.number = number
        self.token = token
        self.folder = f"faults-{number}"
        self.address = address
        self.blobs = blobs
        self.ledger = ledger
        self.answers = Answers()  # this client's own tally; the ledger's sums every client's
        self.ready: set[str] = set()
        self.pending: dict[str, str] = {}  # image id -> its unfinished operation
        self.sequence = itertools.count()
        self.sent = 0.0  # when the last attempt of a call was sent (monotonic)

    async def call(
        self, name: str, method: Any, request: Any, key: str | None, deadline: float
    ) -> Any:
        """Call like an official client: the same key on every retry of retryable codes."""
        metadata = (("idempotency-key", key),) if key else ()
        delay = 0.05
        while True:
            self.sent = time.monotonic()
            try:
                response = await method(request, metadata=metadata, timeout=5)
            except grpc.aio.AioRpcError as exc:
                self.answers.record(name, exc)
                self.ledger.answers.record(name, exc)
                if exc.code() not in RETRYABLE or time.monotonic() > deadline:
                    raise
                self.ledger.retries += 1
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 1.0)
            else:
                self.answers.record(name, None)
                self.ledger.answers.record(name, None)
                return response

    async def run(self, until: float) -> None:
        async with connect(self.address, self.token) as channel:
            images = image_service_pb2_grpc.ImageServiceStub(channel)
            operations = operation_service_pb2_grpc.OperationServiceStub(channel)
            while time.monotonic() < until:
                await self.collect(operations, until + 120)
                if len(self.ready) < 3 or random.random() < 0.25:
                    await self.create(images, until + 120)
                elif self.ready:
                    await self.update(images, random.choice(sorted(self.ready)), until + 120)
                else:
                    await asyncio.sleep(0.05)

    async def collect(self, operations: Any, deadline: float) -> None:
        for image_id, operation_id in list(self.pending.items()):
            op = await self.call(
                "OperationService.Get",
                operations.Get,
                operation_service_pb2.GetOperationRequest(operation_id=operation_id),
                None,
                deadline,
            )
            if op.done:
                del self.pending[image_id]
                if op.WhichOneof("result") == "response":
                    self.ready.add(image_id)

    async def create(self, images: Any, deadline: float) -> None:
        n = next(self.sequence)
        size = random.choice(BLOB_SIZES)
        request = image_service_pb2.CreateImageRequest(
            folder_id=self.folder,
            name=f"img-{self.number}-{n}",
            description=f"created {n}",
            uri=self.blobs.url(f"/blob/{size}"),
            labels={"client": str(self.number), "size": str(size)},
        )
        op = await self.call("Create", images.Create, request, str(uuid.uuid4()), deadline)
        metadata = image_service_pb2.CreateImageMetadata()
        op.metadata.Unpack(metadata)
        change = {
            "name": request.name,
            "description": request.description,
            "labels": dict(request.labels),
            "size": size,
        }
        self.ledger.add(Accepted(op.id, "create_image", metadata.image_id, change), self.sent)
        self.pending[metadata.image_id] = op.id

    async def update(self, images: Any, image_id: str, deadline: float) -> None:
        n = next(self.sequence)
        change: dict[str, Any] = {"description": f"update {self.number}-{n}"}
        if n % 3 == 0:
            change["labels"] = {"client": str(self.number), "n": str(n)}
        if n % 5 == 0:
            change["name"] = f"img-{self.number}-{n}-renamed"
        request = image_service_pb2.UpdateImageRequest(image_id=image_id, **change)
        try:
            op = await self.call("Update", images.Update, request, str(uuid.uuid4()), deadline)
        except grpc.aio.AioRpcError as exc:
            self.ledger.refused[exc.code().name] += 1
            self.ready.discard(image_id)  # not READY after all; look again later
            return
        self.ledger.add(Accepted(op.id, "update_image", image_id, change), self.sent)
        self.ready.discard(image_id)
        self.pending[image_id] = op.id


# --- the service processes -----------------------------------------------------------------


class Stack:
    """The API and the workers as processes, against the private services."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env = env
        # FAULTS_LOG_DIR keeps the service logs of a run (pytest removes old tmp_paths).
        if kept := os.environ.get("FAULTS_LOG_DIR"):
            logs = Path(kept) / f"{logs.name}-{time.strftime('%Y%m%d-%H%M%S')}"
            logs.mkdir(parents=True, exist_ok=True)
        self.logs = logs
        self.api: ServiceProcess | None = None
        self.workers: list[ServiceProcess] = []
        self.started: list[ServiceProcess] = []
        self.count = itertools.count()

    def _process(self, module: str, **env: str) -> ServiceProcess:
        process = ServiceProcess(
            module, {**self.env, **env}, self.logs / f"{module}-{next(self.count)}.log"
        )
        self.started.append(process)
        return process

    async def start_api(self) -> None:
        self.api = await self._process("service").start().wait_started()

    async def start_worker(self, **env: str) -> None:
        """A worker process; ``env`` adds to the stack's environment for this one."""
        self.workers.append(await self._process("workers", **env).start().wait_started())

    def kill_api(self) -> None:
        assert self.api is not None
        self.api.kill()

    def kill_random_worker(self) -> None:
        victim = random.choice([w for w in self.workers if w.proc and w.proc.poll() is None])
        victim.kill()
        self.workers.remove(victim)

    def stop_workers(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.workers.clear()

    def stop(self) -> None:
        for process in [*self.workers, self.api]:
            if process is not None:
                process.stop()

    def log_summary(self) -> dict[str, Any]:
        return summarize_logs(process.log_path for process in self.started)


# What the summary of the service logs counts: events that show a fault reached further than
# it should (or how the service recovered).
COUNTED_EVENTS = (
    "rpc.failed",
    "task.crashed",
    "consumer.handler_failed",
    "consumer.lost",
    "consumer.ack_lost",
    "outbox.mark_failed",
    "outbox.publish_failed",
    "operation.publish_deferred",
    "broker.connection_lost",
    "broker.connected",
)


def _exception_summary(line: Mapping[str, Any]) -> str:
    """``Type: value at service/module.py:line`` of a logged exception (innermost service
    frame), to find it in the code from the report alone."""
    stacks = line.get("exception")
    if not isinstance(stacks, list) or not stacks:
        return ""
    last = stacks[-1] if isinstance(stacks[-1], dict) else {}
    value = str(last.get("exc_value", ""))[:160]
    ours = [
        f"{frame.get('filename', '').split('/service/', 1)[-1]}:{frame.get('lineno')}"
        for frame in last.get("frames", [])
        if "/service/" in str(frame.get("filename", ""))
    ]
    where = f" at service/{ours[-1]}" if ours else ""
    return f"{last.get('exc_type', '?')}: {value}{where}"


def summarize_logs(paths: Any) -> dict[str, Any]:
    """Counts of ``COUNTED_EVENTS`` in the JSON logs, the exceptions behind ``rpc.failed``
    and ``consumer.handler_failed``, the operations the sweeper and the relay sent again, and
    how many lines mention a deadlock."""
    events: Counter[str] = Counter()
    causes: Counter[str] = Counter()
    sums: Counter[str] = Counter()
    deadlock_lines = 0
    for path in paths:
        with contextlib.suppress(OSError):
            for raw in Path(path).read_text(errors="replace").splitlines():
                if "eadlock" in raw:
                    deadlock_lines += 1
                try:
                    line = json.loads(raw)
                except ValueError:
                    continue
                message = line.get("message")
                if message in COUNTED_EVENTS:
                    events[message] += 1
                if message in ("rpc.failed", "consumer.handler_failed", "task.crashed"):
                    who = line.get("task") or line.get("method") or line.get("component")
                    causes[f"{message} ({who}) {_exception_summary(line)}"] += 1
                if message == "consumer.lost":
                    causes[f"consumer.lost ({line.get('reason')})"] += 1
                if message in ("sweeper.requeued", "outbox.published"):
                    sums[message] += int(line.get("count") or 0)
    return {
        "events": dict(events.most_common()),
        "causes": dict(causes.most_common(10)),
        "operations_sent_again": dict(sums),
        "log_lines_mentioning_deadlock": deadlock_lines,
    }


# --- deadlocks -----------------------------------------------------------------------------


class DeadlockCount:
    """Deadlocks PostgreSQL detected in one database during a run, across restarts.

    Read from ``pg_stat_database.deadlocks``. The statistics survive a clean shutdown but are
    reset by the crash recovery after a kill, so the count is taken in epochs: sampled when
    the server starts and just before it stops or is killed. A deadlock in the last moments
    before a kill can escape the sample (a backend reports its counts every second or so), so
    the server's log, which names every one (``ERROR:  deadlock detected``), is counted too.

    ``psql`` runs SQL and returns psql's unaligned output (``PrivatePostgres.psql``); it may
    raise ``RuntimeError`` while the server is down.
    """

    def __init__(
        self, psql: Callable[[str], str], log_file: Path | None, dbname: str = DATABASE
    ) -> None:
        self._psql = psql
        self._log_file = log_file
        self._dbname = dbname
        self._counted = 0
        self._epoch_start: int | None = None
        self._log_offset = 0

    @classmethod
    def of(cls, database: PrivatePostgres, dbname: str = DATABASE) -> DeadlockCount:
        return cls(database.psql, database.log_file, dbname)

    def _read(self) -> int | None:
        literal = "'" + self._dbname.replace("'", "''") + "'"
        try:
            output = self._psql(f"SELECT deadlocks FROM pg_stat_database WHERE datname = {literal}")
        except RuntimeError:
            return None  # not reachable just now: the log still counts
        return int(output) if output.strip() else 0

    def start(self) -> None:
        """At the start of the run (log included), and after every start of the server."""
        if self._epoch_start is None and self._counted == 0 and self._log_file is not None:
            with contextlib.suppress(OSError):
                self._log_offset = self._log_file.stat().st_size
        self._epoch_start = self._read()

    def before_outage(self) -> None:
        """Just before the server is stopped or killed."""
        now = self._read()
        if now is not None and self._epoch_start is not None:
            self._counted += max(now - self._epoch_start, 0)
        self._epoch_start = None

    def from_statistics(self) -> int:
        """The count so far, from ``pg_stat_database``."""
        now = self._read()
        current = 0
        if now is not None and self._epoch_start is not None:
            current = max(now - self._epoch_start, 0)
        return self._counted + current

    def from_log(self) -> int:
        """``deadlock detected`` errors the server logged in this database since start."""
        return count_logged_deadlocks(self._log_since_start(), self._dbname)

    def _log_since_start(self) -> str:
        if self._log_file is None:
            return ""
        with open(self._log_file, "rb") as log:
            log.seek(self._log_offset)
            return log.read().decode(errors="replace")

    def excerpts(self, limit: int = 3) -> list[str]:
        """The first ``limit`` deadlocks as the server logged them: the error, the processes
        and locks involved, the statement."""
        return deadlock_excerpts(self._log_since_start(), self._dbname, limit)

    def figures(self) -> dict[str, int]:
        statistics, logged = self.from_statistics(), self.from_log()
        return {
            "deadlocks": max(statistics, logged),
            "deadlocks_in_pg_stat_database": statistics,
            "deadlocks_in_server_log": logged,
        }


def count_logged_deadlocks(log_text: str, dbname: str) -> int:
    """``ERROR:  deadlock detected`` lines of ``dbname`` in a server log whose line prefix
    ends in ``user@database``."""
    pattern = re.compile(rf"@{re.escape(dbname)} ERROR:\s+deadlock detected")
    return len(pattern.findall(log_text))


def deadlock_excerpts(log_text: str, dbname: str, limit: int) -> list[str]:
    """Each ``deadlock detected`` error of ``dbname`` with the DETAIL, HINT, CONTEXT and
    STATEMENT lines the server logged after it (its message continues on indented lines)."""
    lines = log_text.splitlines()
    found: list[str] = []
    for index, line in enumerate(lines):
        if len(found) == limit:
            break
        if not re.search(rf"@{re.escape(dbname)} ERROR:\s+deadlock detected", line):
            continue
        excerpt = [line]
        for following in lines[index + 1 :]:
            if following.startswith(("\t", " ")) or re.search(
                r" (DETAIL|HINT|CONTEXT|STATEMENT):", following
            ):
                excerpt.append(following)
            else:
                break
        found.append("\n".join(excerpt))
    return found


# --- the ledger check ----------------------------------------------------------------------


def replay(create: dict[str, Any], updates: list[dict[str, Any]]) -> dict[str, Any]:
    """An image as its finished operations, applied in order, make it."""
    image = {k: create[k] for k in ("name", "description", "labels")}
    for change in updates:
        for key in ("name", "description", "labels"):
            if key in change:
                image[key] = change[key]
    return image


async def ledger_check(
    url: str,
    ledger: Ledger,
    done_timeout: float = 180,
    seeded: Mapping[str, dict[str, Any]] | None = None,
) -> dict[str, int]:
    """Waits up to ``done_timeout`` for every accepted operation to finish, then counts what
    was lost, applied twice, not applied, left in a transitional state, or differs from the
    replay of its finished operations. ``seeded``: images put in the database directly
    (name, description, labels), replayed from there."""
    seeded = seeded or {}
    conn = await asyncpg.connect(url)
    try:
        ids = list(ledger.accepted)

        async def all_done() -> bool:
            unfinished = await conn.fetchval(
                "SELECT count(*) FROM operations WHERE id = ANY($1) AND NOT done", ids
            )
            return unfinished == 0

        # Unfinished ones after the deadline are counted as lost below.
        with contextlib.suppress(AssertionError):
            await eventually(all_done, timeout=done_timeout, interval=0.5, what="all done")
        rows = {
            r["id"]: r
            for r in await conn.fetch(
                "SELECT id, kind, image_id, done, request::text AS request, response IS NOT NULL"
                " AS ok, error_code, created_at FROM operations ORDER BY created_at, id"
            )
        }
        images = {r["id"]: r for r in await conn.fetch("SELECT * FROM images")}
    finally:
        await conn.close()

    lost = [i for i in ids if i not in rows or not rows[i]["done"]]
    for entry in ledger.accepted.values():
        row = rows.get(entry.operation_id)
        assert row is None or row["image_id"] == entry.image_id
    stuck = [i for i, r in images.items() if r["status"] in TRANSITIONAL]

    by_image: dict[str, list[Any]] = {}
    for row in rows.values():
        by_image.setdefault(row["image_id"], []).append(row)
    applied_twice, not_applied, mismatched = [], [], []
    creates = {e.image_id: e for e in ledger.accepted.values() if e.kind == "create_image"}
    for image_id, image in images.items():
        history = sorted(by_image.get(image_id, []), key=lambda r: (r["created_at"], r["id"]))
        applied = [r for r in history if r["ok"]]
        if image["revision"] > len(applied):
            applied_twice.append(image_id)
        elif image["revision"] < len(applied):
            not_applied.append(image_id)
        create = creates.get(image_id)
        baseline = create.change if create is not None else seeded.get(image_id)
        if baseline is None or image["status"] != image_pb2.Image.READY:
            continue
        updates = [json.loads(r["request"]) for r in applied if r["kind"] == "update_image"]
        expected = replay(baseline, updates)
        actual = {
            "name": image["name"],
            "description": image["description"],
            "labels": json.loads(image["labels"]),
        }
        checksum_ok = create is None or (
            image["checksum"] == hashlib.md5(blob(create.change["size"])).hexdigest()
        )
        if actual != expected or not checksum_ok:
            mismatched.append(image_id)
    # Every acknowledged change is exactly what the database recorded for it.
    for entry in ledger.accepted.values():
        if entry.kind == "update_image" and entry.operation_id in rows:
            recorded = json.loads(rows[entry.operation_id]["request"])
            assert recorded == entry.change, (recorded, entry.change)

    accepted_kinds = Counter(e.kind for e in ledger.accepted.values())
    outcome = Counter(
        "response" if rows[i]["ok"] else f"error_{rows[i]['error_code']}" for i in ids if i in rows
    )
    return {
        "creates_accepted": accepted_kinds["create_image"],
        "updates_accepted": accepted_kinds["update_image"],
        "finished_with_response": outcome["response"],
        "finished_with_error": sum(v for k, v in outcome.items() if k != "response"),
        "lost": len(lost),
        "applied_twice": len(applied_twice),
        "not_applied": len(not_applied),
        "stuck": len(stuck),
        "replay_mismatches": len(mismatched),
        "client_retries": ledger.retries,
    }


ZERO_FIGURES = ("lost", "applied_twice", "not_applied", "stuck", "replay_mismatches")
ZERO_ANSWERS = ("internal", "unknown", "unexpected", "aborted_without_retry_info")


def print_report(title: str, report: Mapping[str, Any]) -> None:
    """The figures, one per line as ``name: value`` first (what CI logs are searched for),
    then the whole report as JSON."""
    print(f"\n{title}:")
    for key, value in report.items():
        if isinstance(value, int | float | str):
            print(f"  {key}: {value}")
    print(json.dumps(report, indent=2, default=str))


def failures(report: Mapping[str, Any]) -> list[str]:
    """The figures of a report that must be 0 and are not."""
    return [
        f"{key}: {report[key]}"
        for key in (*ZERO_FIGURES, *ZERO_ANSWERS, "deadlocks")
        if key in report and report[key] != 0
    ]
