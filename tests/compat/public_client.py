"""A client of our stack built only from the official public SDK's generated stubs.

Runs under the interpreter of a separate virtualenv that has ``yandexcloud`` installed
(protobuf < 7), so it imports nothing from this repository: only ``grpc``,
``google.protobuf`` and the SDK's ``yandex.cloud...`` modules.

    python public_client.py --target HOST:PORT --folder F --uri URL
        Create -> poll -> Update -> poll -> Get -> List, plus one INVALID_ARGUMENT check.
        The last line of stdout is a JSON summary; the exit code is 0 on success.

    python public_client.py --dump-descriptors
        Prints JSON describing the messages, enums and services of the public proto files.

``describe_files`` is also imported by the test process to describe our own generated
modules the same way, so that both sides are dumped by one piece of code.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
import traceback
import uuid
from typing import Any

PUBLIC_FILES = (
    "yandex/cloud/baremetal/v1alpha/image.proto",
    "yandex/cloud/baremetal/v1alpha/image_service.proto",
    "yandex/cloud/operation/operation.proto",
    "yandex/cloud/operation/operation_service.proto",
    "yandex/cloud/endpoint/api_endpoint.proto",
    "yandex/cloud/endpoint/api_endpoint_service.proto",
)

POLL_INTERVAL = 0.1
POLL_DEADLINE = 60.0
RPC_TIMEOUT = 10.0
MD5_HEX = re.compile(r"[0-9a-f]{32}")


# --- descriptors ---------------------------------------------------------------------------


def _describe_enum(enum: Any) -> dict[str, Any]:
    return {
        "name": enum.name,
        "values": [{"name": v.name, "number": v.number} for v in enum.value],
    }


def _describe_message(message: Any, scope: str) -> dict[str, Any]:
    full_name = f"{scope}.{message.name}"
    oneofs = [o.name for o in message.oneof_decl]
    fields = []
    for field in message.field:
        fields.append(
            {
                "name": field.name,
                "number": field.number,
                "type": field.Type.Name(field.type),
                "type_name": field.type_name,
                "label": field.Label.Name(field.label),
                "oneof": oneofs[field.oneof_index] if field.HasField("oneof_index") else None,
                "proto3_optional": field.proto3_optional,
            }
        )
    return {
        "name": full_name,
        "fields": sorted(fields, key=lambda f: f["number"]),
        "map_entry": message.options.map_entry,
        "enums": [_describe_enum(e) for e in message.enum_type],
        "nested": [_describe_message(m, full_name) for m in message.nested_type],
    }


def describe_files(file_descriptors: list[Any]) -> dict[str, Any]:
    """JSON-able description of files: packages, messages, fields, enums, services.

    Options, comments, json_name and reserved ranges are left out on purpose: they do not
    change what goes over the wire (``map_entry`` is kept since it tells a map from a list).
    """
    from google.protobuf import descriptor_pb2

    out: dict[str, Any] = {}
    for file_descriptor in file_descriptors:
        proto = descriptor_pb2.FileDescriptorProto()
        file_descriptor.CopyToProto(proto)
        scope = f".{proto.package}" if proto.package else ""
        out[proto.name] = {
            "package": proto.package,
            "syntax": proto.syntax or "proto2",
            "messages": [_describe_message(m, scope) for m in proto.message_type],
            "enums": [_describe_enum(e) for e in proto.enum_type],
            "services": [
                {
                    "name": f"{scope}.{service.name}",
                    "methods": [
                        {
                            "name": method.name,
                            "input_type": method.input_type,
                            "output_type": method.output_type,
                            "client_streaming": method.client_streaming,
                            "server_streaming": method.server_streaming,
                        }
                        for method in service.method
                    ],
                }
                for service in proto.service
            ],
        }
    return out


def public_file_descriptors() -> list[Any]:
    from yandex.cloud.baremetal.v1alpha import image_pb2, image_service_pb2
    from yandex.cloud.endpoint import api_endpoint_pb2, api_endpoint_service_pb2
    from yandex.cloud.operation import operation_pb2, operation_service_pb2

    return [
        image_pb2.DESCRIPTOR,
        image_service_pb2.DESCRIPTOR,
        operation_pb2.DESCRIPTOR,
        operation_service_pb2.DESCRIPTOR,
        api_endpoint_pb2.DESCRIPTOR,
        api_endpoint_service_pb2.DESCRIPTOR,
    ]


# --- the end-to-end flow -------------------------------------------------------------------


class CheckFailed(Exception):
    pass


def check(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


# The bearer token the SDK's credentials would put on every call (set by --token).
TOKEN = ""


def metadata() -> list[tuple[str, str]]:
    items = [("x-client-request-id", str(uuid.uuid4()))]
    if TOKEN:
        items.append(("authorization", f"Bearer {TOKEN}"))
    return items


def wait_done(operations: Any, operation_id: str) -> Any:
    from yandex.cloud.operation import operation_service_pb2

    deadline = time.monotonic() + POLL_DEADLINE
    while True:
        op = operations.Get(
            operation_service_pb2.GetOperationRequest(operation_id=operation_id),
            timeout=RPC_TIMEOUT,
            metadata=metadata(),
        )
        if op.done:
            return op
        if time.monotonic() > deadline:
            raise CheckFailed(f"operation {operation_id} not done after {POLL_DEADLINE}s")
        time.sleep(POLL_INTERVAL)


def unpack(any_value: Any, message_type: Any, what: str) -> Any:
    message = message_type()
    check(
        any_value.Unpack(message),
        f"{what}: expected {message_type.DESCRIPTOR.full_name}, got type_url "
        f"{any_value.type_url!r}",
    )
    return message


def response_image(op: Any, what: str) -> Any:
    from yandex.cloud.baremetal.v1alpha import image_pb2

    result = op.WhichOneof("result")
    check(result == "response", f"{what}: operation ended with {result}: {op.error}")
    image = unpack(op.response, image_pb2.Image, f"{what} response")
    check(
        image.status == image_pb2.Image.READY,
        f"{what}: image status {image_pb2.Image.Status.Name(image.status)}, expected READY",
    )
    check(bool(MD5_HEX.fullmatch(image.checksum)), f"{what}: checksum {image.checksum!r}")
    return image


def run_flow(target: str, folder_id: str, uri: str) -> dict[str, Any]:
    import google.protobuf
    import grpc
    from google.protobuf import field_mask_pb2

    from yandex.cloud.baremetal.v1alpha import image_service_pb2, image_service_pb2_grpc
    from yandex.cloud.operation import operation_service_pb2_grpc

    started = time.monotonic()
    name = f"compat-{uuid.uuid4().hex[:10]}"
    with grpc.insecure_channel(target) as channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=RPC_TIMEOUT)
        except grpc.FutureTimeoutError:
            raise CheckFailed(f"cannot connect to {target} in {RPC_TIMEOUT}s") from None
        images = image_service_pb2_grpc.ImageServiceStub(channel)
        operations = operation_service_pb2_grpc.OperationServiceStub(channel)

        created = images.Create(
            image_service_pb2.CreateImageRequest(
                folder_id=folder_id,
                name=name,
                description="created by the public SDK",
                uri=uri,
                labels={"sdk": "public"},
            ),
            timeout=RPC_TIMEOUT,
            metadata=[*metadata(), ("idempotency-key", str(uuid.uuid4()))],
        )
        create_meta = unpack(
            created.metadata, image_service_pb2.CreateImageMetadata, "Create metadata"
        )
        image_id = create_meta.image_id
        check(len(image_id) == 20, f"image id {image_id!r} is not 20 characters")

        create_done = wait_done(operations, created.id)
        check(
            unpack(
                create_done.metadata, image_service_pb2.CreateImageMetadata, "Create metadata"
            ).image_id
            == image_id,
            "finished Create operation names another image",
        )
        image = response_image(create_done, "Create")
        check(image.id == image_id, f"Create response id {image.id} != {image_id}")
        check(image.name == name and image.folder_id == folder_id, f"Create response {image}")

        updated = images.Update(
            image_service_pb2.UpdateImageRequest(
                image_id=image_id,
                update_mask=field_mask_pb2.FieldMask(paths=["description", "labels"]),
                description="updated by the public SDK",
                labels={"sdk": "public", "step": "update"},
            ),
            timeout=RPC_TIMEOUT,
            metadata=[*metadata(), ("idempotency-key", str(uuid.uuid4()))],
        )
        update_meta = unpack(
            updated.metadata, image_service_pb2.UpdateImageMetadata, "Update metadata"
        )
        check(update_meta.image_id == image_id, f"Update metadata {update_meta.image_id}")
        update_done = wait_done(operations, updated.id)
        check(
            unpack(
                update_done.metadata, image_service_pb2.UpdateImageMetadata, "Update metadata"
            ).image_id
            == image_id,
            "finished Update operation names another image",
        )
        final = response_image(update_done, "Update")
        check(final.description == "updated by the public SDK", f"Update response {final}")
        check(
            dict(final.labels) == {"sdk": "public", "step": "update"},
            f"Update response labels {dict(final.labels)}",
        )
        check(final.checksum == image.checksum, "checksum changed by Update")

        got = images.Get(
            image_service_pb2.GetImageRequest(image_id=image_id),
            timeout=RPC_TIMEOUT,
            metadata=metadata(),
        )
        check(got == final, f"Get returned\n{got}\nbut Update's response was\n{final}")

        listed = images.List(
            image_service_pb2.ListImagesRequest(folder_id=folder_id),
            timeout=RPC_TIMEOUT,
            metadata=metadata(),
        )
        matching = [i for i in listed.images if i.id == image_id]
        check(len(matching) == 1, f"List of {folder_id} has no image {image_id}: {listed}")
        check(matching[0] == got, f"List returned\n{matching[0]}\nbut Get returned\n{got}")

        try:
            images.Update(
                image_service_pb2.UpdateImageRequest(
                    image_id=image_id,
                    update_mask=field_mask_pb2.FieldMask(paths=["name"]),
                    name="Bad_Name",
                ),
                timeout=RPC_TIMEOUT,
                metadata=metadata(),
            )
        except grpc.RpcError as exc:
            error_code = exc.code()
            error_message = exc.details()
        else:
            raise CheckFailed("Update with name 'Bad_Name' succeeded")
        check(
            error_code == grpc.StatusCode.INVALID_ARGUMENT,
            f"Update with name 'Bad_Name' gave {error_code}: {error_message}",
        )

    return {
        "ok": True,
        "image_id": image_id,
        "create_operation_id": created.id,
        "update_operation_id": updated.id,
        "create_response_type_url": create_done.response.type_url,
        "update_metadata_type_url": update_done.metadata.type_url,
        "status": "READY",
        "checksum": final.checksum,
        "description": final.description,
        "labels": dict(final.labels),
        "listed": len(listed.images),
        "bad_name_error": {"code": error_code.name, "message": error_message},
        "protobuf_version": google.protobuf.__version__,
        "grpc_version": grpc.__version__,
        "stubs": image_service_pb2.__file__,
        "seconds": round(time.monotonic() - started, 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", help="host:port of the gRPC API")
    parser.add_argument("--folder", help="folder ID to create the image in")
    parser.add_argument("--uri", help="URL the workers download the image from")
    parser.add_argument("--dump-descriptors", action="store_true")
    parser.add_argument("--token", default="", help="bearer token sent on every call")
    args = parser.parse_args(argv)
    global TOKEN
    TOKEN = args.token

    if args.dump_descriptors:
        print(json.dumps(describe_files(public_file_descriptors()), indent=1, sort_keys=True))
        return 0
    if not (args.target and args.folder and args.uri):
        parser.error("--target, --folder and --uri are required")

    try:
        summary = run_flow(args.target, args.folder, args.uri)
    except CheckFailed as exc:
        print(f"CHECK FAILED: {exc}", file=sys.stderr)
        print(json.dumps({"ok": False, "error": str(exc)}))
        return 1
    except Exception as exc:  # an RPC error or a bug: report it the same way
        traceback.print_exc()
        print(json.dumps({"ok": False, "error": f"{type(exc).__name__}: {exc}"}))
        return 2
    print(json.dumps(summary, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
