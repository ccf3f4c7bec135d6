"""The OpenAPI document is generated from the google.api.http rules: change a rule and the
document changes with it; every schema follows the JSON the transcoder writes."""

from __future__ import annotations

from typing import Any

from google.api import annotations_pb2
from google.protobuf import descriptor_pb2, descriptor_pool

from service.entrypoints.grpc.calls import PUBLIC_METHODS
from service.entrypoints.http.openapi import openapi_document, openapi_path
from service.entrypoints.http.routes import REST_SERVICES, public_bindings
from yandex.cloud.baremetal.v1alpha import image_service_pb2


def document(services: Any = REST_SERVICES) -> dict[str, Any]:
    return openapi_document(public_bindings(services), PUBLIC_METHODS, title="t", version="1")


def with_get_rule(path: str) -> Any:
    """ImageService as the protos declare it, but for the path of Get's rule, in a pool of its
    own (its dependencies copied from the default pool)."""
    pool = descriptor_pool.DescriptorPool()
    default = descriptor_pool.Default()

    def add(name: str) -> None:
        if name in added:
            return
        source = default.FindFileByName(name)
        for dependency in source.dependencies:
            add(dependency.name)
        proto = descriptor_pb2.FileDescriptorProto()
        source.CopyToProto(proto)
        if name == image_service_pb2.DESCRIPTOR.name:
            [service] = proto.service
            get = next(m for m in service.method if m.name == "Get")
            get.options.Extensions[annotations_pb2.http].get = path
        pool.Add(proto)
        added.add(name)

    added: set[str] = set()
    add(image_service_pb2.DESCRIPTOR.name)
    return pool.FindServiceByName("yandex.cloud.baremetal.v1alpha.ImageService")


def test_a_changed_rule_changes_the_document() -> None:
    before = document([with_get_rule("/baremetal/v1alpha/images/{image_id}")])
    after = document([with_get_rule("/v2/pictures/{image_id}:describe")])
    assert "/baremetal/v1alpha/images/{image_id}" in before["paths"]
    assert "get" in before["paths"]["/baremetal/v1alpha/images/{image_id}"]
    assert "/v2/pictures/{image_id}:describe" in after["paths"]
    moved = after["paths"]["/v2/pictures/{image_id}:describe"]["get"]
    assert moved["operationId"] == "ImageService.Get"
    assert [p["name"] for p in moved["parameters"] if p["in"] == "path"] == ["image_id"]
    # Update and Delete keep the old path; Get is gone from it.
    assert "get" not in after["paths"]["/baremetal/v1alpha/images/{image_id}"]


def test_schemas_follow_the_json_mapping() -> None:
    schemas = document()["components"]["schemas"]
    image = schemas["yandex.cloud.baremetal.v1alpha.Image"]["properties"]
    assert image["folderId"] == {"type": "string"}  # lowerCamelCase names
    assert image["createdAt"] == {"type": "string", "format": "date-time"}
    assert image["labels"] == {"type": "object", "additionalProperties": {"type": "string"}}
    assert image["status"]["enum"][:2] == ["STATUS_UNSPECIFIED", "CREATING"]
    operation = schemas["yandex.cloud.operation.Operation"]["properties"]
    assert operation["metadata"]["properties"]["@type"] == {"type": "string"}
    assert operation["error"] == {"$ref": "#/components/schemas/google.rpc.Status"}


def test_a_body_leaves_out_the_fields_its_path_binds() -> None:
    update = document()["paths"]["/baremetal/v1alpha/images/{image_id}"]["patch"]
    body = update["requestBody"]["content"]["application/json"]["schema"]["properties"]
    assert "imageId" not in body
    assert body["updateMask"] == {"type": "string"}


def test_template_variables_are_plain_in_openapi_paths() -> None:
    assert openapi_path("/v1/{name=operations/**}:wait") == "/v1/{name}:wait"
