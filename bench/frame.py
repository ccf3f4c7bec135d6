"""``python -m bench.frame``: what the call frame costs per call with metrics on and off.

The frame (``CallHandling.wrap``) runs in this process around a handler that returns at
once, with a stand-in for the gRPC context and an authenticator that knows the token: no
network, no database, so what is left is the frame's own work (request ID, metadata, the
rate limit, decoding, the access log's level check) and, with metrics on, the counters and
the histogram. On and off alternate over many repetitions and the fastest of each is kept, so
a busy machine slows both alike rather than one of them.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import grpc

from service.domain.auth import Principal, Role
from service.entrypoints.grpc.calls import CallHandling
from service.runtime import logs
from service.runtime.ratelimit import RateLimiter

METHOD = "/yandex.cloud.operation.OperationService/Get"
CALLER = Principal(subject="bench", role=Role.EDITOR, folders=frozenset({"*"}))


class Authenticator:
    async def authenticate(self, authorization: str) -> Principal:
        return CALLER


class Context:
    """What the frame asks of a ``grpc.aio.ServicerContext``."""

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", "Bearer t"), ("x-client-request-id", "r"))

    async def send_initial_metadata(self, metadata: Any) -> None:
        return None


async def handler(request: Any, context: Any) -> bytes:
    return b"answer"


def frame(metered: bool) -> Any:
    calls = CallHandling(
        Authenticator(),  # type: ignore[arg-type]
        RateLimiter(1e12, 10**12),
        metered=metered,
    )
    wrapped = calls.wrap(METHOD, grpc.unary_unary_rpc_method_handler(handler))
    return wrapped.unary_unary


async def per_call_us(call: Any, calls: int) -> float:
    context = Context()
    started = time.process_time()
    for _ in range(calls):
        await call(b"", context)
    return (time.process_time() - started) / calls * 1e6


async def measure(calls: int, repeats: int) -> dict[str, float]:
    frames = {"off": frame(False), "on": frame(True)}
    best = {name: float("inf") for name in frames}
    for _ in range(repeats):
        for name, call in frames.items():
            best[name] = min(best[name], await per_call_us(call, calls))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.frame", description=__doc__)
    parser.add_argument("--calls", type=int, default=20_000, help="calls per repetition")
    parser.add_argument("--repeats", type=int, default=15, help="repetitions of on and off")
    args = parser.parse_args()
    logs.configure("INFO", component="bench")  # as the service runs: reads log at DEBUG
    best = asyncio.run(measure(args.calls, args.repeats))
    print(
        f"call frame, CPU µs per call (best of {args.repeats}): metrics off {best['off']:.1f},"
        f" on {best['on']:.1f} (+{best['on'] - best['off']:.1f})"
    )


if __name__ == "__main__":
    main()
