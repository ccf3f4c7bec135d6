"""The server span of a call, when tracing is on (``service.runtime.tracing``).

``CallHandling.wrap`` puts it around a method's handler only when tracing is on at start-up,
so with tracing off a call runs no code of it at all. The span covers the servicer, the use
case and the publish of the operation it starts; authentication and decoding come before it.
It continues the client's trace if the call carries ``traceparent`` metadata, and it ends
with the call's code in ``rpc.grpc.status_code`` (an error status only for the codes that
are the server's fault).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from service.domain.errors import Code, ServiceError
from service.runtime import tracing

Behavior = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]


def traced(method: str, behavior: Behavior) -> Behavior:
    """``behavior`` (of ``/package.Service/Method``) in a server span named
    ``package.Service/Method``."""
    service, name = method.lstrip("/").rsplit("/", 1)
    span_name = f"{service}/{name}"
    attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name}

    async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        traceparent = None
        for key, value in context.invocation_metadata() or ():
            if key == "traceparent" and isinstance(value, str):
                traceparent = value
        with tracing.server_span(span_name, traceparent, attributes) as span:
            try:
                response = await behavior(request, context)
            except ServiceError as exc:
                tracing.rpc_ended(span, int(exc.code))
                raise
            except asyncio.CancelledError:
                tracing.rpc_ended(span, int(Code.CANCELLED))
                raise
            except grpc.aio.AbortError:
                raise  # the servicer set the status itself
            except Exception:
                tracing.rpc_ended(span, int(Code.INTERNAL))
                raise
            tracing.rpc_ended(span, int(Code.OK))
            return response

    return call
