"""Several API processes sharing one port (API_PROCESSES): all serve, all drain on SIGTERM."""

from __future__ import annotations

import asyncio
import signal

from tests.faults.cluster import free_port
from tests.support import connect, eventually
from yandex.cloud.baremetal.v1alpha import image_service_pb2, image_service_pb2_grpc


async def test_api_processes_share_the_port_and_stop_together(processes, own_stack_env):
    port = free_port()
    # Successful reads are logged at DEBUG; the List calls below tell the processes apart.
    env = own_stack_env(API_PROCESSES="2", GRPC_LISTEN=f"127.0.0.1:{port}", LOG_LEVEL="DEBUG")
    api = await processes.start("service", env, "api-processes")

    async def both_started() -> bool:
        return len({line.get("pid") for line in api.logged("api.started")}) == 2

    await eventually(both_started, what="both API processes to start")
    for _ in range(40):  # a new connection each time: the kernel spreads them
        async with connect(f"127.0.0.1:{port}") as channel:
            await image_service_pb2_grpc.ImageServiceStub(channel).List(
                image_service_pb2.ListImagesRequest(folder_id="f")
            )
    served_by = {line.get("pid") for line in api.logged("rpc.done")}
    assert len(served_by) == 2, served_by
    api.signal(signal.SIGTERM)
    assert await asyncio.to_thread(api.wait, 30) == 0
    assert len({line.get("pid") for line in api.logged("api.stopped")}) == 2
