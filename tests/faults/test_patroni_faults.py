"""High availability: PostgreSQL under Patroni loses its primary again and again, under load.

The deployment ``docs/scaling.md`` and the compose profile ``ha`` describe: three PostgreSQL
15 nodes managed by Patroni (etcd as its store) in strict synchronous mode, so that every
commit the service acknowledges is on two nodes; the API and two workers given every node in
one ``DATABASE_URL`` with ``target_session_attrs=read-write``. While SDK-like clients send
Creates and Updates (a key each, retried with the same key) and poll their operations, a
chaos loop takes the current primary down, round the kinds of fault:

* ``kill``: Patroni and PostgreSQL SIGKILLed (a dead host); started again afterwards;
* ``stop``: Patroni stopped cleanly (it shuts PostgreSQL down and hands over); started again;
* ``freeze``: both SIGSTOPped, sockets left open (a hung host); thawed once a standby has
  taken over, when its Patroni finds the leader key gone and demotes it;
* ``partition``: its network link taken down (each node runs in a network namespace of its
  own on a private bridge): it reaches neither etcd nor the other nodes, and the service
  cannot reach it (packets dropped, not refused); its Patroni, unable to renew the leader key,
  demotes it, and a standby takes over; the link comes back once one has.

After each fault the old primary rejoins as a standby (``pg_rewind`` where its timeline went
past the new primary's) before the next fault; as each fault takes the primary of the moment,
four faults over three nodes make some former primary the primary again (a failover back).

What must hold, printed as ``name: value`` lines: the ledger figures of the other fault runs
(``lost``, ``applied_twice``, ``not_applied``, ``stuck``, ``replay_mismatches``: 0), no
``internal`` or ``unknown`` answer; for each fault, a new primary, and Updates accepted again
within ``ACCEPTED_AGAIN_WITHIN`` seconds (``accepted_again_seconds``: from the fault to the
first call sent after it that was accepted); every old primary back as a standby.

Opt-in (about three minutes):

    FAULTS_HA=1 TEST_WORKERS=0 scripts/test tests/faults/test_patroni_faults.py -s

``FAULTS_SECONDS`` sets the length of the load (default 180; the chaos loop needs about 35 s a
fault).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.conftest import migrate
from tests.faults.cluster import PrivateRabbit, free_port, new_base_dir
from tests.faults.load import (
    DATABASE,
    Client,
    Ledger,
    Stack,
    failures,
    fault_env,
    ledger_check,
    print_report,
)
from tests.faults.patroni import PatroniNode, PrivatePatroniCluster
from tests.support import BlobServer, create_token

pytestmark = [
    pytest.mark.skipif(
        os.environ.get("FAULTS_HA") != "1",
        reason="the PostgreSQL high-availability run takes about 3 minutes; FAULTS_HA=1 runs it",
    ),
    pytest.mark.skipif(
        not (shutil.which("patroni") and shutil.which("etcd")),
        reason="needs Debian's patroni and etcd-server packages (installed by .ci/run)",
    ),
    pytest.mark.timeout(1800),
]

LOAD_SECONDS = float(os.environ.get("FAULTS_SECONDS", "180"))
CLIENTS = 6
WORKERS = 2
FAULTS = ("kill", "stop", "freeze", "partition")
FAULT_CYCLE_SECONDS = 35.0  # a fault, its failover, the old primary's return, a gap
GAP_SECONDS = 3.0
# Patroni's ttl (6 s: the longest a dead or hung primary keeps its leader key), then the
# service's own reconnection (2 s per host that does not answer, one command timeout).
ACCEPTED_AGAIN_WITHIN = 15.0


@pytest.fixture(scope="module")
async def private_services() -> AsyncIterator[tuple[PrivatePatroniCluster, PrivateRabbit]]:
    cluster = PrivatePatroniCluster(3, network=True)
    broker = PrivateRabbit(new_base_dir("faults-mq-"))
    try:
        try:
            await asyncio.to_thread(cluster.network.create)  # type: ignore[union-attr]
        except (OSError, subprocess.CalledProcessError) as exc:
            pytest.skip(f"cannot make network namespaces here (ip netns, a bridge): {exc}")
        await asyncio.gather(asyncio.to_thread(cluster.start), asyncio.to_thread(broker.start))
        yield cluster, broker
    finally:
        await asyncio.gather(asyncio.to_thread(cluster.cleanup), asyncio.to_thread(broker.cleanup))


@dataclass
class Fault:
    kind: str
    node: str
    at: float = 0.0  # when the fault was complete (monotonic)
    new_primary: str = ""
    promoted_seconds: float | None = None
    rejoined_seconds: float | None = None
    rejoined_as: str = ""


async def take_down(cluster: PrivatePatroniCluster, kind: str, fault: Fault) -> None:
    """Fault the primary, wait for a standby to take over, bring the old one back."""
    old: PatroniNode = next(n for n in cluster.nodes if n.node_name == fault.node)
    method = {
        "kill": old.kill,
        "stop": old.stop,
        "freeze": old.freeze,
        "partition": lambda: cluster.cut_off(old),
    }[kind]
    await asyncio.to_thread(method)
    # From here on no process of the old primary runs (a clean stop has also finished).
    fault.at = time.monotonic()

    def promoted(roles: dict[str, str]) -> bool:
        return any(r == "primary" and name != old.node_name for name, r in roles.items())

    roles = await asyncio.to_thread(cluster.wait_for, promoted, 60, "new primary")
    fault.promoted_seconds = round(time.monotonic() - fault.at, 2)
    fault.new_primary = next(name for name, role in roles.items() if role == "primary")
    back = time.monotonic()
    if kind == "freeze":
        old.thaw()
    elif kind == "partition":
        cluster.reconnect(old)
    else:
        await asyncio.to_thread(old.start)
    roles = await asyncio.to_thread(cluster.wait_healthy, 120)
    fault.rejoined_seconds = round(time.monotonic() - back, 2)
    fault.rejoined_as = roles[old.node_name]


async def chaos(cluster: PrivatePatroniCluster, until: float, faults: list[Fault]) -> None:
    kinds = itertools.cycle(FAULTS)
    while time.monotonic() + FAULT_CYCLE_SECONDS < until:
        await asyncio.to_thread(cluster.wait_healthy, 120)
        await asyncio.sleep(GAP_SECONDS)
        kind = next(kinds)
        fault = Fault(kind, cluster.primary().node_name)
        faults.append(fault)
        await take_down(cluster, kind, fault)


async def test_failovers_under_load_lose_nothing(private_services, tmp_path, capsys):
    cluster, broker = private_services
    url = cluster.url(DATABASE)
    await asyncio.to_thread(migrate, url)  # a multi-host URL: the primary is found
    token = await asyncio.to_thread(
        create_token, url, "--subject", "load", "--folder", "*", "--role", "editor"
    )
    blobs = await BlobServer().start()
    env = fault_env(url, broker.url(), free_port())
    stack = Stack(env, tmp_path)
    ledger = Ledger()
    faults: list[Fault] = []
    try:
        await stack.start_api()
        for _ in range(WORKERS):
            await stack.start_worker()
        until = time.monotonic() + LOAD_SECONDS
        clients = [Client(n, env["GRPC_LISTEN"], token, blobs, ledger) for n in range(CLIENTS)]
        await asyncio.gather(chaos(cluster, until, faults), *(c.run(until) for c in clients))
        figures = await ledger_check(url, ledger)
    finally:
        await asyncio.to_thread(stack.stop)
        await blobs.close()

    primaries = [faults[0].node, *(f.new_primary for f in faults)] if faults else []
    # A node primary again after a fault took it down: it rejoined and was failed over back to.
    failed_back = sum(1 for i, name in enumerate(primaries) if name in primaries[:i])
    by_fault: list[dict[str, Any]] = []
    for fault in faults:
        again = ledger.first_accepted_after(fault.at)
        by_fault.append(
            {
                "kind": fault.kind,
                "node": fault.node,
                "new_primary": fault.new_primary,
                "promoted_seconds": fault.promoted_seconds,
                "accepted_again_seconds": None if again is None else round(again, 2),
                "rejoined_seconds": fault.rejoined_seconds,
                "rejoined_as": fault.rejoined_as,
            }
        )
    accepted_again = [f["accepted_again_seconds"] for f in by_fault]
    report = {
        **figures,
        **ledger.answers.figures(),
        "faults": len(faults),
        "failed_over_back": failed_back,
        "longest_accepted_again_seconds": max(
            (a for a in accepted_again if a is not None), default=-1
        ),
        "faults_never_accepted_again": sum(1 for a in accepted_again if a is None),
        "by_fault": by_fault,
        "primaries": primaries,
        "answers_by_method": dict(ledger.answers.by_method.most_common()),
        "examples": ledger.answers.examples,
        "service_logs": stack.log_summary(),
        "logs": str(stack.logs),
        "seconds": LOAD_SECONDS,
    }
    with capsys.disabled():
        print_report("fault injection, PostgreSQL under Patroni (strict synchronous)", report)
    assert figures["creates_accepted"] > 0
    assert figures["updates_accepted"] > 0
    assert {f.kind for f in faults} == set(FAULTS), "every kind of fault ran"
    assert report["faults_never_accepted_again"] == 0
    assert report["longest_accepted_again_seconds"] <= ACCEPTED_AGAIN_WITHIN
    assert all(f.rejoined_as in ("standby", "sync_standby") for f in faults)
    assert failed_back > 0 or len(faults) < 4, primaries
    assert not failures(report), failures(report)
