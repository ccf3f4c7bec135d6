"""The official Python SDK's own machinery against our stack, over TLS.

Runs under the interpreter of the virtualenv with ``yandexcloud`` (see test_official_sdk.py),
so it imports nothing from this repository. What it uses of the SDK, unchanged:
``yandexcloud.SDK(iam_token=..., endpoint=..., root_certificates=..., retry_policy=...)``
(endpoint discovery through ``ApiEndpointService.List``), ``sdk.client(OperationServiceStub)``,
``sdk.wait_operation_and_get_result`` (its operation waiter), ``RetryPolicy`` and
``OperationError``.

    python official_sdk_client.py --endpoint HOST:PORT --cert PEM --token T --folder F \\
        --uri URL --slow-uri URL --failing-uri URL

Twice it asks the test to make the next request on the wire fail: it prints
``{"drop_next_request": <what>}`` and waits for a line on stdin. The last line of stdout is
a JSON summary; the exit code is 0 when it ran to the end (the test judges the summary).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
import uuid
from typing import Any

RPC_TIMEOUT = 10.0
OPERATION_TIMEOUT = 60.0


def ask_test_to_drop_the_next_request(what: str) -> None:
    print(json.dumps({"drop_next_request": what}), flush=True)
    if not sys.stdin.readline():
        raise SystemExit("the test went away")


def discover_without_token(endpoint: str, cert: bytes) -> dict[str, Any]:
    """``ApiEndpointService`` straight from its generated stub: TLS, no credentials at all."""
    import grpc

    from yandex.cloud.endpoint import api_endpoint_service_pb2 as endpoint_service
    from yandex.cloud.endpoint import api_endpoint_service_pb2_grpc as endpoint_grpc

    credentials = grpc.ssl_channel_credentials(root_certificates=cert)
    with grpc.secure_channel(endpoint, credentials) as channel:
        stub = endpoint_grpc.ApiEndpointServiceStub(channel)
        listed = stub.List(endpoint_service.ListApiEndpointsRequest(), timeout=RPC_TIMEOUT)
        baremetal = stub.Get(
            endpoint_service.GetApiEndpointRequest(api_endpoint_id="baremetal"),
            timeout=RPC_TIMEOUT,
        )
    return {
        "listed": {e.id: e.address for e in listed.endpoints},
        "baremetal": baremetal.address,
    }


def image_service_channel(address: str, cert: bytes, token: str) -> Any:
    """What the README shows for ImageService, which yandexcloud 0.413 cannot map to a
    service ID: a channel like the SDK's own (TLS, the token as ``Bearer``, the SDK's
    RetryPolicy as service config) to the address discovery announced."""
    import grpc
    import yandexcloud

    credentials = grpc.composite_channel_credentials(
        grpc.ssl_channel_credentials(root_certificates=cert),
        grpc.access_token_call_credentials(token),
    )
    return grpc.secure_channel(
        address,
        credentials,
        options=[("grpc.service_config", yandexcloud.RetryPolicy().to_json())],
    )


def run(args: argparse.Namespace, summary: dict[str, Any]) -> None:
    """Fills ``summary`` step by step, so a failure still reports what went before."""
    import grpc
    import yandexcloud
    from google.protobuf import field_mask_pb2
    from yandexcloud import _sdk
    from yandexcloud.operations import OperationError

    from yandex.cloud.baremetal.v1alpha import image_pb2, image_service_pb2
    from yandex.cloud.baremetal.v1alpha import image_service_pb2_grpc as image_grpc
    from yandex.cloud.operation import operation_service_pb2
    from yandex.cloud.operation.operation_service_pb2_grpc import OperationServiceStub

    with open(args.cert, "rb") as pem:
        cert = pem.read()
    summary["sdk_version"] = yandexcloud.__version__
    summary["discovery"] = discovery = discover_without_token(args.endpoint, cert)

    sdk = yandexcloud.SDK(
        iam_token=args.token,
        endpoint=args.endpoint,
        root_certificates=cert,
        retry_policy=yandexcloud.RetryPolicy(),
    )
    # What the README says: the SDK maps no module to a BareMetal service ID.
    summary["sdk_maps_baremetal"] = any(
        module.startswith("yandex.cloud.baremetal") for module, _ in _sdk._supported_modules
    )
    try:
        sdk.client(image_grpc.ImageServiceStub)
    except RuntimeError as exc:
        summary["sdk_client_for_image_service"] = f"RuntimeError: {exc}"

    images = image_grpc.ImageServiceStub(
        image_service_channel(discovery["baremetal"], cert, args.token)
    )

    created = images.Create(
        image_service_pb2.CreateImageRequest(
            folder_id=args.folder,
            name=f"sdk-{uuid.uuid4().hex[:10]}",
            uri=args.uri,
            labels={"made-by": "official-sdk"},
        ),
        metadata=[("idempotency-key", str(uuid.uuid4()))],
        timeout=RPC_TIMEOUT,
    )
    create_result = sdk.wait_operation_and_get_result(
        created,
        response_type=image_pb2.Image,
        meta_type=image_service_pb2.CreateImageMetadata,
        timeout=OPERATION_TIMEOUT,
    )
    image = create_result.response
    summary["created"] = {
        "operation_id": created.id,
        "image_id": image.id,
        "meta_image_id": create_result.meta.image_id,
        "status": image_pb2.Image.Status.Name(image.status),
        "checksum": image.checksum,
    }

    updated = images.Update(
        image_service_pb2.UpdateImageRequest(
            image_id=image.id,
            update_mask=field_mask_pb2.FieldMask(paths=["description"]),
            description="updated through the official SDK",
        ),
        metadata=[("idempotency-key", str(uuid.uuid4()))],
        timeout=RPC_TIMEOUT,
    )
    update_result = sdk.wait_operation_and_get_result(
        updated,
        response_type=image_pb2.Image,
        meta_type=image_service_pb2.UpdateImageMetadata,
        timeout=OPERATION_TIMEOUT,
    )
    summary["updated"] = {
        "operation_id": updated.id,
        "result_type": type(update_result).__name__,
        "response_type": type(update_result.response).__name__,
        "image_id": update_result.response.id,
        "meta_image_id": update_result.meta.image_id,
        "status": image_pb2.Image.Status.Name(update_result.response.status),
        "description": update_result.response.description,
        "labels": dict(update_result.response.labels),
    }

    # An image still downloading (CREATING) cannot be updated: refused at once.
    downloading = images.Create(
        image_service_pb2.CreateImageRequest(
            folder_id=args.folder, name=f"sdk-{uuid.uuid4().hex[:10]}", uri=args.slow_uri
        ),
        timeout=RPC_TIMEOUT,
    )
    downloading_id = image_service_pb2.CreateImageMetadata()
    downloading.metadata.Unpack(downloading_id)
    try:
        images.Update(
            image_service_pb2.UpdateImageRequest(
                image_id=downloading_id.image_id,
                update_mask=field_mask_pb2.FieldMask(paths=["description"]),
                description="too early",
            ),
            timeout=RPC_TIMEOUT,
        )
    except grpc.RpcError as exc:
        summary["update_not_ready"] = {
            "caught_as": "grpc.RpcError",
            "code": exc.code().name,
            "details": exc.details(),
        }
    else:
        summary["update_not_ready"] = {"code": "OK"}

    # An operation that ends with an error: the SDK's waiter raises its OperationError.
    failing = images.Create(
        image_service_pb2.CreateImageRequest(
            folder_id=args.folder, name=f"sdk-{uuid.uuid4().hex[:10]}", uri=args.failing_uri
        ),
        timeout=RPC_TIMEOUT,
    )
    try:
        sdk.wait_operation_and_get_result(
            failing,
            response_type=image_pb2.Image,
            meta_type=image_service_pb2.CreateImageMetadata,
            timeout=OPERATION_TIMEOUT,
        )
    except OperationError as exc:
        summary["operation_error"] = {
            "type": f"{type(exc).__module__}.{type(exc).__qualname__}",
            "message": exc.message,
            "operation_id": exc.operation_result.operation.id,  # as it was started
        }
    else:
        summary["operation_error"] = {"type": None}

    # The SDK's RetryPolicy: the next request on the wire is lost with its connection
    # (UNAVAILABLE), the policy sends it again on a new connection, the call succeeds.
    operations = sdk.client(OperationServiceStub)
    get_updated = operation_service_pb2.GetOperationRequest(operation_id=updated.id)
    ask_test_to_drop_the_next_request("with RetryPolicy")
    started = time.monotonic()
    answer = operations.Get(get_updated, timeout=RPC_TIMEOUT)
    summary["retried_get"] = {
        "done": answer.done,
        "operation_id": answer.id,
        "seconds": round(time.monotonic() - started, 3),
    }

    # The same without a RetryPolicy: the lost request surfaces as UNAVAILABLE.
    plain = yandexcloud.SDK(iam_token=args.token, endpoint=args.endpoint, root_certificates=cert)
    plain_operations = plain.client(OperationServiceStub)
    plain_operations.Get(get_updated, timeout=RPC_TIMEOUT)  # connected before the drop
    ask_test_to_drop_the_next_request("without RetryPolicy")
    try:
        plain_operations.Get(get_updated, timeout=RPC_TIMEOUT)
        summary["unretried_get"] = {"code": "OK"}
    except grpc.RpcError as exc:
        summary["unretried_get"] = {"code": exc.code().name, "details": exc.details()}

    summary["ok"] = True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoint", required=True, help="host:port the SDK discovers from")
    parser.add_argument("--cert", required=True, help="PEM certificate the server presents")
    parser.add_argument("--token", required=True, help="a token of the service: iam_token")
    parser.add_argument("--folder", required=True)
    parser.add_argument("--uri", required=True, help="an image that downloads")
    parser.add_argument("--slow-uri", required=True, help="an image that keeps downloading")
    parser.add_argument("--failing-uri", required=True, help="an image that cannot download")
    args = parser.parse_args(argv)
    summary: dict[str, Any] = {"ok": False}
    try:
        run(args, summary)
    except Exception as exc:  # report any failure in the summary, with its traceback
        traceback.print_exc()
        summary["error"] = f"{type(exc).__name__}: {exc}"
    print(json.dumps(summary, sort_keys=True), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
