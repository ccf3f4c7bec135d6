"""Fault injection: steady load while workers, the API, the broker and the database die.

Runs against a PostgreSQL cluster and a RabbitMQ node of its own (``cluster.py``), so the
machine's services are never touched. Several clients send Creates and Updates the way the
official SDKs do (an idempotency key per call, retried with that key on UNAVAILABLE,
RESOURCE_EXHAUSTED, INTERNAL and DEADLINE_EXCEEDED, polling OperationService.Get), while a
chaos loop SIGKILLs workers and the API, restarts and kills the broker and the database, and
terminates database connections.

What must hold, and is printed as ``name: value`` lines (in CI's log, passing or not):

* every operation a client got back reaches ``done``, and the ledger check finds nothing
  ``lost``, ``applied_twice``, ``not_applied``, ``stuck`` or in ``replay_mismatches``;
* what the clients were told: every answer is tallied by gRPC code; ``internal`` and
  ``unknown`` are 0, and so is ``unexpected`` (a fault reaches a client as UNAVAILABLE,
  DEADLINE_EXCEEDED or ABORTED, ABORTED with a RetryInfo: ``aborted_without_retry_info``);
* ``deadlocks``: PostgreSQL detected none in the run's database (``pg_stat_database``, and
  the server's log, which also covers the moments before a kill).

``FAULTS_SECONDS`` sets the length of the load (default 60). The cluster and backlog runs
are in test_cluster_faults.py and test_backlog.py.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import time
from collections import Counter

from tests.conftest import migrate
from tests.faults.cluster import PrivatePostgres, PrivateRabbit, free_port
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
from tests.support import BlobServer, create_token

LOAD_SECONDS = float(os.environ.get("FAULTS_SECONDS", "60"))
CLIENTS = 6
WORKERS = 3
FAULT_GAP_SECONDS = 3.0


async def chaos(
    stack: Stack,
    database: PrivatePostgres,
    broker: PrivateRabbit,
    deadlocks: DeadlockCount,
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
            await asyncio.to_thread(database.terminate_connections, DATABASE)
        elif kind in ("db_restart", "db_sigkill"):
            await asyncio.to_thread(deadlocks.before_outage)
            if kind == "db_restart":
                await asyncio.to_thread(database.stop, "fast")
            else:
                await asyncio.to_thread(database.kill)
            await asyncio.sleep(1)
            await asyncio.to_thread(database.start)
            await asyncio.to_thread(deadlocks.start)
        elif kind == "broker_restart":
            await asyncio.to_thread(broker.stop)
            await asyncio.sleep(1)
            await asyncio.to_thread(broker.start)
        elif kind == "broker_sigkill":
            await asyncio.to_thread(broker.kill)
            await asyncio.sleep(1)
            await asyncio.to_thread(broker.start)
        faults[kind] += 1


async def test_nothing_is_lost_applied_twice_or_stuck_under_faults(
    private_services, tmp_path, capsys
):
    database, broker = private_services
    url = database.url(DATABASE)
    await asyncio.to_thread(migrate, url)
    token = await asyncio.to_thread(
        create_token, url, "--subject", "load", "--folder", "*", "--role", "editor"
    )
    deadlocks = DeadlockCount.of(database)
    await asyncio.to_thread(deadlocks.start)
    blobs = await BlobServer().start()
    env = fault_env(url, broker.url(), free_port())
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
            chaos(stack, database, broker, deadlocks, until, faults),
            *(c.run(until) for c in clients),
        )
        figures = await ledger_check(url, ledger)
    finally:
        # Stopped before the deadlocks are read: a backend reports its counts when it ends.
        await asyncio.to_thread(stack.stop)
        await blobs.close()

    report = {
        **figures,
        **ledger.answers.figures(),
        **await asyncio.to_thread(deadlocks.figures),
        "deadlock_excerpts": await asyncio.to_thread(deadlocks.excerpts),
        "answers_by_client": {c.number: dict(c.answers.by_code) for c in clients},
        "answers_by_method": dict(ledger.answers.by_method.most_common()),
        "examples": ledger.answers.examples,
        "faults": dict(sorted(faults.items())),
        "service_logs": stack.log_summary(),
        "logs": str(stack.logs),
        "seconds": LOAD_SECONDS,
    }
    with capsys.disabled():  # the figures belong in the CI log, passing or not
        print_report("fault injection", report)
    assert figures["creates_accepted"] > 0
    assert figures["updates_accepted"] > 0
    assert all(faults[k] > 0 for k in ("worker_sigkill", "broker_restart", "db_restart")), faults
    assert not failures(report), failures(report)
