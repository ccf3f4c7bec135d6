"""The compose profile ``ha`` under a real Docker engine: etcd and three PostgreSQL nodes under
Patroni (built on the PostgreSQL stand-in), the API and the workers on a ``DATABASE_URL``
naming the three. The primary's container is SIGKILLed between Creates: a standby takes over,
Creates are accepted again, every one finishes once, and the killed node rejoins.

The images, wheels and the engine are those of test_stack.py (its fixtures and helpers).
"""

from __future__ import annotations

import asyncio
import subprocess
import time
import uuid
from collections.abc import AsyncIterator

import pytest

from tests.compose.test_stack import (
    Stack,
    _prepare,
    _remove,
    compose_command,
    create_all,
    docker_engine,  # noqa: F401 - a fixture of this module too
    each_created_once,
    token_of,
)
from tests.support import eventually

pytestmark = pytest.mark.timeout(1800)

PROFILES = ("ha",)
NODES = ("pg0", "pg1", "pg2")
HA_URL = "postgresql://postgres@pg0:5432,pg1:5432,pg2:5432/images?target_session_attrs=read-write"
ACCEPTED_AGAIN_WITHIN = 15.0


@pytest.fixture(scope="module")
async def ha_stack(docker_engine: None) -> AsyncIterator[Stack]:  # noqa: F811
    command = compose_command()
    project = f"imgha{uuid.uuid4().hex[:6]}"
    try:
        running = await asyncio.to_thread(
            _prepare,
            project,
            command,
            PROFILES,
            DATABASE_URL=HA_URL,
            DB_COMMAND_TIMEOUT_SECONDS="5",
        )
        await running.healthy()
        yield running
    finally:
        await asyncio.to_thread(_remove, project, command, PROFILES)


def role(stack: Stack, node: str) -> str:
    """What the node's Patroni says it is (``primary``, ``replica``...), or ``down``."""
    ids = stack.compose("ps", "-q", node).split()
    if not ids:
        return "down"
    probe = (
        "import json, urllib.request;"
        "print(json.load(urllib.request.urlopen('http://127.0.0.1:8008/patroni', timeout=2))"
        "['role'])"
    )
    result = subprocess.run(
        ["docker", "exec", ids[0], "python3", "-c", probe], capture_output=True, text=True
    )
    return result.stdout.strip() if result.returncode == 0 else "down"


def primary(stack: Stack) -> str:
    roles = {node: role(stack, node) for node in NODES}
    found = [node for node, r in roles.items() if r in ("master", "primary")]
    assert len(found) == 1, roles
    return found[0]


def test_the_ha_settings_reach_the_api_and_the_workers(ha_stack: Stack):
    """The settings an operator gives compose for the `ha` profile are those the processes
    run with (a variable the compose file does not read would be dropped without a word)."""
    for service in ("api", "workers"):
        containers = ha_stack.containers(service)
        assert containers, service
        for container in containers:
            env = dict(str(e).split("=", 1) for e in container["Config"]["Env"])  # type: ignore[index]
            assert env["DATABASE_URL"] == HA_URL, service
            assert env["DB_COMMAND_TIMEOUT_SECONDS"] == "5", service


async def test_the_stack_follows_a_killed_primary_and_loses_nothing(ha_stack: Stack):
    stack = ha_stack
    token = await asyncio.to_thread(token_of, stack)
    run = uuid.uuid4().hex[:6]
    accepted = await create_all(stack.grpc_address, token, [f"b{run}-{i}" for i in range(6)])
    old = await asyncio.to_thread(primary, stack)
    container = (await asyncio.to_thread(stack.compose, "ps", "-q", old)).split()[0]
    await asyncio.to_thread(
        subprocess.run, ["docker", "kill", "--signal", "KILL", container], check=True
    )
    killed = time.monotonic()
    after = await create_all(stack.grpc_address, token, [f"a{run}-0"])
    again = time.monotonic() - killed
    print(f"\nCreates accepted again {again:.1f} s after the primary's container was killed")
    assert again <= ACCEPTED_AGAIN_WITHIN
    accepted |= after
    accepted |= await create_all(stack.grpc_address, token, [f"a{run}-{i}" for i in range(1, 6)])

    await asyncio.to_thread(stack.compose, "up", "-d", "--no-build", old)  # back, as a standby

    async def rejoined() -> bool:
        return await asyncio.to_thread(role, stack, old) == "replica"

    await eventually(rejoined, timeout=120, interval=1, what=f"{old} back as a standby")
    await each_created_once(stack, token, run, accepted)
