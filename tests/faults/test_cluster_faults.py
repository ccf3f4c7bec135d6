"""Fault injection against a three-node RabbitMQ cluster: nodes die one at a time under load.

The deployment a user who outgrows one broker runs: the operations' quorum queue has a member
on each of three nodes, and the API and the workers are given all three addresses
(``AMQP_URL`` with three comma-separated URLs). While SDK-like clients send Creates and
Updates, a chaos loop SIGKILLs a node, or stops it, then starts it again, going round the
nodes; it never takes down a second node before the first is back and its queue members are
online again, so a majority is always up.

What must hold, printed as ``name: value`` lines: the ledger figures of the single-broker run
(``lost``, ``applied_twice``, ``not_applied``, ``stuck``, ``replay_mismatches``: 0), no
``internal`` or ``unknown`` answer, ``deadlocks: 0``; ``nodes_killed`` (and
``nodes_restarted``) > 0; and publishes keep being confirmed while a majority is up: a probe
publishes through the service's own ``Broker`` every 100 ms, and every outage of a node sees
confirmed publishes (``outages_without_a_confirm: 0``) with no gap between two confirms longer
than ``MAX_UNCONFIRMED_SECONDS`` (``longest_unconfirmed_seconds``).

Opt-in (about two minutes with the default 60 s of load; CI runs the single-broker suite):

    FAULTS_CLUSTER=1 .venv/bin/python -m pytest tests/faults/test_cluster_faults.py -s

``FAULTS_SECONDS`` sets the length of the load (default 60).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime

import pytest

from service.adapters.rabbitmq import Broker, dead_letter_queue
from service.domain.errors import Unavailable
from tests.conftest import migrate
from tests.faults.cluster import PrivatePostgres, PrivateRabbitCluster, free_port, new_base_dir
from tests.faults.load import (
    DATABASE,
    Client,
    DeadlockCount,
    Ledger,
    Stack,
    failures,
    fault_env,
    ledger_check,
    print_report,
)
from tests.support import BlobServer, create_token, eventually, messages_of

pytestmark = [
    pytest.mark.skipif(
        os.environ.get("FAULTS_CLUSTER") != "1",
        reason="the RabbitMQ cluster run takes about 2 minutes; FAULTS_CLUSTER=1 runs it",
    ),
    pytest.mark.timeout(1800),
]

LOAD_SECONDS = float(os.environ.get("FAULTS_SECONDS", "60"))
CLIENTS = 6
WORKERS = 3
NODE_DOWN_SECONDS = 3.0  # how long a node stays down
NODE_GAP_SECONDS = 2.0  # between one node back in the cluster and the next fault
QUEUE = "image-operations"
PROBE_QUEUE = "faults-probe"
PROBE_INTERVAL_SECONDS = 0.1
PROBE_TIMEOUT_SECONDS = 2.0
# A node's death costs at most: noticing the lost connection (at once: its TCP connections
# are reset), connecting to the next node, and, when it held the queue's leader, electing a
# new one (about a second here). Longer than this without one confirmed publish counts as
# publishes not going on.
MAX_UNCONFIRMED_SECONDS = 10.0


@pytest.fixture(scope="module")
async def private_services() -> AsyncIterator[tuple[PrivatePostgres, PrivateRabbitCluster]]:
    database = PrivatePostgres(new_base_dir("faults-pg-"))
    cluster = PrivateRabbitCluster(3)
    try:
        await asyncio.gather(asyncio.to_thread(database.start), asyncio.to_thread(cluster.start))
        yield database, cluster
    finally:
        await asyncio.gather(
            asyncio.to_thread(database.cleanup), asyncio.to_thread(cluster.cleanup)
        )


@dataclass
class Outage:
    """One node down, from the fault until its start returned (wall-clock time, to compare
    with the service logs)."""

    node: int
    kind: str
    started: float
    ended: float | None = None


def within_any(moment: float, outages: list[Outage], end: float) -> bool:
    return any(o.started <= moment <= (o.ended or end) for o in outages)


@dataclass
class Probe:
    """Publishes through a ``Broker`` given every node, recording when confirms came."""

    confirmed: list[float] = field(default_factory=list)
    failed: list[float] = field(default_factory=list)

    async def run(self, broker: Broker, until: float) -> None:
        while time.monotonic() < until:
            try:
                await broker.publish(
                    messages_of([f"probe{len(self.confirmed)}"])[0], PROBE_TIMEOUT_SECONDS
                )
            except Unavailable:
                self.failed.append(time.time())
            else:
                self.confirmed.append(time.time())
            await asyncio.sleep(PROBE_INTERVAL_SECONDS)

    def longest_gap(self, start: float, end: float) -> float:
        times = [start, *(t for t in self.confirmed if start <= t <= end), end]
        return max(later - earlier for earlier, later in itertools.pairwise(times))

    def confirmed_within(self, start: float, end: float) -> int:
        return sum(1 for t in self.confirmed if start <= t <= end)


async def members_online(cluster: PrivateRabbitCluster, queue: str) -> bool:
    """Every node has a member of the queue, and every member is online."""
    try:
        members = await asyncio.to_thread(cluster.queue_members, queue)
    except (KeyError, RuntimeError):
        return False
    names = {node.node_name for node in cluster.nodes}
    return set(members["members"]) == names and set(members["online"]) == names


async def chaos(
    cluster: PrivateRabbitCluster, until: float, outages: list[Outage], faults: Counter[str]
) -> None:
    """Round the nodes: SIGKILL or stop one, start it again, wait for its queue members."""
    kinds = itertools.cycle(["node_sigkill", "node_sigkill", "node_restart"])
    nodes = itertools.cycle(range(len(cluster.nodes)))
    while time.monotonic() + NODE_DOWN_SECONDS < until:
        await asyncio.sleep(NODE_GAP_SECONDS)
        # Never a second node down: the last one is back, with its queue members online.
        assert len(cluster.running) == len(cluster.nodes), cluster
        for queue in (QUEUE, dead_letter_queue(QUEUE)):
            await eventually(
                lambda queue=queue: members_online(cluster, queue),
                timeout=120,
                interval=0.5,
                what=f"every member of {queue} online",
            )
        node, kind = next(nodes), next(kinds)
        outage = Outage(node, kind, time.time())
        outages.append(outage)
        if kind == "node_sigkill":
            await asyncio.to_thread(cluster.kill_node, node)
        else:
            await asyncio.to_thread(cluster.stop_node, node)
        await asyncio.sleep(NODE_DOWN_SECONDS)
        await asyncio.to_thread(cluster.start_node, node)
        outage.ended = time.time()
        faults[kind] += 1


def logged_at(stack: Stack, message: str) -> list[float]:
    """When the service processes logged ``message`` (seconds since the epoch)."""
    moments = []
    for process in stack.started:
        for line in process.log_lines():
            if line.get("message") == message and "timestamp" in line:
                moments.append(datetime.fromisoformat(line["timestamp"]).timestamp())
    return moments


async def test_a_cluster_losing_one_node_at_a_time_loses_nothing(
    private_services, tmp_path, capsys
):
    database, cluster = private_services
    url = database.url(DATABASE)
    await asyncio.to_thread(migrate, url)
    token = await asyncio.to_thread(
        create_token, url, "--subject", "load", "--folder", "*", "--role", "editor"
    )
    deadlocks = DeadlockCount.of(database)
    await asyncio.to_thread(deadlocks.start)
    blobs = await BlobServer().start()
    env = fault_env(url, cluster.url(), free_port(), AMQP_QUEUE=QUEUE)
    stack = Stack(env, tmp_path)
    probe_broker = Broker(cluster.url(), PROBE_QUEUE, 5)
    probe, ledger = Probe(), Ledger()
    outages: list[Outage] = []
    faults: Counter[str] = Counter()
    connecting = asyncio.create_task(probe_broker.keep_connected())
    try:
        await stack.start_api()
        for _ in range(WORKERS):
            await stack.start_worker()
        await probe_broker.wait_connected(60)
        # The queue the service declared is replicated on every node.
        replicated = await asyncio.to_thread(cluster.queue_members, QUEUE)
        assert replicated["type"] == ["quorum"]
        assert replicated["members"] == sorted(node.node_name for node in cluster.nodes)

        # Wall-clock for what is compared with the logs' timestamps; monotonic for the ends.
        started = time.time()
        until = time.monotonic() + LOAD_SECONDS
        clients = [Client(n, env["GRPC_LISTEN"], token, blobs, ledger) for n in range(CLIENTS)]
        await asyncio.gather(
            chaos(cluster, until, outages, faults),
            probe.run(probe_broker, until),
            *(c.run(until) for c in clients),
        )
        ended = time.time()
        figures = await ledger_check(url, ledger)
    finally:
        connecting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await connecting
        await probe_broker.close()
        await asyncio.to_thread(stack.stop)
        await blobs.close()

    windows = [(o.started, o.ended or ended) for o in outages]
    # The API's publishes that got no confirm in PUBLISH_TIMEOUT_SECONDS (the relay sent
    # them later): when they happened.
    deferred = logged_at(stack, "operation.publish_deferred")
    report = {
        **figures,
        **ledger.answers.figures(),
        **await asyncio.to_thread(deadlocks.figures),
        "deadlock_excerpts": await asyncio.to_thread(deadlocks.excerpts),
        "nodes_killed": faults["node_sigkill"],
        "nodes_restarted": faults["node_restart"],
        "probe_publishes_confirmed": len(probe.confirmed),
        "probe_publishes_failed": len(probe.failed),
        "probe_publishes_failed_outside_outages": sum(
            1 for t in probe.failed if not within_any(t, outages, ended)
        ),
        "api_publishes_deferred": len(deferred),
        "api_publishes_deferred_outside_outages": sum(
            1 for t in deferred if not within_any(t, outages, ended)
        ),
        "longest_unconfirmed_seconds": round(probe.longest_gap(started, ended), 2),
        "outages_without_a_confirm": sum(
            1 for start, end in windows if not probe.confirmed_within(start, end)
        ),
        "outages": [
            {
                "node": o.node,
                "kind": o.kind,
                "seconds": round((o.ended or ended) - o.started, 2),
                "probe_confirms": probe.confirmed_within(o.started, o.ended or ended),
                "longest_unconfirmed_seconds": round(
                    probe.longest_gap(o.started, o.ended or ended), 2
                ),
            }
            for o in outages
        ],
        "queue_members": replicated["members"],
        "answers_by_method": dict(ledger.answers.by_method.most_common()),
        "examples": ledger.answers.examples,
        "service_logs": stack.log_summary(),
        "logs": str(stack.logs),
        "seconds": LOAD_SECONDS,
    }
    with capsys.disabled():
        print_report("fault injection, three-node RabbitMQ cluster", report)
    assert figures["creates_accepted"] > 0
    assert figures["updates_accepted"] > 0
    assert report["nodes_killed"] > 0
    assert report["outages_without_a_confirm"] == 0
    assert report["longest_unconfirmed_seconds"] <= MAX_UNCONFIRMED_SECONDS
    assert not failures(report), failures(report)
