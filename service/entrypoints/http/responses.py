"""Statuses as the public REST API answers them: the HTTP status of each gRPC code (Google's
mapping, ``google/rpc/code.proto``) and the JSON body ``{"code", "message", "details"}`` of a
``google.rpc.Status`` (its details in canonical JSON, each ``Any`` with its ``@type``)."""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable

from google.protobuf import json_format
from google.rpc import error_details_pb2, status_pb2

from service.domain.errors import Code
from service.entrypoints.grpc.convert import pack
from service.entrypoints.http.transcoding import dump_json

# FAILED_PRECONDITION is 400, as code.proto says ("the client should not retry until the
# system state has been explicitly fixed"), not 412, which HTTP keeps for conditional headers.
HTTP_STATUS = {
    Code.OK: 200,
    Code.CANCELLED: 499,
    Code.UNKNOWN: 500,
    Code.INVALID_ARGUMENT: 400,
    Code.DEADLINE_EXCEEDED: 504,
    Code.NOT_FOUND: 404,
    Code.ALREADY_EXISTS: 409,
    Code.PERMISSION_DENIED: 403,
    Code.UNAUTHENTICATED: 401,
    Code.RESOURCE_EXHAUSTED: 429,
    Code.FAILED_PRECONDITION: 400,
    Code.ABORTED: 409,
    Code.OUT_OF_RANGE: 400,
    Code.UNIMPLEMENTED: 501,
    Code.INTERNAL: 500,
    Code.UNAVAILABLE: 503,
    Code.DATA_LOSS: 500,
}
JSON_TYPE = "application/json"
# Answers are the caller's own data: no cache along the way keeps them.
API_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


def http_status(code: int) -> int:
    """The HTTP status of a ``google.rpc.Code`` number (500 for one it does not know)."""
    try:
        return HTTP_STATUS[Code(code)]
    except ValueError:
        return 500


def error_json(status: status_pb2.Status) -> bytes:
    """The JSON body of an error: ``code`` (the gRPC code number), ``message``, ``details``."""
    body = json_format.MessageToDict(status)
    body.setdefault("message", "")
    body.setdefault("details", [])
    return dump_json(body)


_VALIDATION = "Request validation error: "
_BAD_REQUEST = "/" + error_details_pb2.BadRequest.DESCRIPTOR.full_name


def with_json_field_paths(
    status: status_pb2.Status, json_field_path: Callable[[str], str]
) -> status_pb2.Status:
    """``status`` with the request's fields named as a REST caller names them, by their JSON
    names (``pageSize``, not ``page_size``): in its ``BadRequest`` and in its message. The
    gRPC answer to the same request names the fields of the proto."""
    bad = error_details_pb2.BadRequest()
    if not any(detail.type_url.endswith(_BAD_REQUEST) for detail in status.details):
        return status
    renamed = status_pb2.Status()
    renamed.CopyFrom(status)
    for detail in renamed.details:
        if not detail.Unpack(bad):
            continue
        first = bad.field_violations[0].field if bad.field_violations else None
        for violation in bad.field_violations:
            violation.field = json_field_path(violation.field)
        detail.Pack(bad)
        prefix = f"{_VALIDATION}{first}: "
        if first is not None and renamed.message.startswith(prefix):
            renamed.message = (
                f"{_VALIDATION}{bad.field_violations[0].field}: " + renamed.message[len(prefix) :]
            )
    return renamed


def retry_after(status: status_pb2.Status) -> str | None:
    """A ``Retry-After`` header value (whole seconds, rounded up) from a ``RetryInfo``."""
    info = error_details_pb2.RetryInfo()
    for detail in status.details:
        if detail.Unpack(info):
            return str(max(1, math.ceil(info.retry_delay.ToTimedelta().total_seconds())))
    return None


def refusal(code: Code, message: str, *, field: str = "") -> tuple[status_pb2.Status, str]:
    """A status for a request refused before the call frame (no route, too large, too many),
    with a request ID of its own as ``RequestInfo``; and that request ID."""
    request_id = str(uuid.uuid4())
    details = []
    if field:
        violation = error_details_pb2.BadRequest.FieldViolation(field=field, description=message)
        details.append(pack(error_details_pb2.BadRequest(field_violations=[violation])))
        message = f"Request validation error: {field}: {message}"
    details.append(pack(error_details_pb2.RequestInfo(request_id=request_id)))
    return status_pb2.Status(code=int(code), message=message, details=details), request_id
