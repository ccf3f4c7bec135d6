"""The OpenAPI 3 document of the REST API, served at ``GET /openapi.json``.

Generated, never written by hand: from the same ``google.api.http`` bindings the transcoder
serves (``transcoding.Binding``) and the message descriptors it decodes with, so the document
cannot drift from the routes. Each binding is an operation: its path template (the path's
variables as path parameters), the request's other fields as query parameters (methods with no
body) or as the JSON body (``body: "*"``, less the fields the path binds), the answer as the
response message's schema, and every error as a ``google.rpc.Status``. Schemas follow
protobuf's canonical JSON mapping, as ``json_format`` writes it: lowerCamelCase names, int64
as strings, enums by name, ``Timestamp`` as RFC 3339 text, ``Any`` as an object with
``@type``, maps as objects.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any, cast

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.rpc import status_pb2

from service.entrypoints.http.transcoding import Binding

OPENAPI_PATH = "/openapi.json"
ERROR_SCHEMA = "google.rpc.Status"

_INTEGERS = {
    FieldDescriptor.TYPE_INT32: ("integer", "int32"),
    FieldDescriptor.TYPE_SINT32: ("integer", "int32"),
    FieldDescriptor.TYPE_SFIXED32: ("integer", "int32"),
    FieldDescriptor.TYPE_UINT32: ("integer", "int64"),
    FieldDescriptor.TYPE_FIXED32: ("integer", "int64"),
}
# 64-bit integers are strings in the JSON mapping (JavaScript's numbers cannot hold them).
_INT64 = {
    FieldDescriptor.TYPE_INT64: "int64",
    FieldDescriptor.TYPE_SINT64: "int64",
    FieldDescriptor.TYPE_SFIXED64: "int64",
    FieldDescriptor.TYPE_UINT64: "uint64",
    FieldDescriptor.TYPE_FIXED64: "uint64",
}
# Well-known types with a JSON form of their own.
_WELL_KNOWN: dict[str, dict[str, Any]] = {
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    "google.protobuf.Duration": {"type": "string", "pattern": r"^-?[0-9]+(\.[0-9]{1,9})?s$"},
    "google.protobuf.FieldMask": {"type": "string"},
    "google.protobuf.Empty": {"type": "object"},
    "google.protobuf.Struct": {"type": "object"},
    "google.protobuf.Value": {},
    "google.protobuf.ListValue": {"type": "array", "items": {}},
    "google.protobuf.Any": {
        "type": "object",
        "properties": {"@type": {"type": "string"}},
        "required": ["@type"],
        "additionalProperties": True,
    },
    "google.protobuf.StringValue": {"type": "string"},
    "google.protobuf.BytesValue": {"type": "string", "format": "byte"},
    "google.protobuf.BoolValue": {"type": "boolean"},
    "google.protobuf.Int32Value": {"type": "integer", "format": "int32"},
    "google.protobuf.UInt32Value": {"type": "integer", "format": "int64"},
    "google.protobuf.Int64Value": {"type": "string", "format": "int64"},
    "google.protobuf.UInt64Value": {"type": "string", "format": "uint64"},
    "google.protobuf.FloatValue": {"type": "number"},
    "google.protobuf.DoubleValue": {"type": "number"},
}
_VARIABLE = re.compile(r"\{([^}=]+)(=[^}]*)?\}")


class _Schemas:
    """``components.schemas``: one per message reached, by full name."""

    def __init__(self) -> None:
        self.found: dict[str, dict[str, Any]] = {}

    def ref(self, descriptor: Descriptor) -> dict[str, Any]:
        name = descriptor.full_name
        if name in _WELL_KNOWN:
            return dict(_WELL_KNOWN[name])
        if name not in self.found:
            self.found[name] = {}  # placed first: a message may contain itself
            self.found[name] = self.message(descriptor)
        return {"$ref": f"#/components/schemas/{name}"}

    def message(self, descriptor: Descriptor, leave_out: Iterable[str] = ()) -> dict[str, Any]:
        skipped = set(leave_out)
        properties = {
            field.json_name: self.field(field)
            for field in descriptor.fields
            if field.name not in skipped
        }
        return {"type": "object", "properties": properties}

    def field(self, field: FieldDescriptor) -> dict[str, Any]:
        message = field.message_type
        if message is not None and message.GetOptions().map_entry:
            value = message.fields_by_name["value"]
            return {"type": "object", "additionalProperties": self.single(value)}
        if field.is_repeated:
            return {"type": "array", "items": self.single(field)}
        return self.single(field)

    def single(self, field: FieldDescriptor) -> dict[str, Any]:
        kind = field.type
        if field.message_type is not None:
            return self.ref(field.message_type)
        if field.enum_type is not None:
            return {"type": "string", "enum": [value.name for value in field.enum_type.values]}
        if kind in _INTEGERS:
            openapi_type, number_format = _INTEGERS[kind]
            return {"type": openapi_type, "format": number_format}
        if kind in _INT64:
            return {"type": "string", "format": _INT64[kind]}
        if kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
            return {"type": "number"}
        if kind == FieldDescriptor.TYPE_BOOL:
            return {"type": "boolean"}
        if kind == FieldDescriptor.TYPE_BYTES:
            return {"type": "string", "format": "byte"}
        return {"type": "string"}


def openapi_path(template: str) -> str:
    """A path template as OpenAPI writes it: ``{field=pattern}`` becomes ``{field}``."""
    return _VARIABLE.sub(lambda m: "{" + m.group(1) + "}", template)


def _query_parameters(
    schemas: _Schemas, descriptor: Descriptor, bound: set[str]
) -> list[dict[str, Any]]:
    parameters = []
    for field in descriptor.fields:
        if field.name in bound:
            continue
        message = field.message_type
        if message is not None and message.full_name not in _WELL_KNOWN:
            continue  # a message cannot be given in the query
        if message is not None and message.GetOptions().map_entry:
            continue
        parameters.append(
            {
                "name": field.json_name,
                "in": "query",
                "required": False,
                "schema": schemas.field(field),
                **({"explode": True} if field.is_repeated else {}),
            }
        )
    return parameters


def _operation(schemas: _Schemas, binding: Binding, public: bool) -> dict[str, Any]:
    request = cast(Descriptor, binding.request_type.DESCRIPTOR)
    bound = set(binding.template.variables)
    service, method = binding.method.lstrip("/").rsplit("/", 1)
    parameters: list[dict[str, Any]] = [
        {"name": variable, "in": "path", "required": True, "schema": {"type": "string"}}
        for variable in binding.template.variables
    ]
    operation: dict[str, Any] = {
        "operationId": f"{service.rsplit('.', 1)[-1]}.{method}",
        "tags": [service],
        "summary": f"{service}.{method}",
    }
    if binding.body == "*":
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": schemas.message(request, bound)}},
        }
    elif binding.body:
        field = request.fields_by_name[binding.body]
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": schemas.field(field)}},
        }
        parameters += _query_parameters(schemas, request, bound | {binding.body})
    else:
        parameters += _query_parameters(schemas, request, bound)
    if parameters:
        operation["parameters"] = parameters
    response = cast(Descriptor, binding.response_type.DESCRIPTOR)
    answer = (
        schemas.field(response.fields_by_name[binding.response_body])
        if binding.response_body
        else schemas.ref(response)
    )
    error = {"$ref": f"#/components/schemas/{ERROR_SCHEMA}"}
    operation["responses"] = {
        "200": {"description": "OK", "content": {"application/json": {"schema": answer}}},
        "default": {
            "description": "An error: the gRPC code, a message and google.rpc details (the "
            "HTTP status is the one Google maps the code to)",
            "content": {"application/json": {"schema": error}},
        },
    }
    if public:
        operation["security"] = []
    return operation


def openapi_document(
    bindings: Iterable[Binding], public_methods: Iterable[str], *, title: str, version: str
) -> dict[str, Any]:
    """The OpenAPI 3.0 document of these bindings; ``public_methods`` (full gRPC names) need
    no token."""
    schemas = _Schemas()
    public = set(public_methods)
    paths: dict[str, dict[str, Any]] = {}
    for binding in bindings:
        operations = paths.setdefault(openapi_path(binding.template.text), {})
        operations[binding.http_method.lower()] = _operation(
            schemas, binding, binding.method in public
        )
    schemas.ref(cast(Descriptor, status_pb2.Status.DESCRIPTOR))  # every error's body
    return {
        "openapi": "3.0.3",
        "info": {
            "title": title,
            "version": version,
            "description": "Generated from the google.api.http rules of the public protos, "
            "as the server transcodes them.",
        },
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": dict(sorted(schemas.found.items())),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    }
