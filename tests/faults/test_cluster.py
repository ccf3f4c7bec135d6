"""Self-test of tests/faults/cluster.py: private PostgreSQL and RabbitMQ instances.

Checks that they start, stop, crash and restart without losing committed data, that nothing
they started outlives them (even when the test process is SIGKILLed), and that the machine's
shared PostgreSQL (5432) and RabbitMQ (5672) are untouched. Timings are printed (``-s``).

The three-node RabbitMQ cluster is checked with the service's own ``Broker`` given every
node: its quorum queue has a member on each node, and when the node the Broker is connected
to (which also leads the queue) is killed, publishes are confirmed again within seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import aio_pika
import asyncpg
import pytest
from pamqp.commands import Basic

from service.adapters.rabbitmq import Broker, Delivery
from service.domain.errors import Unavailable
from tests.faults.cluster import (
    PG_BIN,
    PrivatePostgres,
    PrivateRabbit,
    PrivateRabbitCluster,
    _alive,
    _descendants,
    _proc_stat,
    new_base_dir,
)
from tests.support import eventually, messages_of

ROOT = Path(__file__).resolve().parents[2]
SHARED_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
T = TypeVar("T")

# Every base_dir made here, to look for leftover processes at the end.
_base_dirs: list[Path] = []


def make_base_dir(prefix: str) -> Path:
    path = new_base_dir(prefix)
    _base_dirs.append(path)
    return path


def leftovers(dirs: list[Path]) -> list[str]:
    """Live processes whose command line or environment mentions one of dirs."""
    needles = [str(path).encode() for path in dirs]
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid() or not _alive(int(entry)):
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            environ = Path(f"/proc/{entry}/environ").read_bytes()
        except OSError:
            continue
        if any(needle in cmdline or needle in environ for needle in needles):
            command = cmdline.replace(b"\0", b" ").decode(errors="replace")
            found.append(f"{entry}: {command}")
    return found


SHARED_PORTS = (5432, 5672, 4369)  # PostgreSQL, RabbitMQ and its epmd


def shared_daemons() -> dict[int, tuple[str, int]]:
    """The processes listening on the shared services' ports: pid -> (port, start time)."""
    ss = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True)
    daemons = {}
    for line in ss.stdout.splitlines():
        local = line.split()[3]
        port = local.rsplit(":", 1)[1]
        if int(port) in SHARED_PORTS and (match := re.search(r"pid=(\d+)", line)):
            pid = int(match.group(1))
            stat = _proc_stat(pid)
            if stat is not None:
                daemons[pid] = (port, stat[2])
    return daemons


async def retrying(attempt: Callable[[], Awaitable[T]], *, timeout: float = 30.0) -> T:
    """attempt(), again until it does not raise or timeout seconds have passed."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await attempt()
        except Exception:
            if time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.1)


def report(name: str, timings: dict[str, list[float]]) -> None:
    text = ", ".join(f"{what} " + "/".join(f"{t:.2f}" for t in ts) for what, ts in timings.items())
    print(f"\n{name} timings (s): {text}")


@pytest.fixture(scope="module", autouse=True)
def shared_before() -> dict[int, tuple[str, int]]:
    """Taken before any test here starts anything."""
    daemons = shared_daemons()
    assert {port for port, _ in daemons.values()} == {"5432", "5672", "4369"}, daemons
    return daemons


@pytest.fixture
def postgres() -> Iterator[PrivatePostgres]:
    pg = PrivatePostgres(make_base_dir("faults-pg-"))
    yield pg
    pg.cleanup()
    pg.cleanup()  # idempotent
    assert not pg.base_dir.exists()


@pytest.fixture
def rabbit() -> Iterator[PrivateRabbit]:
    rmq = PrivateRabbit(make_base_dir("faults-rmq-"))
    yield rmq
    rmq.cleanup()
    rmq.cleanup()
    assert not rmq.base_dir.exists()


async def test_postgres(postgres: PrivatePostgres) -> None:
    pg = postgres
    assert pg.port != 5432
    pg.start()
    assert pg.url("app") == f"postgresql://postgres@127.0.0.1:{pg.port}/app"
    assert pg.psql("SHOW fsync").strip() == "on"
    assert pg.psql("SHOW listen_addresses").strip() == "127.0.0.1"
    pg.psql("CREATE DATABASE app")

    # terminate_connections: every backend of that database goes.
    victims = [await asyncpg.connect(pg.url("app")) for _ in range(2)]
    bystander = await asyncpg.connect(pg.url("postgres"))
    # In a thread, so that the loop sees the connections go as it happens (a blocked loop can
    # make asyncpg raise InternalClientError on the next query instead).
    assert await asyncio.to_thread(pg.terminate_connections, "app") == 2
    assert pg.psql("SELECT count(*) FROM pg_stat_activity WHERE datname = 'app'") == "0\n"

    async def seen_closed() -> bool:
        # The loop reads each connection's termination before the next query is sent on it
        # (sent first, the query can meet the closing protocol: InternalClientError).
        return all(victim.is_closed() for victim in victims)

    await eventually(seen_closed, timeout=10, what="the terminated connections seen closed")
    for victim in victims:
        with pytest.raises((asyncpg.InterfaceError, asyncpg.ConnectionDoesNotExistError)):
            await victim.fetchval("SELECT 1")
        await victim.close()
    assert await bystander.fetchval("SELECT 1") == 1
    await bystander.close()

    conn = await asyncpg.connect(pg.url("app"))
    await conn.execute("CREATE TABLE t (v int)")
    await conn.execute("INSERT INTO t VALUES (1)")  # committed before the crash

    # kill: the postmaster and every backend at once; crash recovery on the next start.
    tree = [pg.pid, *_descendants(pg.pid)]
    assert len(tree) >= 5  # checkpointer, background writer, walwriter, ..., our backend
    await asyncio.to_thread(pg.kill)
    assert not pg.running
    assert not [pid for pid in tree if _alive(pid)]
    with pytest.raises((asyncpg.InterfaceError, asyncpg.ConnectionDoesNotExistError)):
        await conn.fetchval("SELECT 1")
    await conn.close()
    pg.start()
    assert "database system was interrupted" in pg.log_file.read_text()

    conn = await asyncpg.connect(pg.url("app"))
    assert await conn.fetchval("SELECT sum(v) FROM t") == 1
    await conn.execute("INSERT INTO t VALUES (2)")
    await conn.close()

    pg.restart()  # fast
    pg.stop("immediate")
    pg.start()
    conn = await asyncpg.connect(pg.url("app"))
    assert await conn.fetchval("SELECT sum(v) FROM t") == 3
    await conn.close()

    with pytest.raises(RuntimeError, match="already running"):
        pg.start()
    report("postgres", pg.timings)
    tree = [pg.pid, *_descendants(pg.pid)]
    pg.cleanup()
    assert not [pid for pid in tree if _alive(pid)]
    assert not leftovers([pg.base_dir])


async def publish_persistent(url: str, queue: str, body: bytes) -> None:
    """Publish to a durable quorum queue, returning once the broker has confirmed it."""
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        await channel.declare_queue(queue, durable=True, arguments={"x-queue-type": "quorum"})
        confirmation = await channel.default_exchange.publish(
            aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
            routing_key=queue,
        )
        assert isinstance(confirmation, Basic.Ack)


async def get_one(url: str, queue: str) -> bytes:
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        declared = await channel.get_queue(queue)  # passive: it must have survived
        message = await declared.get(timeout=5)
        assert message is not None
        await message.ack()
        return message.body


async def test_rabbit(rabbit: PrivateRabbit) -> None:
    rmq = rabbit
    assert 5672 not in (rmq.port, rmq.dist_port)
    rmq.start()
    assert rmq.url() == f"amqp://guest:guest@127.0.0.1:{rmq.port}/"
    flags = dict(
        line.split("\t")
        for line in rmq.ctl("list_feature_flags", "--silent").split("\n")
        if "\t" in line
    )
    assert flags["quorum_queue"] == "enabled", flags
    assert "rabbitmq_management" not in rmq.ctl("status")

    # A graceful restart keeps durable quorum queues and their confirmed messages.
    await publish_persistent(rmq.url(), "selftest", b"one")
    rmq.restart()
    assert await retrying(lambda: get_one(rmq.url(), "selftest")) == b"one"

    # So does a crash of the Erlang VM.
    await publish_persistent(rmq.url(), "selftest", b"two")
    tree = [rmq.pid, *_descendants(rmq.pid)]
    beam = rmq.beam_pid()
    assert beam in tree
    rmq.kill()
    assert not rmq.running
    assert not [pid for pid in tree if _alive(pid)]
    rmq.start()
    assert await retrying(lambda: get_one(rmq.url(), "selftest")) == b"two"

    report("rabbitmq", rmq.timings)
    tree = [rmq.pid, *_descendants(rmq.pid)]
    rmq.cleanup()
    assert not [pid for pid in tree if _alive(pid)]
    assert not leftovers([rmq.base_dir])


# Killing the node a Broker is on, and the queue's leader with it: the Broker notices at once
# (its connection is reset), connects to the next node, and publishes are confirmed again once
# the queue has a new leader. Measured here: about a second.
FAILOVER_SECONDS = 15.0


async def test_rabbit_cluster() -> None:
    cluster = PrivateRabbitCluster(3, base_dirs=[make_base_dir(f"faults-mq{i}-") for i in range(3)])
    names = {node.node_name for node in cluster.nodes}
    received: list[str] = []

    async def handler(delivery: Delivery) -> bool:
        received.append(delivery.operations[0].operation_id)
        return True

    async def published(operation_id: str) -> bool:
        try:
            await broker.publish(messages_of([operation_id])[0], timeout=2)
        except Unavailable:
            return False
        return True

    broker = Broker(cluster.url(), "selftest", 5)
    connecting: asyncio.Task[None] | None = None
    try:
        await asyncio.to_thread(cluster.start)
        assert len({node.port for node in cluster.nodes}) == 3
        assert 5672 not in {node.port for node in cluster.nodes}
        assert cluster.cluster_nodes() == names
        assert cluster.url() == ",".join(node.url() for node in cluster.nodes)

        connecting = asyncio.create_task(broker.keep_connected())
        await broker.wait_connected(30)  # to node 0, the first URL
        members = cluster.queue_members("selftest")
        assert members["type"] == ["quorum"]
        assert set(members["members"]) == set(members["online"]) == names
        consumer = await broker.consume("selftest", handler, prefetch=4)
        assert await published("before")

        killed_at = time.monotonic()
        await asyncio.to_thread(cluster.kill_node, 0)
        await eventually(lambda: published("after"), timeout=FAILOVER_SECONDS, interval=0.05)
        failover = time.monotonic() - killed_at
        assert set(cluster.queue_members("selftest")["online"]) == names - {
            cluster.nodes[0].node_name
        }

        # Back, and in the cluster again: its member of the queue is online.
        await asyncio.to_thread(cluster.start_node, 0)
        await asyncio.to_thread(cluster.wait_running)

        async def all_online() -> bool:
            return set(cluster.queue_members("selftest")["online"]) == names

        await eventually(all_online, timeout=60, interval=0.5, what="every member online")

        async def both_received() -> bool:
            return {"before", "after"} <= set(received)

        await eventually(both_received, timeout=30, what="both messages consumed")
        await consumer.stop(grace=1)
        counters = cluster.global_counters()
        assert counters["rabbit_quorum_queue.messages_delivered_total"] >= 1
        print(f"\nrabbitmq cluster: publishes confirmed again {failover:.2f}s after a node kill")
        report("rabbitmq cluster node 0", cluster.nodes[0].timings)
    finally:
        if connecting is not None:
            connecting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await connecting
        await broker.close()
        await asyncio.to_thread(cluster.cleanup)
    assert not leftovers([node.base_dir for node in cluster.nodes])
    assert not [node.base_dir for node in cluster.nodes if node.base_dir.exists()]


def test_watchdog_cleans_up_after_sigkill() -> None:
    """A test process killed with SIGKILL runs no atexit handler: the watchdogs clean up."""
    script = textwrap.dedent(
        """
        import json, os, signal
        from tests.faults.cluster import PrivatePostgres, PrivateRabbit, new_base_dir
        from tests.faults.cluster import _descendants

        pg = PrivatePostgres(new_base_dir("faults-wd-pg-"))
        rmq = PrivateRabbit(new_base_dir("faults-wd-rmq-"))
        pg.start()
        rmq.start()
        pids = [pg.pid, *_descendants(pg.pid), rmq.pid, *_descendants(rmq.pid), rmq._epmd.pid]
        dirs = [str(pg.base_dir), str(rmq.base_dir)]
        print(json.dumps({"pids": pids, "dirs": dirs}), flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    child = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert child.returncode == -signal.SIGKILL, child.stderr
    started = json.loads(child.stdout)
    dirs = [Path(path) for path in started["dirs"]]
    _base_dirs.extend(dirs)
    killed_at = time.monotonic()
    # Gone: the services, their data, and the watchdogs themselves.
    while [pid for pid in started["pids"] if _alive(pid)] or [p for p in dirs if p.exists()]:
        assert time.monotonic() < killed_at + 20, (started, leftovers(dirs))
        time.sleep(0.1)
    took = time.monotonic() - killed_at
    while leftovers(dirs):
        assert time.monotonic() < killed_at + 20, leftovers(dirs)
        time.sleep(0.1)
    print(f"\nwatchdogs: {len(started['pids'])} processes gone {took:.2f}s after the SIGKILL")


async def test_shared_services_untouched(shared_before: dict[int, tuple[str, int]]) -> None:
    assert not leftovers(_base_dirs)
    now = shared_daemons()
    assert {pid: now.get(pid) for pid in shared_before} == shared_before
    ready = await asyncio.create_subprocess_exec(
        str(PG_BIN / "pg_isready"), "-h", "127.0.0.1", "-p", "5432"
    )
    assert await ready.wait() == 0
    connection = await aio_pika.connect(SHARED_AMQP_URL)
    async with connection:
        channel = await connection.channel()
        assert not channel.is_closed
