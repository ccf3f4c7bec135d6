"""Create an image, update it, and poll the operations until they finish.

.venv/bin/python examples/quickstart.py --target 127.0.0.1:50051 --uri http://HOST/image.iso
"""

from __future__ import annotations

import argparse
import time
import uuid

import grpc
from google.protobuf import field_mask_pb2

from yandex.cloud.baremetal.v1alpha import image_pb2, image_service_pb2, image_service_pb2_grpc
from yandex.cloud.operation import (
    operation_pb2,
    operation_service_pb2,
    operation_service_pb2_grpc,
)


def wait(ops: operation_service_pb2_grpc.OperationServiceStub, op: operation_pb2.Operation):
    """Poll OperationService.Get until the operation is done."""
    while not op.done:
        time.sleep(0.2)
        op = ops.Get(operation_service_pb2.GetOperationRequest(operation_id=op.id))
    if op.HasField("error"):
        raise SystemExit(f"operation {op.id} failed: {op.error.code} {op.error.message}")
    image = image_pb2.Image()
    op.response.Unpack(image)
    return image


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--target", default="127.0.0.1:50051")
    parser.add_argument("--uri", required=True, help="http(s) URL of the image file")
    parser.add_argument("--folder", default="my-folder")
    parser.add_argument("--token", required=True, help="from: python -m service token create")
    args = parser.parse_args()

    # The token travels as call credentials: authorization: Bearer <token> on every call.
    auth = grpc.metadata_call_credentials(
        lambda context, callback: callback((("authorization", f"Bearer {args.token}"),), None)
    )
    credentials = grpc.composite_channel_credentials(grpc.local_channel_credentials(), auth)
    with grpc.secure_channel(args.target, credentials) as channel:
        images = image_service_pb2_grpc.ImageServiceStub(channel)
        ops = operation_service_pb2_grpc.OperationServiceStub(channel)
        # An idempotency-key makes a retried call (same key, same request) return the
        # operation the first attempt started instead of starting another.
        op = images.Create(
            image_service_pb2.CreateImageRequest(
                folder_id=args.folder,
                name=f"demo-{uuid.uuid4().hex[:8]}",
                uri=args.uri,
                labels={"env": "demo"},
            ),
            metadata=(("idempotency-key", str(uuid.uuid4())),),
        )
        print("create operation", op.id)
        image = wait(ops, op)
        print("created", image.id, image_pb2.Image.Status.Name(image.status), image.checksum)

        op = images.Update(
            image_service_pb2.UpdateImageRequest(
                image_id=image.id,
                update_mask=field_mask_pb2.FieldMask(paths=["description"]),
                description="updated by the quickstart",
            )
        )
        print("update operation", op.id)
        image = wait(ops, op)
        print("updated", image.id, image_pb2.Image.Status.Name(image.status), image.description)

        page = images.List(image_service_pb2.ListImagesRequest(folder_id=args.folder))
        print("folder has", len(page.images), "image(s)")


if __name__ == "__main__":
    main()
