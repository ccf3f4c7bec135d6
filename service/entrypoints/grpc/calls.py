"""What every API call goes through: a request ID, authentication, the rate limit, decoding,
the access log, and the mapping of errors to rich statuses.

Each method handler is wrapped once, when the services are added to the server, rather than by
a grpc.aio interceptor: an interceptor runs a coroutine and builds a new handler on every call,
and this is the code that runs for every call of a high-volume API.

A ``ServiceError`` becomes a ``google.rpc.Status`` with its code, its message, field violations
as ``BadRequest`` and the request ID as ``RequestInfo``. Anything else is logged with its
traceback and answered ``INTERNAL`` without internals.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from datetime import timedelta
from typing import Any, cast

import grpc
import structlog
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from service.domain.auth import Principal, Role
from service.domain.errors import (
    FieldViolation,
    InvalidArgument,
    ResourceExhausted,
    ServiceError,
    Unavailable,
)
from service.entrypoints.grpc.convert import EncodedOperation, pack
from service.entrypoints.grpc.traced import traced
from service.runtime import tracing
from service.runtime.metrics import call_metrics
from service.runtime.ratelimit import RateLimiter
from service.usecases.auth import Authenticator

log = structlog.get_logger(__name__)

_CALLER: contextvars.ContextVar[Principal] = contextvars.ContextVar("caller")

# Methods that change nothing. Their successful calls are logged at DEBUG: pollers call them
# at high volume, and a line per poll would cost more than the poll. Failed calls and every
# call that changes something are logged at INFO.
READ_METHODS = frozenset({"Get", "List", "ListOperations", "GetOperation", "WaitOperation"})
# The only methods answered without a token, by full name. Endpoint discovery and the IAM
# token exchange: the official SDKs call them before they have credentials, and the public API
# answers them unauthenticated too. tests/e2e/test_api_endpoints.py calls every other method
# without one.
PUBLIC_METHODS = frozenset(
    {
        "/yandex.cloud.endpoint.ApiEndpointService/Get",
        "/yandex.cloud.endpoint.ApiEndpointService/List",
        "/yandex.cloud.iam.v1.IamTokenService/Create",
    }
)
# The caller of a public method: a viewer of no folder, so it could read nothing even if a
# public method asked. Public calls share its rate-limit bucket.
ANONYMOUS = Principal(subject="(anonymous)", role=Role.VIEWER, folders=frozenset())
# The longest authorization header read; anything longer is not a token of ours.
MAX_AUTHORIZATION_LENGTH = 4096
MAX_CLIENT_ID_LENGTH = 128
# The retry advice of an UNAVAILABLE answer (a dependency down, a database failing over):
# google.rpc.RetryInfo, and REST's Retry-After. Clients back off from there.
UNAVAILABLE_RETRY_SECONDS = 1.0

Behavior = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]
Serializer = Callable[[Any], bytes]
AddServicer = Callable[[Any, Any], None]
_Metadata = tuple[tuple[str, str], ...]


def caller() -> Principal:
    """The authenticated caller of the RPC being served."""
    return _CALLER.get()


def _retry_info(seconds: float) -> Any:
    delay = duration_pb2.Duration()
    delay.FromTimedelta(timedelta(seconds=max(seconds, 0.001)))
    return pack(error_details_pb2.RetryInfo(retry_delay=delay))


def error_status(exc: ServiceError, request_id: str) -> status_pb2.Status:
    """The rich status a client receives for a domain error."""
    details = []
    if isinstance(exc, InvalidArgument):
        details.append(
            pack(
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
    if isinstance(exc, Unavailable):
        details.append(_retry_info(UNAVAILABLE_RETRY_SECONDS))
    if isinstance(exc, ResourceExhausted):
        if exc.retry_after is not None:
            details.append(_retry_info(exc.retry_after))
        if exc.quota:
            details.append(
                pack(
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
    details.append(pack(error_details_pb2.RequestInfo(request_id=request_id)))
    return status_pb2.Status(code=int(exc.code), message=exc.message, details=details)


def _decode(deserializer: Callable[[bytes], Any] | None, raw: Any) -> Any:
    if deserializer is None:
        return raw
    try:
        return deserializer(raw)
    except ServiceError:
        raise  # a decoder that names the offending field itself (the REST transcoder)
    except Exception as exc:  # whatever a generated parser raises for malformed input
        raise InvalidArgument(
            [FieldViolation("request", "is not a valid encoding of the method's request")]
        ) from exc


def passing_encoded(serializer: Serializer | None) -> Serializer | None:
    """The method's serializer, except that an operation already encoded is sent as it is."""
    if serializer is None:
        return None
    encode = serializer

    def serialize(response: Any) -> bytes:
        if isinstance(response, EncodedOperation):
            return response.wire
        return encode(response)

    return serialize


def _not_started() -> None:
    """Counting calls is off (``METRICS_LISTEN`` empty)."""


def _not_handled(code: str, seconds: float) -> None:
    """Counting calls is off (``METRICS_LISTEN`` empty)."""


class CallHandling:
    """Wraps the API's method handlers in what every call goes through.

    ``metered``: each call is counted in the gRPC server metrics (``runtime/metrics``). With
    tracing on (at start-up), each handler runs in a server span (``traced``).
    """

    def __init__(
        self, authenticator: Authenticator, limiter: RateLimiter, *, metered: bool = False
    ) -> None:
        self._authenticator = authenticator
        self._limiter = limiter
        self._metered = metered

    def add_services(
        self, server: grpc.aio.Server, services: Iterable[tuple[AddServicer, object]]
    ) -> None:
        """Add each servicer with its generated ``add_*_to_server``, every method wrapped."""
        for add, servicer in services:
            captured = _Captured()
            add(servicer, captured)
            for service, handlers in captured.services.items():
                wrapped = {
                    name: self.wrap(f"/{service}/{name}", handler)
                    for name, handler in handlers.items()
                }
                server.add_generic_rpc_handlers(
                    (grpc.method_handlers_generic_handler(service, wrapped),)
                )
                server.add_registered_method_handlers(service, wrapped)
            if not captured.services:
                # Code generated before registered methods existed registers generic
                # handlers only: their handlers are wrapped when first asked for.
                server.add_generic_rpc_handlers(
                    [_WrappedGeneric(generic, self.wrap) for generic in captured.generic]
                )

    def wrap(self, method: str, handler: grpc.RpcMethodHandler[Any, Any]) -> Any:
        if handler.unary_unary is None:
            # Every API method is unary; any other kind would need its own frame.
            raise ValueError(f"{method} is not a unary method")
        behavior = cast(Behavior, handler.unary_unary)
        if tracing.enabled():
            behavior = traced(method, behavior)
        # The metric children of this method, looked up once here rather than on each call.
        count_started, count_handled = (
            call_metrics(method) if self._metered else (_not_started, _not_handled)
        )
        deserializer = handler.request_deserializer
        authenticate = _anonymous if method in PUBLIC_METHODS else self._authenticator.authenticate
        acquire = self._limiter.acquire
        ok_level = logging.DEBUG if method.rsplit("/", 1)[-1] in READ_METHODS else logging.INFO
        bind = structlog.contextvars.bind_contextvars

        async def call(raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            request_id = str(uuid.uuid4())
            started = time.perf_counter()
            count_started()
            authorization = client_request_id = trace_id = ""
            # Keys without the -bin suffix carry text.
            for key, value in cast(_Metadata, context.invocation_metadata() or ()):
                if key == "authorization":
                    authorization = value
                elif key == "x-client-request-id":
                    client_request_id = value[:MAX_CLIENT_ID_LENGTH]
                elif key == "x-client-trace-id":
                    trace_id = value[:MAX_CLIENT_ID_LENGTH]
            # Each call runs in a task of its own, so what is bound here stays with this call.
            bind(request_id=request_id, client_request_id=client_request_id or None, method=method)
            await context.send_initial_metadata(
                (("x-request-id", request_id), ("x-server-trace-id", trace_id or request_id))
            )
            code = "OK"
            level = ok_level
            try:
                principal = await authenticate(authorization[:MAX_AUTHORIZATION_LENGTH])
                bind(subject=principal.subject)
                acquire(principal.subject)
                _CALLER.set(principal)
                return await behavior(_decode(deserializer, raw), context)
            except ServiceError as exc:
                code, level = exc.code.name, logging.INFO
                await context.abort_with_status(rpc_status.to_status(error_status(exc, request_id)))
            except grpc.aio.AbortError:
                raise
            except asyncio.CancelledError:
                code, level = "CANCELLED", logging.INFO  # the client went away, or the deadline
                raise
            except Exception:
                code, level = "INTERNAL", logging.INFO
                log.exception("rpc.failed")
                internal = status_pb2.Status(
                    code=grpc.StatusCode.INTERNAL.value[0],
                    message=f"Internal error; request ID {request_id}",
                    details=[pack(error_details_pb2.RequestInfo(request_id=request_id))],
                )
                await context.abort_with_status(rpc_status.to_status(internal))
            finally:
                seconds = time.perf_counter() - started
                count_handled(code, seconds)
                log.log(level, "rpc.done", code=code, ms=round(seconds * 1e3, 2))

        return grpc.unary_unary_rpc_method_handler(
            call,
            request_deserializer=None,  # decoded in ``call``: bad bytes get a precise error
            response_serializer=passing_encoded(handler.response_serializer),
        )


async def _anonymous(authorization: str) -> Principal:
    """Authentication of a public method: any ``authorization`` sent is ignored."""
    return ANONYMOUS


class _Captured:
    """Stands in for the server while a generated ``add_*_to_server`` registers handlers."""

    def __init__(self) -> None:
        self.services: dict[str, dict[str, grpc.RpcMethodHandler[Any, Any]]] = {}
        self.generic: list[grpc.GenericRpcHandler] = []

    def add_generic_rpc_handlers(self, handlers: Iterable[grpc.GenericRpcHandler]) -> None:
        self.generic.extend(handlers)

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler[Any, Any]]
    ) -> None:
        self.services[service] = handlers


class _WrappedGeneric(grpc.GenericRpcHandler):
    """A generic handler whose method handlers are wrapped, each once."""

    def __init__(
        self,
        inner: grpc.GenericRpcHandler,
        wrap: Callable[[str, grpc.RpcMethodHandler[Any, Any]], Any],
    ) -> None:
        self._inner = inner
        self._wrap = wrap
        self._wrapped: dict[str, Any] = {}

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Any:
        method = handler_call_details.method
        wrapped = self._wrapped.get(method)
        if wrapped is None:
            handler = self._inner.service(handler_call_details)
            if handler is None:
                return None
            wrapped = self._wrapped[method] = self._wrap(method, handler)
        return wrapped
