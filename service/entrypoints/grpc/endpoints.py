"""Endpoint discovery: ``yandex.cloud.endpoint.ApiEndpointService``.

Answered without a token (``calls.PUBLIC_METHODS``): the official SDKs and the CLI call it
before they have credentials, as they do against the public API.
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc

from service.domain.endpoints import ApiEndpoint, find_endpoint
from yandex.cloud.endpoint import (
    api_endpoint_pb2,
    api_endpoint_service_pb2,
    api_endpoint_service_pb2_grpc,
)

Context = grpc.aio.ServicerContext[object, object]


def endpoint_to_proto(endpoint: ApiEndpoint) -> api_endpoint_pb2.ApiEndpoint:
    return api_endpoint_pb2.ApiEndpoint(id=endpoint.id, address=endpoint.address)


class ApiEndpointService(api_endpoint_service_pb2_grpc.ApiEndpointServiceServicer):
    """Answers from the fixed list of endpoints it is given; ``List`` has one page."""

    def __init__(self, endpoints: Iterable[ApiEndpoint]) -> None:
        self._endpoints = tuple(endpoints)

    async def Get(
        self, request: api_endpoint_service_pb2.GetApiEndpointRequest, context: Context
    ) -> api_endpoint_pb2.ApiEndpoint:
        return endpoint_to_proto(find_endpoint(self._endpoints, request.api_endpoint_id))

    async def List(
        self, request: api_endpoint_service_pb2.ListApiEndpointsRequest, context: Context
    ) -> api_endpoint_service_pb2.ListApiEndpointsResponse:
        # page_size and page_token are deprecated in the public proto: every endpoint fits on
        # one page, so they are ignored and next_page_token stays empty.
        return api_endpoint_service_pb2.ListApiEndpointsResponse(
            endpoints=[endpoint_to_proto(endpoint) for endpoint in self._endpoints]
        )
