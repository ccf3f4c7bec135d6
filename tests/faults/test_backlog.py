"""A long backlog: the workers are down while 20,000 Updates and 2,000 Creates are accepted,
and come back after more than ``REPUBLISH_AFTER_SECONDS``.

Every operation must finish exactly once (the ledger check of the fault suite), and the
backlog must not be taken for lost messages. A message carries several operations, so that
is counted both ways, until the queue is empty, every delivery, redeliveries and copies
included: in operations, the workers may receive at most 1.05 per operation accepted
(``received_operations_over_operations``, from the workers' own counters,
``image_service_received_operations_total``): a backlog sent again would double it; in
messages, the broker may deliver at most 1.05 per message published
(``delivered_over_published_messages``, from the broker's counters): redeliveries.

Everything goes through the API (20,000 Updates need 20,000 READY images, one unfinished
Update per image: those are inserted into the database directly, which is not what is being
measured). The accept rate on this machine is printed (``accepted_per_second``).

Opt-in (about five minutes; CI runs the single-broker suite):

    FAULTS_BACKLOG=1 .venv/bin/python -m pytest tests/faults/test_backlog.py -s

``FAULTS_BACKLOG_UPDATES`` and ``FAULTS_BACKLOG_CREATES`` change the sizes (20000, 2000).
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from typing import Any

import aiohttp
import asyncpg
import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import migrate
from tests.faults.cluster import PrivateRabbit, free_port
from tests.faults.load import (
    DATABASE,
    Accepted,
    Client,
    DeadlockCount,
    Ledger,
    Stack,
    failures,
    fault_env,
    ledger_check,
    print_report,
)
from tests.support import BlobServer, connect, create_token, eventually
from yandex.cloud.baremetal.v1alpha import image_service_pb2, image_service_pb2_grpc

pytestmark = [
    pytest.mark.skipif(
        os.environ.get("FAULTS_BACKLOG") != "1",
        reason="the long-backlog run takes about 5 minutes; FAULTS_BACKLOG=1 runs it",
    ),
    pytest.mark.timeout(1800),
]

UPDATES = int(os.environ.get("FAULTS_BACKLOG_UPDATES", "20000"))
CREATES = int(os.environ.get("FAULTS_BACKLOG_CREATES", "2000"))
FOLDERS = 20
IN_FLIGHT = 64  # calls in flight at once while the backlog is accepted
WORKERS = 3
REPUBLISH_AFTER_SECONDS = 10.0
QUEUE = "image-operations"
MAX_RECEIVED_OVER_OPERATIONS = 1.05
MAX_DELIVERED_OVER_PUBLISHED_MESSAGES = 1.05


async def received_by_workers(ports: list[int]) -> dict[str, float]:
    """Messages and operations the workers received from the operation queue, summed over
    their ``/metrics``."""
    totals = {"messages": 0.0, "operations": 0.0}
    async with aiohttp.ClientSession() as session:
        for port in ports:
            async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
                text = await response.text()
            for family in text_string_to_metric_families(text):
                for sample in family.samples:
                    if sample.labels.get("queue") != QUEUE:
                        continue
                    if sample.name == "image_service_received_messages_total":
                        totals["messages"] += sample.value
                    elif sample.name == "image_service_received_operations_total":
                        totals["operations"] += sample.value
    return totals


def folder_of(number: int) -> str:
    return f"backlog-{number % FOLDERS}"


async def seed_ready_images(url: str, count: int) -> dict[str, dict[str, Any]]:
    """``count`` READY images, straight into the database; returns what each holds."""
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "INSERT INTO images (id, folder_id, name, description, status)"
            " SELECT 'img' || lpad(i::text, 17, '0'), 'backlog-' || (i % $2),"
            "  'seeded-' || i, 'seeded', 2"
            " FROM generate_series(0, $1 - 1) AS i"
            " RETURNING id, name, description",
            count,
            FOLDERS,
        )
    finally:
        await conn.close()
    return {
        r["id"]: {"name": r["name"], "description": r["description"], "labels": {}} for r in rows
    }


async def accept_backlog(
    address: str,
    token: str,
    blobs: BlobServer,
    ledger: Ledger,
    image_ids: list[str],
    creates: int,
) -> None:
    """One Update per image and ``creates`` Creates, ``IN_FLIGHT`` calls at a time."""
    client = Client(0, address, token, blobs, ledger)
    jobs: asyncio.Queue[tuple[str, int]] = asyncio.Queue()
    every = max(len(image_ids) // max(creates, 1), 1)  # Creates spread among the Updates
    placed = 0
    for number, image_id in enumerate(image_ids):
        jobs.put_nowait((image_id, number))
        if number % every == 0 and placed < creates:
            jobs.put_nowait(("", placed))
            placed += 1
    for number in range(placed, creates):
        jobs.put_nowait(("", number))
    deadline = time.monotonic() + 1800

    async def caller(images: Any) -> None:
        while not jobs.empty():
            image_id, number = jobs.get_nowait()
            try:
                if image_id:
                    await update(images, image_id, number)
                else:
                    await create(images, number)
            except grpc.aio.AioRpcError as exc:
                ledger.refused[exc.code().name] += 1

    async def update(images: Any, image_id: str, number: int) -> None:
        change = {"description": f"backlog {number}"}
        request = image_service_pb2.UpdateImageRequest(image_id=image_id, **change)
        # No idempotency key: concurrent Updates are accepted in groups (group commit), the
        # API's fast path; a retry of one already accepted is refused, never applied twice.
        op = await client.call("Update", images.Update, request, None, deadline)
        ledger.add(Accepted(op.id, "update_image", image_id, change))

    async def create(images: Any, number: int) -> None:
        name = f"created-{number}"
        request = image_service_pb2.CreateImageRequest(
            folder_id=folder_of(number),
            name=name,
            description="created",
            uri=blobs.url("/blob/1000"),
        )
        op = await client.call("Create", images.Create, request, str(uuid.uuid4()), deadline)
        metadata = image_service_pb2.CreateImageMetadata()
        op.metadata.Unpack(metadata)
        change = {"name": name, "description": "created", "labels": {}, "size": 1000}
        ledger.add(Accepted(op.id, "create_image", metadata.image_id, change))

    channels = [connect(address, token) for _ in range(4)]
    try:
        stubs = [image_service_pb2_grpc.ImageServiceStub(channel) for channel in channels]
        await asyncio.gather(*(caller(stubs[i % len(stubs)]) for i in range(IN_FLIGHT)))
    finally:
        for channel in channels:
            await channel.close()


async def backlog_older_than(url: str, seconds: float) -> bool:
    """True once every operation was accepted, and published, more than ``seconds`` ago by
    the database's clock (the one the sweeper judges by); an unpublished one counts from its
    acceptance."""
    conn = await asyncpg.connect(url)
    try:
        return bool(
            await conn.fetchval(
                "SELECT coalesce(max(greatest(created_at, published_at)), now())"
                " < now() - make_interval(secs => $1) FROM operations",
                seconds,
            )
        )
    finally:
        await conn.close()


def queue_depth(broker: PrivateRabbit, queue: str) -> int:
    """Messages in the queue, ready and unacknowledged."""
    for line in broker.ctl("list_queues", "name", "messages", "--silent").splitlines():
        name, _, count = line.partition("\t")
        if name == queue:
            return int(count)
    return 0


async def test_a_long_backlog_is_delivered_about_once(private_services, tmp_path, capsys):
    database, broker = private_services
    url = database.url(DATABASE)
    await asyncio.to_thread(migrate, url)
    token = await asyncio.to_thread(
        create_token, url, "--subject", "backlog", "--folder", "*", "--role", "editor"
    )
    seeded = await seed_ready_images(url, UPDATES)
    deadlocks = DeadlockCount.of(database)
    await asyncio.to_thread(deadlocks.start)
    blobs = await BlobServer().start()
    env = fault_env(
        url,
        broker.url(),
        free_port(),
        AMQP_QUEUE=QUEUE,
        REPUBLISH_AFTER_SECONDS=str(REPUBLISH_AFTER_SECONDS),
        SWEEP_INTERVAL_SECONDS="1",
        # Nothing dies here: a lease runs out only if a worker is slower than this.
        LEASE_SECONDS="30",
        DB_COMMAND_TIMEOUT_SECONDS="30",
        MAX_UNFINISHED_OPERATIONS_PER_FOLDER=str(UPDATES + CREATES),
        RATE_LIMIT_PER_SECOND="100000",
        RATE_LIMIT_BURST="100000",
    )
    stack = Stack(env, tmp_path)
    ledger = Ledger()
    try:
        await stack.start_api()
        accepting = time.monotonic()
        await accept_backlog(env["GRPC_LISTEN"], token, blobs, ledger, sorted(seeded), CREATES)
        accepted = time.monotonic()
        operations = len(ledger.accepted)
        waiting = await asyncio.to_thread(queue_depth, broker, QUEUE)
        # The workers come back once the newest operation has waited longer than
        # REPUBLISH_AFTER_SECONDS: what is measured is a backlog older than that.
        await eventually(
            lambda: backlog_older_than(url, REPUBLISH_AFTER_SECONDS),
            timeout=REPUBLISH_AFTER_SECONDS + 120,
            interval=0.5,
            what=f"the newest operation to be older than {REPUBLISH_AFTER_SECONDS}s",
        )
        workers_started = time.monotonic()
        metrics_ports = [free_port() for _ in range(WORKERS)]
        for port in metrics_ports:
            await stack.start_worker(METRICS_LISTEN=f"127.0.0.1:{port}")
        figures = await ledger_check(url, ledger, done_timeout=1500, seeded=seeded)
        drained = time.monotonic()

        async def queue_empty() -> bool:
            return await asyncio.to_thread(queue_depth, broker, QUEUE) == 0

        # Copies sent after the operations finished are delivered too, and counted.
        await eventually(queue_empty, timeout=300, interval=1, what="the queue drained")
        received = await received_by_workers(metrics_ports)
        await asyncio.to_thread(stack.stop_workers)
        counters = await asyncio.to_thread(broker.global_counters)
    finally:
        await asyncio.to_thread(stack.stop)
        await blobs.close()

    delivered = counters["rabbit_quorum_queue.messages_delivered_total"]
    published = counters["amqp091.messages_received_total"]
    report = {
        **figures,
        **ledger.answers.figures(),
        **await asyncio.to_thread(deadlocks.figures),
        "deadlock_excerpts": await asyncio.to_thread(deadlocks.excerpts),
        "operations": operations,
        "accept_seconds": round(accepted - accepting, 1),
        "accepted_per_second": round(operations / (accepted - accepting), 1),
        "messages_waiting_when_workers_started": waiting,
        "workers_down_seconds": round(workers_started - accepting, 1),
        "seconds_to_finish_the_backlog": round(drained - workers_started, 1),
        "messages_published": published,
        "messages_delivered": delivered,
        "messages_redelivered": counters["rabbit_quorum_queue.messages_redelivered_total"],
        "operations_per_message_received": round(received["operations"] / received["messages"], 1),
        "operations_received": received["operations"],
        "received_operations_over_operations": round(received["operations"] / operations, 3),
        "delivered_over_published_messages": round(delivered / published, 3),
        "service_logs": stack.log_summary(),
        "logs": str(stack.logs),
    }
    with capsys.disabled():
        print_report("long backlog", report)
    assert operations == UPDATES + CREATES, ledger.refused
    assert report["received_operations_over_operations"] <= MAX_RECEIVED_OVER_OPERATIONS
    assert report["delivered_over_published_messages"] <= MAX_DELIVERED_OVER_PUBLISHED_MESSAGES
    assert not failures(report), failures(report)
