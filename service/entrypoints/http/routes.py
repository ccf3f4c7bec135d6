"""Every REST route of the API process, each a call of the same servicer method, in the same
call frame, as over gRPC.

- one route per ``google.api.http`` rule of ``ImageService``, ``OperationService`` and
  ``IamTokenService`` (``POST /iam/v1/tokens``), read from their descriptors
  (``transcoding.bindings``);
- ``GET /operations/{operation_id}:wait?timeout=30s``: ``WaitOperation`` for REST clients,
  answering the operation as ``GET /operations/{operation_id}`` does (the public protos have
  no rule for waiting; this one is declared here, as an ``HttpRule`` like theirs);
- the operations console's read, under ``/console/api/``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from google.api import http_pb2
from google.longrunning import operations_pb2
from google.protobuf.descriptor import ServiceDescriptor

from service.bootstrap import ApiUseCases
from service.entrypoints.grpc.calls import CallHandling
from service.entrypoints.grpc.convert import EncodedOperation, operation_to_proto
from service.entrypoints.grpc.iam import IamTokenService
from service.entrypoints.grpc.servicers import (
    Context,
    ImageService,
    LongRunningOperations,
    OperationService,
)
from service.entrypoints.http import console_api
from service.entrypoints.http.frame import FramedCall, framed
from service.entrypoints.http.paths import PathTemplate, Routes
from service.entrypoints.http.transcoding import Binding, bindings
from service.runtime.lru import Lru
from service.usecases.operations import Operations
from yandex.cloud.baremetal.v1alpha import image_service_pb2
from yandex.cloud.iam.v1 import iam_token_service_pb2
from yandex.cloud.operation import operation_pb2, operation_service_pb2

# Its path binds WaitOperationRequest.name: a google.longrunning name, here the operation's ID.
WAIT_RULE = http_pb2.HttpRule(get="/operations/{name}:wait")
# The frame's name of the wait: WaitOperation, as its access log and traces call it.
WAIT_METHOD = "/google.longrunning.Operations/WaitOperation"


@dataclass(frozen=True)
class RestMethod:
    """A route's call (in the frame, taking an ``HttpInput``) and the JSON of its answer."""

    call: FramedCall
    encode: Callable[[Any], bytes]
    route: str = ""  # its path template, as the metrics name it
    # A field path of the request as a REST caller names it (its JSON name), for errors.
    json_field_path: Callable[[str], str] = str


class OperationWaiting:
    """``WaitOperation`` over REST: the same servicer's wait (its timeout rule, at most
    ``MAX_WAIT_SECONDS``), answered as ``OperationService.Get`` answers."""

    def __init__(self, operations: Operations[EncodedOperation]) -> None:
        self._waiting = LongRunningOperations(operations)

    async def Wait(
        self, request: operations_pb2.WaitOperationRequest, context: Context
    ) -> operation_pb2.Operation:
        return operation_to_proto(await self._waiting.waited(request, context))


def build_routes(
    api: ApiUseCases[EncodedOperation], calls: CallHandling, json_cache_size: int
) -> Routes[RestMethod]:
    """The routes of the REST API and of the console's read; the JSON of up to
    ``json_cache_size`` finished operations is kept (``kept_json``)."""
    return Routes(_entries(api, calls, json_cache_size))


def kept_json(encode: Callable[[Any], bytes], capacity: int) -> Callable[[Any], bytes]:
    """``encode``, remembering the JSON of answers that come already encoded.

    Those are finished operations (``EncodedOperation``), which never change: the use case
    keeps each encoded once and hands out the same bytes on every poll, so their hash is
    computed once and a poll's JSON costs a dictionary lookup instead of a pass of
    ``json_format``.
    """
    kept: Lru[bytes, bytes] = Lru(capacity)

    def encode_kept(answer: Any) -> bytes:
        if not isinstance(answer, EncodedOperation):
            return encode(answer)
        found = kept.get(answer.wire)
        if found is None:
            found = encode(answer)
            kept.put(answer.wire, found)
        return found

    return encode_kept


# The services served over REST, each by its google.api.http rules.
REST_SERVICES: tuple[ServiceDescriptor, ...] = (
    image_service_pb2.DESCRIPTOR.services_by_name["ImageService"],
    operation_service_pb2.DESCRIPTOR.services_by_name["OperationService"],
    iam_token_service_pb2.DESCRIPTOR.services_by_name["IamTokenService"],
)


def wait_binding() -> Binding:
    return Binding.from_rule(
        WAIT_METHOD, WAIT_RULE, operations_pb2.WaitOperationRequest, operation_pb2.Operation
    )


# Methods the public protos bind but this server does not implement (gRPC answers them
# UNIMPLEMENTED): no route, and not in the OpenAPI document.
NOT_SERVED = frozenset(
    {
        "/yandex.cloud.iam.v1.IamTokenService/CreateForServiceAccount",
        "/yandex.cloud.iam.v1.IamTokenService/Revoke",
    }
)


def public_bindings(services: Iterable[ServiceDescriptor] = REST_SERVICES) -> list[Binding]:
    """Every binding of the public REST API (the console's read aside): what the routes serve
    and the OpenAPI document describes."""
    served = [b for s in services for b in bindings(s) if b.method not in NOT_SERVED]
    return [*served, wait_binding()]


def _entries(
    api: ApiUseCases[EncodedOperation], calls: CallHandling, json_cache_size: int
) -> Iterator[tuple[str, PathTemplate, RestMethod]]:
    servicers: dict[str, object] = {
        "yandex.cloud.baremetal.v1alpha.ImageService": ImageService(api.images),
        "yandex.cloud.operation.OperationService": OperationService(api.operations),
        "yandex.cloud.iam.v1.IamTokenService": IamTokenService(api.exchange),
        "google.longrunning.Operations": OperationWaiting(api.operations),
    }
    for binding in public_bindings():
        service, name = binding.method.lstrip("/").rsplit("/", 1)
        behavior = getattr(servicers[service], "Wait" if binding.method == WAIT_METHOD else name)
        method, template, endpoint = _route(calls, binding, behavior)
        if binding.method != WAIT_METHOD:
            endpoint = RestMethod(
                endpoint.call,
                kept_json(endpoint.encode, json_cache_size),
                template.text,
                endpoint.json_field_path,
            )
        yield method, template, endpoint
    recent = console_api.recent_call(calls, api.recent)
    yield (
        "GET",
        console_api.RECENT_TEMPLATE,
        RestMethod(
            recent,
            console_api.encode_recent,
            console_api.RECENT_TEMPLATE.text,
            console_api.json_field_path,
        ),
    )


def _route(
    calls: CallHandling, binding: Binding, behavior: Any
) -> tuple[str, PathTemplate, RestMethod]:
    call = framed(calls, binding.method, behavior, binding.decode)
    return (
        binding.http_method,
        binding.template,
        RestMethod(call, binding.encode, binding.template.text, binding.json_field_path),
    )
