"""SIGTERM while a process is still starting (waiting for its database, or for the broker)
ends it at once with 0, as it would once started: an orchestrator stopping a deployment whose
database is down does not wait for the start-up deadline."""

from __future__ import annotations

import asyncio
import signal
import socket
import time
from collections.abc import Callable

import pytest

from tests.support import ServiceProcess, eventually

PROMPTLY = 5.0  # seconds; the start-up deadline is a minute


def closed_port() -> int:
    """A local port nothing listens on (bound, then let go)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def terminate_while_waiting(process: ServiceProcess, waiting_for: str) -> tuple[int, float]:
    """SIGTERM once the process logged it retries ``waiting_for``; its exit code and how long
    it took to exit."""

    async def retrying() -> bool:
        assert process.proc is not None
        if process.proc.poll() is not None:
            raise AssertionError(process.log_path.read_text(errors="replace")[-3000:])
        return bool(process.logged("retry.scheduled", name=waiting_for))

    await eventually(retrying, timeout=30, what=f"{process.module} to wait for {waiting_for}")
    started = time.monotonic()
    process.signal(signal.SIGTERM)
    code = await asyncio.to_thread(process.wait, 30)
    return code, time.monotonic() - started


@pytest.mark.parametrize("module", ["service", "workers"])
async def test_sigterm_while_waiting_for_the_database_exits_0_promptly(
    module: str, processes, own_stack_env: Callable[..., dict[str, str]]
):
    env = own_stack_env(DATABASE_URL=f"postgresql://postgres@127.0.0.1:{closed_port()}/nowhere")
    process = processes_start(processes, module, env)
    code, took = await terminate_while_waiting(process, "database.connect")
    assert (code, took < PROMPTLY) == (0, True), (code, took)


async def test_sigterm_while_the_workers_wait_for_the_broker_exits_0_promptly(
    processes, own_stack_env: Callable[..., dict[str, str]]
):
    env = own_stack_env(AMQP_URL=f"amqp://guest:guest@127.0.0.1:{closed_port()}/")
    process = processes_start(processes, "workers", env)
    code, took = await terminate_while_waiting(process, "broker.connect")
    assert (code, took < PROMPTLY) == (0, True), (code, took)


def processes_start(processes, module: str, env: dict[str, str]) -> ServiceProcess:
    """Started, not waited for: it never logs that it started."""
    path = processes.logs_dir / f"{module}-starting-{time.monotonic_ns()}.log"
    process = ServiceProcess(module, env, path).start()
    processes.started.append(process)
    return process
