"""What operators and tools see: server reflection, health, JSON logs with IDs, error details."""

from __future__ import annotations

import asyncio
import json
import uuid

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from grpc_status import rpc_status

from service.domain.ids import IMAGE_PREFIX, OPERATION_PREFIX, new_id
from tests.e2e.client import create_ready_image, folder, wait_done
from tests.support import ServiceProcess, eventually
from yandex.cloud.baremetal.v1alpha import image_service_pb2, image_service_pb2_grpc
from yandex.cloud.operation import operation_service_pb2, operation_service_pb2_grpc

IMAGE_SERVICE = "yandex.cloud.baremetal.v1alpha.ImageService"
OPERATION_SERVICE = "yandex.cloud.operation.OperationService"
HEALTH_SERVICE = "grpc.health.v1.Health"


async def reflect(
    api: ServiceProcess, request: reflection_pb2.ServerReflectionRequest
) -> reflection_pb2.ServerReflectionResponse:
    async with grpc.aio.insecure_channel(api.address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = [response async for response in stub.ServerReflectionInfo(iter([request]))]
    assert len(responses) == 1, responses
    return responses[0]


async def test_reflection_lists_the_services(api: ServiceProcess):
    response = await reflect(api, reflection_pb2.ServerReflectionRequest(list_services=""))
    assert response.WhichOneof("message_response") == "list_services_response", response
    names = {service.name for service in response.list_services_response.service}
    assert {IMAGE_SERVICE, OPERATION_SERVICE, HEALTH_SERVICE} <= names


async def test_reflection_returns_the_file_declaring_the_image_service(api: ServiceProcess):
    response = await reflect(
        api, reflection_pb2.ServerReflectionRequest(file_containing_symbol=IMAGE_SERVICE)
    )
    assert response.WhichOneof("message_response") == "file_descriptor_response", response
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        for raw in response.file_descriptor_response.file_descriptor_proto
    ]
    declaring = [
        f
        for f in files
        if f.package == "yandex.cloud.baremetal.v1alpha"
        and any(s.name == "ImageService" for s in f.service)
    ]
    assert declaring, [f.name for f in files]
    (service,) = [s for s in declaring[0].service if s.name == "ImageService"]
    assert {m.name for m in service.method} >= {"Get", "List", "Create", "Update", "Delete"}


async def test_reflection_resolves_every_type_of_the_services(api: ServiceProcess):
    """What grpcurl does: build the services, their messages and dependencies by reflection."""

    def resolve() -> dict[str, list[str]]:
        with grpc.insecure_channel(api.address) as channel:
            pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
            out = {}
            for name in (IMAGE_SERVICE, OPERATION_SERVICE):
                service = pool.FindServiceByName(name)
                out[name] = [
                    f"{m.name}({m.input_type.full_name}) -> {m.output_type.full_name}"
                    for m in service.methods
                ]
            return out

    methods = await asyncio.to_thread(resolve)
    assert (
        "Create(yandex.cloud.baremetal.v1alpha.CreateImageRequest) -> "
        "yandex.cloud.operation.Operation" in methods[IMAGE_SERVICE]
    )
    assert (
        "Get(yandex.cloud.operation.GetOperationRequest) -> yandex.cloud.operation.Operation"
        in methods[OPERATION_SERVICE]
    )


@pytest.mark.parametrize("service", ["", IMAGE_SERVICE, OPERATION_SERVICE])
async def test_health_reports_serving(api: ServiceProcess, service: str):
    async with grpc.aio.insecure_channel(api.address) as channel:
        response = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service)
        )
    assert response.status == health_pb2.HealthCheckResponse.SERVING


async def test_health_of_an_unknown_service_is_not_found(api: ServiceProcess):
    async with grpc.aio.insecure_channel(api.address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="no.such.Service")
            )
    assert failed.value.code() == grpc.StatusCode.NOT_FOUND


def metadata_value(metadata: grpc.aio.Metadata | None, key: str) -> str:
    assert metadata is not None
    values = [str(v) for k, v in metadata if k == key]
    assert len(values) == 1, (key, list(metadata))
    return values[0]


def complete_lines(process: ServiceProcess) -> list[str]:
    """The finished lines of a log file (a line being written has no newline yet)."""
    return process.log_path.read_text(errors="replace").split("\n")[:-1]


async def test_logs_are_json_lines_that_carry_the_request_and_operation_ids(
    images, operations, blobs, api: ServiceProcess, workers: list[ServiceProcess]
):
    image = await create_ready_image(images, operations, blobs.url("/blob/1000"), folder())
    client_request_id = str(uuid.uuid4())
    call = images.Update(
        image_service_pb2.UpdateImageRequest(image_id=image.id, description="observed"),
        metadata=(("x-client-request-id", client_request_id),),
    )
    operation = await call
    initial = await call.initial_metadata()
    request_id = metadata_value(initial, "x-request-id")
    assert metadata_value(initial, "x-server-trace-id")
    uuid.UUID(request_id)
    done = await wait_done(operations, operation.id)
    assert done.WhichOneof("result") == "response", done

    async def api_logged() -> bool:
        # One line per call that changes something, naming the operation it started.
        return bool(
            api.logged(
                "rpc.done",
                request_id=request_id,
                client_request_id=client_request_id,
                method=f"/{IMAGE_SERVICE}/Update",
                code="OK",
                operation_id=operation.id,
            )
        )

    async def worker_logged() -> bool:
        return any(w.logged("operation.done", operation_id=operation.id) for w in workers)

    await eventually(api_logged, timeout=10, what="the API to log the Update with its IDs")
    await eventually(worker_logged, timeout=10, what="a worker to log the operation done")

    for process in (api, *workers):
        lines = complete_lines(process)
        assert lines, process.log_path
        for number, raw in enumerate(lines, 1):
            try:
                parsed = json.loads(raw)
            except ValueError:
                pytest.fail(f"{process.log_path}:{number} is not JSON: {raw!r}")
            assert isinstance(parsed, dict), f"{process.log_path}:{number}: {raw!r}"


ERROR_CALLS = {
    "image not found": (
        lambda channel: image_service_pb2_grpc.ImageServiceStub(channel).Get(
            image_service_pb2.GetImageRequest(image_id=new_id(IMAGE_PREFIX))
        ),
        grpc.StatusCode.NOT_FOUND,
    ),
    "invalid image id": (
        lambda channel: image_service_pb2_grpc.ImageServiceStub(channel).Get(
            image_service_pb2.GetImageRequest(image_id="not an id")
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    "operation not found": (
        lambda channel: operation_service_pb2_grpc.OperationServiceStub(channel).Get(
            operation_service_pb2.GetOperationRequest(operation_id=new_id(OPERATION_PREFIX))
        ),
        grpc.StatusCode.NOT_FOUND,
    ),
}


@pytest.mark.parametrize("case", list(ERROR_CALLS))
async def test_an_error_carries_the_request_id_of_its_call(
    channel: grpc.aio.Channel, api: ServiceProcess, case: str
):
    start_call, code = ERROR_CALLS[case]
    call = start_call(channel)
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await call
    assert failed.value.code() == code
    request_id = metadata_value(await call.initial_metadata(), "x-request-id")

    status = rpc_status.from_call(failed.value)
    assert status is not None, "no google.rpc.Status in the trailers"
    assert status.code == code.value[0]
    infos = []
    for detail in status.details:
        if detail.Is(error_details_pb2.RequestInfo.DESCRIPTOR):
            info = error_details_pb2.RequestInfo()
            detail.Unpack(info)
            infos.append(info)
    assert [info.request_id for info in infos] == [request_id]

    async def logged() -> bool:
        return bool(api.logged("rpc.done", request_id=request_id, code=code.name))

    await eventually(logged, timeout=10, what="the failed call's rpc.done log line")


async def test_a_successful_read_is_not_logged_at_info_but_a_change_is(
    images, operations, blobs, api: ServiceProcess
):
    """Pollers read at high volume: their successful calls are DEBUG lines, while every call
    that changes something (and every failed call, above) is an INFO line."""
    image = await create_ready_image(images, operations, blobs.url("/blob/100"), folder())
    update = images.Update(
        image_service_pb2.UpdateImageRequest(image_id=image.id, description="logged")
    )
    operation = await update
    update_id = metadata_value(await update.initial_metadata(), "x-request-id")
    get = operations.Get(operation_service_pb2.GetOperationRequest(operation_id=operation.id))
    await get
    get_id = metadata_value(await get.initial_metadata(), "x-request-id")

    async def update_logged() -> bool:
        return bool(api.logged("rpc.done", request_id=update_id, code="OK"))

    await eventually(update_logged, timeout=10, what="the Update's rpc.done line")
    # The Get finished before the Update's line was read: had it been logged, it is there now.
    assert not api.logged("rpc.done", request_id=get_id)
