"""Fault injection: steady load while workers, the API, the broker and the database die.

Runs against a PostgreSQL cluster and a RabbitMQ node of its own (``cluster.py``), so the
machine's services are never touched. Several clients send Creates and Updates the way the
official SDKs do (an idempotency key per call, retried with that key on UNAVAILABLE,
RESOURCE_EXHAUSTED, INTERNAL and DEADLINE_EXCEEDED, polling OperationService.Get), while a
chaos loop SIGKILLs workers and the API, restarts and kills the broker and the database, and
terminates database connections. When the load stops, every operation a client got back must
reach ``done`` and a ledger check proves nothing was lost, applied twice, or left in a
transitional state, and that every image equals the replay of its finished operations.

``FAULTS_SECONDS`` sets the length of the load (default 60).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import os
import random
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import grpc
import pytest

from tests.conftest import migrate
from tests.faults.cluster import PrivatePostgres, PrivateRabbit, free_port, new_base_dir
from tests.support import (
    BlobServer,
    ServiceProcess,
    base_env,
    blob,
    connect,
    create_token,
    eventually,
)
from yandex.cloud.baremetal.v1alpha import image_pb2, image_service_pb2, image_service_pb2_grpc
from yandex.cloud.operation import operation_service_pb2, operation_service_pb2_grpc

LOAD_SECONDS = float(os.environ.get("FAULTS_SECONDS", "60"))
CLIENTS = 6
WORKERS = 3
FAULT_GAP_SECONDS = 3.0
RETRYABLE = {  # what the official SDKs retry, with the same idempotency key
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.CANCELLED,
}
TRANSITIONAL = (image_pb2.Image.CREATING, image_pb2.Image.UPDATING, image_pb2.Image.DELETING)
BLOB_SIZES = (1_000, 70_000, 300_000)


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
    retries: int = 0

    def add(self, entry: Accepted) -> None:
        known = self.accepted.get(entry.operation_id)
        assert known is None or known == entry, f"one key, two requests: {known} {entry}"
        self.accepted[entry.operation_id] = entry


class Stack:
    """The API and the workers as processes, against the private services."""

    def __init__(self, env: dict[str, str], logs: Any) -> None:
        self.env = env
        self.logs = logs
        self.api: ServiceProcess | None = None
        self.workers: list[ServiceProcess] = []
        self.count = itertools.count()

    def _process(self, module: str) -> ServiceProcess:
        return ServiceProcess(module, self.env, self.logs / f"{module}-{next(self.count)}.log")

    async def start_api(self) -> None:
        self.api = await self._process("service").start().wait_started()

    async def start_worker(self) -> None:
        self.workers.append(await self._process("workers").start().wait_started())

    def kill_api(self) -> None:
        assert self.api is not None
        self.api.kill()

    def kill_random_worker(self) -> None:
        victim = random.choice([w for w in self.workers if w.proc and w.proc.poll() is None])
        victim.kill()
        self.workers.remove(victim)

    def stop(self) -> None:
        for process in [*self.workers, self.api]:
            if process is not None:
                process.stop()


@pytest.fixture(scope="module")
async def private_services() -> AsyncIterator[tuple[PrivatePostgres, PrivateRabbit]]:
    database = PrivatePostgres(new_base_dir("faults-pg-"))
    broker = PrivateRabbit(new_base_dir("faults-mq-"))
    try:
        await asyncio.gather(asyncio.to_thread(database.start), asyncio.to_thread(broker.start))
        yield database, broker
    finally:
        await asyncio.gather(asyncio.to_thread(database.cleanup), asyncio.to_thread(broker.cleanup))


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
        self.ready: set[str] = set()
        self.pending: dict[str, str] = {}  # image id -> its unfinished operation
        self.sequence = itertools.count()

    async def call(self, method: Any, request: Any, key: str | None, deadline: float) -> Any:
        """Call like an official client: the same key on every retry of retryable codes."""
        metadata = (("idempotency-key", key),) if key else ()
        delay = 0.05
        while True:
            try:
                return await method(request, metadata=metadata, timeout=5)
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in RETRYABLE or time.monotonic() > deadline:
                    raise
                self.ledger.retries += 1
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 1.0)

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
        op = await self.call(images.Create, request, str(uuid.uuid4()), deadline)
        metadata = image_service_pb2.CreateImageMetadata()
        op.metadata.Unpack(metadata)
        change = {
            "name": request.name,
            "description": request.description,
            "labels": dict(request.labels),
            "size": size,
        }
        self.ledger.add(Accepted(op.id, "create_image", metadata.image_id, change))
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
            op = await self.call(images.Update, request, str(uuid.uuid4()), deadline)
        except grpc.aio.AioRpcError as exc:
            self.ledger.refused[exc.code().name] += 1
            self.ready.discard(image_id)  # not READY after all; look again later
            return
        self.ledger.add(Accepted(op.id, "update_image", image_id, change))
        self.ready.discard(image_id)
        self.pending[image_id] = op.id


async def chaos(
    stack: Stack,
    database: PrivatePostgres,
    broker: PrivateRabbit,
    until: float,
    faults: Counter[str],
) -> None:
    """One fault after another, each kind in turn, until the load ends."""
    kinds = itertools.cycle(
        [
            "worker_sigkill",
            "db_connections_terminated",
            "broker_restart",
            "worker_sigkill",
            "api_sigkill",
            "db_restart",
            "worker_sigkill",
            "broker_sigkill",
            "db_connections_terminated",
            "db_sigkill",
        ]
    )
    while time.monotonic() + FAULT_GAP_SECONDS < until:
        await asyncio.sleep(FAULT_GAP_SECONDS * (0.5 + random.random()))
        kind = next(kinds)
        if kind == "worker_sigkill":
            await asyncio.to_thread(stack.kill_random_worker)
            await stack.start_worker()
        elif kind == "api_sigkill":
            await asyncio.to_thread(stack.kill_api)
            await stack.start_api()
        elif kind == "db_connections_terminated":
            await asyncio.to_thread(database.terminate_connections, "images")
        elif kind == "db_restart":
            await asyncio.to_thread(database.stop, "fast")
            await asyncio.sleep(1)
            await asyncio.to_thread(database.start)
        elif kind == "db_sigkill":
            await asyncio.to_thread(database.kill)
            await asyncio.sleep(1)
            await asyncio.to_thread(database.start)
        elif kind == "broker_restart":
            await asyncio.to_thread(broker.stop)
            await asyncio.sleep(1)
            await asyncio.to_thread(broker.start)
        elif kind == "broker_sigkill":
            await asyncio.to_thread(broker.kill)
            await asyncio.sleep(1)
            await asyncio.to_thread(broker.start)
        faults[kind] += 1


def replay(create: dict[str, Any], updates: list[dict[str, Any]]) -> dict[str, Any]:
    """An image as its finished operations, applied in order, make it."""
    image = {k: create[k] for k in ("name", "description", "labels")}
    for change in updates:
        for key in ("name", "description", "labels"):
            if key in change:
                image[key] = change[key]
    return image


async def ledger_check(url: str, ledger: Ledger, done_timeout: float = 180) -> dict[str, int]:
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
        if create is None or image["status"] != image_pb2.Image.READY:
            continue
        updates = [json.loads(r["request"]) for r in applied if r["kind"] == "update_image"]
        expected = replay(create.change, updates)
        actual = {
            "name": image["name"],
            "description": image["description"],
            "labels": json.loads(image["labels"]),
        }
        checksum = hashlib.md5(blob(create.change["size"])).hexdigest()
        if actual != expected or image["checksum"] != checksum:
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


async def test_nothing_is_lost_applied_twice_or_stuck_under_faults(
    private_services, tmp_path, capsys
):
    database, broker = private_services
    url = database.url("images")
    await asyncio.to_thread(migrate, url)
    token = await asyncio.to_thread(
        create_token, url, "--subject", "load", "--folder", "*", "--role", "editor"
    )
    blobs = await BlobServer().start()
    env = base_env(
        DATABASE_URL=url,
        AMQP_URL=broker.url(),
        AMQP_QUEUE="image-operations",
        GRPC_LISTEN=f"127.0.0.1:{free_port()}",
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
        # All six clients share one subject; the default per-subject rate would throttle them.
        RATE_LIMIT_PER_SECOND="5000",
        RATE_LIMIT_BURST="5000",
    )
    stack = Stack(env, tmp_path)
    faults: Counter[str] = Counter()
    ledger = Ledger()
    try:
        await stack.start_api()
        for _ in range(WORKERS):
            await stack.start_worker()
        address = env["GRPC_LISTEN"]
        until = time.monotonic() + LOAD_SECONDS
        clients = [Client(n, address, token, blobs, ledger) for n in range(CLIENTS)]
        await asyncio.gather(
            chaos(stack, database, broker, until, faults), *(c.run(until) for c in clients)
        )
        figures = await ledger_check(url, ledger)
    finally:
        await asyncio.to_thread(stack.stop)
        await blobs.close()

    report = {**figures, "faults": dict(sorted(faults.items())), "seconds": LOAD_SECONDS}
    with capsys.disabled():  # the figures belong in the CI log, passing or not
        print("\nfault injection:", json.dumps(report, indent=2))
    assert figures["lost"] == 0
    assert figures["applied_twice"] == 0
    assert figures["not_applied"] == 0
    assert figures["stuck"] == 0
    assert figures["replay_mismatches"] == 0
    assert figures["creates_accepted"] > 0
    assert figures["updates_accepted"] > 0
    assert all(faults[k] > 0 for k in ("worker_sigkill", "broker_restart", "db_restart")), faults
