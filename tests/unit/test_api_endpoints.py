"""Endpoint discovery: the address announced, the lookups, and the frame letting it in
without a token while every other method still needs one."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from pydantic import ValidationError

from service.domain.endpoints import (
    SERVICE_IDS,
    ApiEndpoint,
    announced_endpoints,
    check_public_endpoint,
    find_endpoint,
    public_address,
    split_host_port,
)
from service.domain.errors import InvalidArgument, NotFound
from service.entrypoints.grpc.calls import PUBLIC_METHODS, CallHandling
from service.entrypoints.grpc.endpoints import ApiEndpointService
from service.runtime.ratelimit import RateLimiter
from service.runtime.settings import Settings
from service.usecases.auth import Authenticator
from tests.unit.fakes import FakeStore
from yandex.cloud.endpoint import (
    api_endpoint_pb2,
    api_endpoint_service_pb2,
    api_endpoint_service_pb2_grpc,
)

ENDPOINT_SERVICE = "yandex.cloud.endpoint.ApiEndpointService"

# --- the address announced ------------------------------------------------------------------


def test_a_configured_public_endpoint_is_announced_as_it_is():
    assert public_address("images.example.com:443", "0.0.0.0:50051", 50051) == (
        "images.example.com:443"
    )


def test_unset_it_is_the_listen_host_with_the_port_actually_bound():
    assert public_address("", "127.0.0.1:0", 41234) == "127.0.0.1:41234"
    assert public_address("", "api.internal:50051", 50051) == "api.internal:50051"
    assert public_address("", "[::1]:0", 41234) == "[::1]:41234"


@pytest.mark.parametrize("listen", ["0.0.0.0:50051", "[::]:50051", ":50051", "[::0]:50051"])
def test_unset_an_unspecified_listen_host_is_announced_as_localhost(listen: str):
    assert public_address("", listen, 50051) == "localhost:50051"


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("images.example.com", "not host:port"),
        (":443", "not host:port"),
        ("images.example.com:https", "port must be a number"),
        ("images.example.com:70000", "port must be a number"),
        ("::1:443", "IPv6 address in brackets"),
        ("images.example.com:0", "cannot dial port 0"),
        ("0.0.0.0:50051", "unspecified address"),
        ("[::]:50051", "unspecified address"),
    ],
)
def test_a_public_endpoint_no_client_could_dial_is_refused(text: str, why: str):
    with pytest.raises(ValueError, match=why):
        check_public_endpoint(text)


def test_an_ipv6_public_endpoint_in_brackets_is_accepted():
    check_public_endpoint("[2001:db8::1]:443")
    assert split_host_port("[2001:db8::1]:443") == ("[2001:db8::1]", 443)


def test_settings_refuse_a_bad_public_endpoint_at_start():
    with pytest.raises(ValidationError, match="not host:port"):
        Settings(public_endpoint="localhost")
    assert Settings(public_endpoint="localhost:50051").public_endpoint == "localhost:50051"
    assert Settings().public_endpoint == ""


# --- lookups --------------------------------------------------------------------------------


def test_every_service_id_is_announced_at_the_one_address():
    endpoints = announced_endpoints("localhost:50051")
    assert {e.id for e in endpoints} == {"baremetal", "endpoint", "iam", "operation"}
    assert {e.address for e in endpoints} == {"localhost:50051"}
    assert len(endpoints) == len(SERVICE_IDS)


def test_an_endpoint_is_found_by_its_id():
    endpoints = announced_endpoints("localhost:50051")
    assert find_endpoint(endpoints, "operation") == ApiEndpoint("operation", "localhost:50051")


def test_an_unknown_endpoint_is_not_found_and_a_missing_id_is_invalid():
    endpoints = announced_endpoints("localhost:50051")
    with pytest.raises(NotFound, match="Api endpoint compute not found"):
        find_endpoint(endpoints, "compute")
    with pytest.raises(InvalidArgument) as missing:
        find_endpoint(endpoints, "")
    assert [v.field for v in missing.value.violations] == ["api_endpoint_id"]


async def test_the_servicer_answers_get_and_lists_everything_on_one_page():
    service = ApiEndpointService(announced_endpoints("localhost:50051"))
    got = await service.Get(
        api_endpoint_service_pb2.GetApiEndpointRequest(api_endpoint_id="baremetal"), None
    )
    assert got == api_endpoint_pb2.ApiEndpoint(id="baremetal", address="localhost:50051")
    listed = await service.List(
        api_endpoint_service_pb2.ListApiEndpointsRequest(page_size=1, page_token="ignored"), None
    )
    assert [e.id for e in listed.endpoints] == list(SERVICE_IDS)
    assert listed.next_page_token == ""


# --- the frame: public methods and the rest --------------------------------------------------


class FakeContext:
    """What the frame uses of a ``grpc.aio.ServicerContext``."""

    def __init__(self, metadata: tuple[tuple[str, str], ...] = ()) -> None:
        self.metadata = metadata
        self.status: grpc.Status | None = None

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self.metadata

    async def send_initial_metadata(self, metadata: Any) -> None:
        pass

    async def abort_with_status(self, status: grpc.Status) -> None:
        self.status = status
        raise grpc.aio.AbortError()


class FakeServer:
    """Collects the wrapped handlers ``CallHandling.add_services`` registers."""

    def __init__(self) -> None:
        self.handlers: dict[str, Any] = {}

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        pass

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        self.handlers.update({f"/{service}/{name}": h for name, h in handlers.items()})


def framed_endpoint_service() -> tuple[FakeServer, FakeStore]:
    store = FakeStore()
    server = FakeServer()
    calls = CallHandling(Authenticator(store, 5.0), RateLimiter(500, 1000))
    calls.add_services(
        server,  # type: ignore[arg-type]
        (
            (
                api_endpoint_service_pb2_grpc.add_ApiEndpointServiceServicer_to_server,
                ApiEndpointService(announced_endpoints("localhost:50051")),
            ),
        ),
    )
    return server, store


def test_only_endpoint_discovery_and_the_token_exchange_are_public():
    assert {
        f"/{ENDPOINT_SERVICE}/Get",
        f"/{ENDPOINT_SERVICE}/List",
        "/yandex.cloud.iam.v1.IamTokenService/Create",
    } == PUBLIC_METHODS


async def test_a_public_method_answers_without_a_token_and_never_reads_one():
    server, store = framed_endpoint_service()
    request = api_endpoint_service_pb2.ListApiEndpointsRequest().SerializeToString()
    for metadata in ((), (("authorization", "Bearer not-a-token"),)):
        context = FakeContext(metadata)
        answer = await server.handlers[f"/{ENDPOINT_SERVICE}/List"].unary_unary(request, context)
        assert context.status is None
        assert {e.id for e in answer.endpoints} == set(SERVICE_IDS)
    assert store.calls["find_token"] == 0


async def test_the_same_servicer_under_another_name_still_needs_a_token():
    """Public is decided by the full method name alone, never by the servicer or the
    short name (ImageService.List and .Get are not public)."""
    store = FakeStore()
    calls = CallHandling(Authenticator(store, 5.0), RateLimiter(500, 1000))
    handler = grpc.unary_unary_rpc_method_handler(
        ApiEndpointService(announced_endpoints("localhost:50051")).List,
        request_deserializer=api_endpoint_service_pb2.ListApiEndpointsRequest.FromString,
        response_serializer=api_endpoint_service_pb2.ListApiEndpointsResponse.SerializeToString,
    )
    for method in (
        "/yandex.cloud.baremetal.v1alpha.ImageService/List",
        "/yandex.cloud.operation.OperationService/Get",
    ):
        wrapped = calls.wrap(method, handler)
        context = FakeContext()
        with pytest.raises(grpc.aio.AbortError):
            await wrapped.unary_unary(b"", context)
        assert context.status is not None
        assert context.status.code == grpc.StatusCode.UNAUTHENTICATED, method
