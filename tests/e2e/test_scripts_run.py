"""``scripts/run``, the README's way to run the whole stack natively, with metrics on: the API
and the workers each serve ``/metrics`` (the workers on the port after ``METRICS_LISTEN``),
and the stack keeps running."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from typing import Any

import aiohttp

from tests.support import ROOT, base_env, eventually


def free_port_pair() -> int:
    """A port P with P and P + 1 both free on 127.0.0.1."""
    for _ in range(50):
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port = first.getsockname()[1]
            with socket.socket() as second:
                try:
                    second.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
                return int(port)
    raise AssertionError("no two free ports in a row")


async def metrics_of(session: aiohttp.ClientSession, port: int) -> str | None:
    try:
        async with session.get(f"http://127.0.0.1:{port}/metrics") as answer:
            return await answer.text() if answer.status == 200 else None
    except aiohttp.ClientError:
        return None


async def test_scripts_run_with_metrics_serves_them_from_the_api_and_the_workers(
    stack_env: dict[str, str], queue_names: Any
) -> None:
    port = free_port_pair()
    env = base_env(
        **{k: v for k, v in stack_env.items() if k in ("DATABASE_URL", "AMQP_URL")},
        AMQP_QUEUE=queue_names("-scripts-run"),
        GRPC_LISTEN="127.0.0.1:0",
        HTTP_LISTEN="",
        METRICS_LISTEN=f"127.0.0.1:{port}",
    )
    stack = await asyncio.create_subprocess_exec(
        str(ROOT / "scripts" / "run"),
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    try:
        async with aiohttp.ClientSession() as session:

            async def both() -> tuple[str, str] | None:
                assert stack.returncode is None, "scripts/run stopped"
                api, workers = await metrics_of(session, port), await metrics_of(session, port + 1)
                return (api, workers) if api and workers else None

            api, workers = await eventually(both, timeout=90, what="both metrics endpoints")
        assert "grpc_server_started_total" in api
        assert "image_operations" in workers or "worker" in workers
    finally:
        if stack.returncode is None:
            os.killpg(stack.pid, signal.SIGTERM)  # as Ctrl-C reaches the whole group
        _, err = await asyncio.wait_for(stack.communicate(), 60)
    text = err.decode(errors="replace")
    assert "Address already in use" not in text, text
    assert f"metrics: the API on 127.0.0.1:{port}, the workers on 127.0.0.1:{port + 1}" in text
