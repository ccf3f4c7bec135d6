"""Endpoint discovery (``ApiEndpointService``) through the real API: answered without a token,
announcing the address clients should dial; every other method still needs a token."""

from __future__ import annotations

import grpc
from google.protobuf import descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from service.domain.endpoints import SERVICE_IDS
from service.entrypoints.api import SERVICE_NAMES
from service.entrypoints.grpc.calls import PUBLIC_METHODS
from tests.e2e.client import rpc_error, violated_fields
from yandex.cloud.endpoint import api_endpoint_service_pb2, api_endpoint_service_pb2_grpc

ENDPOINT_SERVICE = "yandex.cloud.endpoint.ApiEndpointService"


async def test_discovery_lists_every_service_at_the_listen_address_without_a_token(api):
    async with grpc.aio.insecure_channel(api.address) as channel:
        endpoints = api_endpoint_service_pb2_grpc.ApiEndpointServiceStub(channel)
        listed = await endpoints.List(api_endpoint_service_pb2.ListApiEndpointsRequest())
        # PUBLIC_ENDPOINT is unset: GRPC_LISTEN's host with the port bound for ":0".
        assert {(e.id, e.address) for e in listed.endpoints} == {
            (service_id, api.address) for service_id in SERVICE_IDS
        }
        assert listed.next_page_token == ""

        for service_id in ("baremetal", "operation"):
            got = await endpoints.Get(
                api_endpoint_service_pb2.GetApiEndpointRequest(api_endpoint_id=service_id)
            )
            assert (got.id, got.address) == (service_id, api.address)


async def test_discovery_refuses_an_unknown_or_missing_id(api):
    async with grpc.aio.insecure_channel(api.address) as channel:
        endpoints = api_endpoint_service_pb2_grpc.ApiEndpointServiceStub(channel)
        unknown = await rpc_error(
            endpoints.Get(api_endpoint_service_pb2.GetApiEndpointRequest(api_endpoint_id="vpc"))
        )
        assert unknown.code() == grpc.StatusCode.NOT_FOUND
        assert unknown.details() == "Api endpoint vpc not found"
        missing = await rpc_error(endpoints.Get(api_endpoint_service_pb2.GetApiEndpointRequest()))
        assert missing.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert violated_fields(missing) == ["api_endpoint_id"]


async def test_every_other_method_of_every_service_served_needs_a_token(api):
    """Read from the descriptors of the services served, so a method added later is covered."""
    pool = descriptor_pool.Default()
    methods = {
        f"/{name}/{method.name}"
        for name in SERVICE_NAMES
        for method in pool.FindServiceByName(name).methods
    }
    assert methods >= PUBLIC_METHODS
    async with grpc.aio.insecure_channel(api.address) as channel:
        for method in sorted(methods):
            call = channel.unary_unary(method)(b"", timeout=10)  # an empty request, no token
            if method.endswith("ApiEndpointService/List"):
                await call
                continue
            error = await rpc_error(call)
            # Get of no ID is INVALID_ARGUMENT: answered, not refused for want of a token.
            expected = "INVALID_ARGUMENT" if method in PUBLIC_METHODS else "UNAUTHENTICATED"
            assert error.code().name == expected, method
    assert len(methods - PUBLIC_METHODS) >= 11  # ImageService 6, OperationService 2, LRO 3


async def test_discovery_is_in_health_and_reflection(api):
    async with grpc.aio.insecure_channel(api.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        answer = await health.Check(health_pb2.HealthCheckRequest(service=ENDPOINT_SERVICE))
        assert answer.status == health_pb2.HealthCheckResponse.SERVING

        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        responses = [r async for r in reflection.ServerReflectionInfo(iter([request]))]
        names = {s.name for s in responses[0].list_services_response.service}
        assert ENDPOINT_SERVICE in names


async def test_a_configured_public_endpoint_is_announced(processes, own_stack_env):
    env = own_stack_env(PUBLIC_ENDPOINT="images.example.com:443")
    api = await processes.start("service", env, "api-public-endpoint")
    assert api.logged("api.started")[-1]["public_endpoint"] == "images.example.com:443"
    async with grpc.aio.insecure_channel(api.address) as channel:
        endpoints = api_endpoint_service_pb2_grpc.ApiEndpointServiceStub(channel)
        listed = await endpoints.List(api_endpoint_service_pb2.ListApiEndpointsRequest())
    assert {e.address for e in listed.endpoints} == {"images.example.com:443"}
    assert not api.logged("api.public_endpoint_guessed")


async def test_listening_on_every_interface_announces_localhost_and_warns(processes, own_stack_env):
    api = await processes.start("service", own_stack_env(GRPC_LISTEN="0.0.0.0:0"), "api-any")
    expected = f"localhost:{api.port}"
    [warning] = api.logged("api.public_endpoint_guessed")
    assert warning["announced"] == expected
    assert "PUBLIC_ENDPOINT" in warning["hint"]
    async with grpc.aio.insecure_channel(api.address) as channel:
        endpoints = api_endpoint_service_pb2_grpc.ApiEndpointServiceStub(channel)
        listed = await endpoints.List(api_endpoint_service_pb2.ListApiEndpointsRequest())
    assert {e.address for e in listed.endpoints} == {expected}
