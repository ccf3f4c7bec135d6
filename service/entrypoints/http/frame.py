"""A REST call through the gRPC call frame, not beside it.

The call frame (``entrypoints/grpc/calls.py``, ``CallHandling.wrap``) is what every gRPC call
goes through: the request ID, authentication, the rate limit, decoding, the access log, the
mapping of errors to a rich ``google.rpc.Status``. A REST call goes through the very same
frame around the very same servicer method: ``HttpCallContext`` answers what the frame and the
servicers ask of a ``grpc.aio.ServicerContext`` from the HTTP request (a few of its headers as
invocation metadata), and keeps what they send back (the initial metadata, the status of an
abort). The frame's decoder is the REST transcoder, so a request is read only after its
caller is authenticated, exactly as over gRPC.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NoReturn, cast

import grpc
from google.rpc import status_pb2

from service.entrypoints.grpc.calls import CallHandling

# Request headers passed to the frame as invocation metadata (lower case, as gRPC keys are):
# the token, the idempotency key, the client's request and trace IDs, the W3C trace context.
METADATA_HEADERS = (
    "authorization",
    "idempotency-key",
    "x-client-request-id",
    "x-client-trace-id",
    "traceparent",
    "tracestate",
)
_DETAILS_KEY = "grpc-status-details-bin"

Metadata = tuple[tuple[str, str], ...]
Behavior = Callable[[Any, Any], Awaitable[Any]]
Decode = Callable[[Any], Any]
FramedCall = Callable[[Any, "HttpCallContext"], Awaitable[Any]]


class CallAborted(grpc.aio.AbortError):
    """The frame (or a servicer) ended the call with ``status``."""

    def __init__(self, status: status_pb2.Status) -> None:
        super().__init__(status.message)
        self.status = status


class HttpCallContext:
    """The part of ``grpc.aio.ServicerContext`` the frame and the servicers use, for one HTTP
    request: metadata in, initial metadata and the aborting status out. An HTTP request has
    no deadline (``time_remaining`` is ``None``)."""

    __slots__ = ("_metadata", "_peer", "sent")

    def __init__(self, metadata: Metadata, peer: str) -> None:
        self._metadata = metadata
        self._peer = peer
        self.sent: Metadata = ()

    def invocation_metadata(self) -> Metadata:
        return self._metadata

    async def send_initial_metadata(self, metadata: Sequence[tuple[str, str]]) -> None:
        self.sent = tuple(metadata)

    async def abort_with_status(self, status: grpc.Status) -> NoReturn:
        raise CallAborted(_rich_status(status))

    async def abort(self, code: grpc.StatusCode, details: str = "", *_: Any) -> NoReturn:
        raise CallAborted(status_pb2.Status(code=code.value[0], message=details))

    def time_remaining(self) -> float | None:
        return None

    def peer(self) -> str:
        return self._peer

    def set_trailing_metadata(self, metadata: Sequence[tuple[str, str]]) -> None:
        """Trailing metadata has no place in a REST answer; accepted and dropped."""


def _rich_status(status: grpc.Status) -> status_pb2.Status:
    """The ``google.rpc.Status`` the frame put in the trailing metadata (``grpc_status``)."""
    for key, value in status.trailing_metadata or ():
        if key == _DETAILS_KEY and isinstance(value, bytes):
            return status_pb2.Status.FromString(value)
    return status_pb2.Status(code=status.code.value[0], message=status.details or "")


def metadata_of(headers: Any) -> Metadata:
    """The invocation metadata of a request's headers (a multidict, case-insensitive)."""
    found = []
    for name in METADATA_HEADERS:
        value = headers.get(name)
        if value is not None:
            found.append((name, value))
    return tuple(found)


def framed(calls: CallHandling, method: str, behavior: Behavior, decode: Decode) -> FramedCall:
    """``behavior`` (``/package.Service/Method``) in the call frame, its request read from an
    HTTP request by ``decode`` (which raises ``InvalidArgument`` naming the field)."""
    handler: grpc.RpcMethodHandler[Any, Any] = grpc.unary_unary_rpc_method_handler(
        behavior, request_deserializer=decode
    )
    return cast(FramedCall, calls.wrap(method, handler).unary_unary)
