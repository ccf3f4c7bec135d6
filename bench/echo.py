"""A bare grpc.aio unary echo server: the ceiling for Python gRPC on this machine."""

from __future__ import annotations

import sys

import grpc

METHOD = "/bench.Echo/Echo"


async def _echo(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    return request


async def serve() -> None:
    server = grpc.aio.server()
    handler = grpc.method_handlers_generic_handler(
        "bench.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(_echo)}
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"echo listening {port}", flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    # The same event loop as the API (EVENT_LOOP, uvloop by default): a like-for-like ceiling.
    from service.runtime.loop import run_loop
    from service.runtime.settings import Settings

    try:
        run_loop(serve(), Settings().event_loop)
    except KeyboardInterrupt:
        sys.exit(0)
