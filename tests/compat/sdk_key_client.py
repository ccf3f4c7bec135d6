"""The official Python SDK authenticating with a service account's authorized key, unchanged:
``yandexcloud.SDK(service_account_key=...)`` exchanges a JWT for an IAM token through
``IamTokenService.Create`` at the ``iam`` endpoint discovery announces, and sends that token
on every call of its own clients (``sdk.client(OperationServiceStub)``, the waiter).

Runs under the interpreter of the SDK's virtualenv (``sdk_venv``), importing nothing from this
repository; ``run`` is the README's "With a service account key" example, step by step.

    python sdk_key_client.py --endpoint HOST:PORT --cert PEM --key-file key.json \
        --folder F --uri URL

The last line of stdout is a JSON summary; the exit code is 0 when it ran to the end.
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


def run(args: argparse.Namespace, summary: dict[str, Any]) -> None:
    import grpc
    import jwt
    import yandexcloud
    from google.protobuf import field_mask_pb2

    from yandex.cloud.baremetal.v1alpha import image_pb2, image_service_pb2
    from yandex.cloud.baremetal.v1alpha.image_service_pb2_grpc import ImageServiceStub
    from yandex.cloud.iam.v1.iam_token_service_pb2 import CreateIamTokenRequest
    from yandex.cloud.iam.v1.iam_token_service_pb2_grpc import IamTokenServiceStub
    from yandex.cloud.operation.operation_service_pb2 import GetOperationRequest
    from yandex.cloud.operation.operation_service_pb2_grpc import OperationServiceStub

    endpoint = args.endpoint
    with open(args.cert, "rb") as pem:
        cert = pem.read()
    with open(args.key_file) as file:
        key = json.load(file)

    # The SDK, given the key: discovery, then the token exchange on its first call.
    sdk = yandexcloud.SDK(service_account_key=key, endpoint=endpoint, root_certificates=cert)
    operations = sdk.client(OperationServiceStub)

    # ImageService (no service ID of the SDK's maps it): a channel built from an IAM token,
    # made from the same key through the SDK's own IamTokenService client.
    now = int(time.time())
    signed = jwt.encode(
        {
            "iss": key["service_account_id"],
            "aud": f"https://iam.{endpoint}/iam/v1/tokens",
            "iat": now,
            "exp": now + 3600,
        },
        key["private_key"],
        algorithm="PS256",
        headers={"kid": key["id"]},
    )
    answer = sdk.client(IamTokenServiceStub).Create(
        CreateIamTokenRequest(jwt=signed), timeout=RPC_TIMEOUT
    )
    summary["iam_token_expires_in"] = answer.expires_at.seconds - now
    channel = grpc.secure_channel(
        endpoint,
        grpc.composite_channel_credentials(
            grpc.ssl_channel_credentials(root_certificates=cert),
            grpc.access_token_call_credentials(answer.iam_token),
        ),
        options=[("grpc.service_config", yandexcloud.RetryPolicy().to_json())],
    )
    images = ImageServiceStub(channel)

    created = images.Create(
        image_service_pb2.CreateImageRequest(
            folder_id=args.folder, name=f"sa-{uuid.uuid4().hex[:10]}", uri=args.uri
        ),
        metadata=[("idempotency-key", str(uuid.uuid4()))],
        timeout=RPC_TIMEOUT,
    )
    image = sdk.wait_operation_and_get_result(
        created, response_type=image_pb2.Image, timeout=OPERATION_TIMEOUT
    ).response
    summary["created"] = {
        "operation_id": created.id,
        "created_by": created.created_by,
        "image_id": image.id,
        "status": image_pb2.Image.Status.Name(image.status),
    }

    updated = images.Update(
        image_service_pb2.UpdateImageRequest(
            image_id=image.id,
            update_mask=field_mask_pb2.FieldMask(paths=["description"]),
            description="updated with a service account key",
        ),
        metadata=[("idempotency-key", str(uuid.uuid4()))],
        timeout=RPC_TIMEOUT,
    )
    result = sdk.wait_operation_and_get_result(
        updated, response_type=image_pb2.Image, timeout=OPERATION_TIMEOUT
    )
    polled = operations.Get(GetOperationRequest(operation_id=updated.id), timeout=RPC_TIMEOUT)
    summary["updated"] = {
        "operation_id": updated.id,
        "description": result.response.description,
        "polled_done": polled.done,
        "polled_created_by": polled.created_by,
    }

    listed = images.List(
        image_service_pb2.ListImagesRequest(folder_id=args.folder), timeout=RPC_TIMEOUT
    )
    summary["listed"] = sorted(i.id for i in listed.images)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoint", required=True, help="host:port the SDK discovers from")
    parser.add_argument("--cert", required=True, help="PEM certificate the server presents")
    parser.add_argument("--key-file", required=True, help="the authorized key (sa key create)")
    parser.add_argument("--folder", required=True)
    parser.add_argument("--uri", required=True, help="an image that downloads")
    args = parser.parse_args(argv)
    summary: dict[str, Any] = {"ok": False}
    try:
        run(args, summary)
        summary["ok"] = True
    except Exception as exc:  # report any failure in the summary, with its traceback
        traceback.print_exc()
        summary["error"] = f"{type(exc).__name__}: {exc}"
    print(json.dumps(summary, sort_keys=True), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
