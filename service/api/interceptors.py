"""Request IDs, access logs and error mapping for every RPC.

A ``ServiceError`` becomes a ``google.rpc.Status`` with its code, its message, field
violations as ``BadRequest`` and the request ID as ``RequestInfo``. Anything else is logged with
its traceback and answered ``INTERNAL`` without internals.
"""

from __future__ import annotations

import contextvars
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, cast

import grpc
import structlog
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from service.authn import Authenticator
from service.domain.auth import Principal
from service.domain.errors import (
    FieldViolation,
    InvalidArgument,
    ResourceExhausted,
    ServiceError,
)
from service.domain.ratelimit import RateLimiter

log = structlog.get_logger(__name__)

_CALLER: contextvars.ContextVar[Principal] = contextvars.ContextVar("caller")


def caller() -> Principal:
    """The authenticated caller of the RPC being served."""
    return _CALLER.get()


Behavior = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]

# Health checks and reflection are infrastructure: open to all, not logged per call.
_PUBLIC_PREFIXES = ("/grpc.health.", "/grpc.reflection.")


def _pack(message: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def error_status(exc: ServiceError, request_id: str) -> status_pb2.Status:
    """The rich status a client receives for a domain error."""
    details = []
    if isinstance(exc, InvalidArgument):
        details.append(
            _pack(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(
                            field=v.field, description=v.description
                        )
                        for v in exc.violations
                    ]
                )
            )
        )
    if isinstance(exc, ResourceExhausted):
        if exc.retry_after is not None:
            delay = duration_pb2.Duration()
            delay.FromTimedelta(timedelta(seconds=max(exc.retry_after, 0.001)))
            details.append(_pack(error_details_pb2.RetryInfo(retry_delay=delay)))
        if exc.quota:
            details.append(
                _pack(
                    error_details_pb2.QuotaFailure(
                        violations=[
                            error_details_pb2.QuotaFailure.Violation(
                                subject=v.field, description=v.description
                            )
                            for v in exc.quota
                        ]
                    )
                )
            )
    details.append(_pack(error_details_pb2.RequestInfo(request_id=request_id)))
    return status_pb2.Status(code=int(exc.code), message=exc.message, details=details)


def _first(metadata: Any, key: str, limit: int = 128) -> str:
    for item_key, value in metadata or ():
        if item_key == key:
            return str(value)[:limit]
    return ""


class RequestInterceptor(grpc.aio.ServerInterceptor):
    """Per call: a request ID in logs and response metadata, authentication, the rate limit,
    and the mapping of errors to rich statuses."""

    def __init__(self, authenticator: Authenticator, limiter: RateLimiter) -> None:
        self._authenticator = authenticator
        self._limiter = limiter

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(_PUBLIC_PREFIXES):
            return handler
        if handler.unary_unary is None:
            # Every API method is unary; any other kind would bypass authentication here,
            # so it is not served at all (UNIMPLEMENTED).
            return None
        metadata = handler_call_details.invocation_metadata
        behavior = cast(Behavior, handler.unary_unary)
        # The request arrives as bytes and is decoded inside the wrapper, so bytes that are
        # not a valid request get INVALID_ARGUMENT with a request ID like any other error.
        return grpc.unary_unary_rpc_method_handler(
            _wrap(behavior, method, metadata, self._admit, handler.request_deserializer),
            request_deserializer=None,
            response_serializer=handler.response_serializer,
        )

    async def _admit(self, metadata: Any) -> Principal:
        principal = await self._authenticator.authenticate(_first(metadata, "authorization", 4096))
        self._limiter.acquire(principal.subject)
        return principal


def _decode(deserializer: Callable[[bytes], Any] | None, raw: Any) -> Any:
    if deserializer is None:
        return raw
    try:
        return deserializer(raw)
    except Exception as exc:  # whatever a generated parser raises for malformed input
        raise InvalidArgument(
            [FieldViolation("request", "is not a valid encoding of the method's request")]
        ) from exc


def _wrap(
    behavior: Behavior,
    method: str,
    metadata: Any,
    admit: Callable[[Any], Awaitable[Principal]],
    deserializer: Callable[[bytes], Any] | None,
) -> Behavior:
    async def wrapper(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        request_id = str(uuid.uuid4())
        client_request_id = _first(metadata, "x-client-request-id")
        trace_id = _first(metadata, "x-client-trace-id") or request_id
        started = time.perf_counter()
        with structlog.contextvars.bound_contextvars(
            request_id=request_id, client_request_id=client_request_id or None, method=method
        ):
            await context.send_initial_metadata(
                (("x-request-id", request_id), ("x-server-trace-id", trace_id))
            )
            code = "OK"
            try:
                principal = await admit(metadata)
                structlog.contextvars.bind_contextvars(subject=principal.subject)
                _CALLER.set(principal)
                return await behavior(_decode(deserializer, request), context)
            except ServiceError as exc:
                code = exc.code.name
                status = error_status(exc, request_id)
                await context.abort_with_status(rpc_status.to_status(status))
            except grpc.aio.AbortError:
                raise
            except Exception:
                code = "INTERNAL"
                log.exception("rpc.failed")
                internal = status_pb2.Status(
                    code=grpc.StatusCode.INTERNAL.value[0],
                    message=f"Internal error; request ID {request_id}",
                    details=[_pack(error_details_pb2.RequestInfo(request_id=request_id))],
                )
                await context.abort_with_status(rpc_status.to_status(internal))
            finally:
                log.info(
                    "rpc.done",
                    code=code,
                    ms=round((time.perf_counter() - started) * 1000, 2),
                )

    return wrapper
