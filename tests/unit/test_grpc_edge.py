"""The gRPC edge: domain errors as rich statuses, operations as protobuf."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from google.longrunning import operations_pb2
from google.protobuf import any_pb2, empty_pb2
from google.rpc import error_details_pb2, status_pb2

from service.domain.errors import (
    Code,
    FieldViolation,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from service.domain.model import (
    DESCRIPTIONS,
    Image,
    ImageStatus,
    Operation,
    OperationError,
    OperationKind,
)
from service.entrypoints.grpc.calls import error_status, passing_encoded
from service.entrypoints.grpc.convert import (
    EncodedOperation,
    encode_operation,
    image_to_proto,
    longrunning_operation,
    operation_to_proto,
)
from service.entrypoints.grpc.servicers import MAX_WAIT_SECONDS, wait_seconds
from yandex.cloud.baremetal.v1alpha import image_pb2, image_service_pb2
from yandex.cloud.operation import operation_pb2

REQUEST_ID = "7c4a8d09-ca37-4f4b-9c5e-0c1d2e3f4a5b"
TYPE = "type.googleapis.com/"
CREATED_AT = datetime(2024, 5, 17, 12, 30, 45, 123456, tzinfo=UTC)

IMAGE = Image(
    id="img" + "a1b2c3d4e5f6g7h8i",
    folder_id="fld-a",
    name="ubuntu-22",
    description="Ubuntu 22.04",
    checksum="d41d8cd98f00b204e9800998ecf8427e",
    status=ImageStatus.READY,
    created_at=CREATED_AT,
    labels={"env": "prod"},
)


def operation(kind: OperationKind, **overrides: object) -> Operation:
    values: dict[str, object] = {
        "id": "opn" + "a1b2c3d4e5f6g7h8i",
        "kind": kind,
        "image_id": IMAGE.id,
        "folder_id": IMAGE.folder_id,
        "description": DESCRIPTIONS[kind],
        "created_at": CREATED_AT,
        "created_by": "alice",
        "modified_at": CREATED_AT + timedelta(seconds=3),
        "done": False,
    }
    values.update(overrides)
    return Operation(**values)  # type: ignore[arg-type]


def unpack(packed: any_pb2.Any, message_class: type) -> object:
    message = message_class()
    assert packed.Unpack(message)
    return message


def details_of(status: status_pb2.Status) -> list[str]:
    return [detail.type_url.removeprefix(TYPE) for detail in status.details]


# --- error_status ---------------------------------------------------------------------------


def test_an_error_status_carries_the_code_and_message():
    status = error_status(NotFound("Image x not found"), REQUEST_ID)
    assert (status.code, status.message) == (Code.NOT_FOUND, "Image x not found")


def test_every_error_status_ends_with_the_request_id():
    status = error_status(NotFound("Image x not found"), REQUEST_ID)
    assert details_of(status) == ["google.rpc.RequestInfo"]
    info = unpack(status.details[-1], error_details_pb2.RequestInfo)
    assert info.request_id == REQUEST_ID  # type: ignore[attr-defined]


def test_invalid_argument_lists_every_field_violation():
    error = InvalidArgument([FieldViolation("name", "too short"), FieldViolation("uri", "bad")])
    status = error_status(error, REQUEST_ID)
    assert status.code == Code.INVALID_ARGUMENT
    assert details_of(status) == ["google.rpc.BadRequest", "google.rpc.RequestInfo"]
    bad = unpack(status.details[0], error_details_pb2.BadRequest)
    assert [(v.field, v.description) for v in bad.field_violations] == [  # type: ignore[attr-defined]
        ("name", "too short"),
        ("uri", "bad"),
    ]


def test_a_rate_limit_carries_its_retry_delay():
    status = error_status(ResourceExhausted("slow down", retry_after=1.5), REQUEST_ID)
    assert status.code == Code.RESOURCE_EXHAUSTED
    assert details_of(status) == ["google.rpc.RetryInfo", "google.rpc.RequestInfo"]
    retry = unpack(status.details[0], error_details_pb2.RetryInfo)
    assert retry.retry_delay.ToTimedelta() == timedelta(seconds=1.5)  # type: ignore[attr-defined]


def test_an_unavailable_dependency_carries_the_advice_to_retry():
    status = error_status(Unavailable("database unavailable: the server is read-only"), REQUEST_ID)
    assert status.code == Code.UNAVAILABLE
    assert details_of(status) == ["google.rpc.RetryInfo", "google.rpc.RequestInfo"]
    retry = unpack(status.details[0], error_details_pb2.RetryInfo)
    assert retry.retry_delay.ToTimedelta() == timedelta(seconds=1)  # type: ignore[attr-defined]


def test_a_zero_retry_delay_is_sent_as_one_millisecond():
    status = error_status(ResourceExhausted("slow down", retry_after=0), REQUEST_ID)
    retry = unpack(status.details[0], error_details_pb2.RetryInfo)
    assert retry.retry_delay.ToTimedelta() == timedelta(milliseconds=1)  # type: ignore[attr-defined]


def test_a_quota_failure_names_its_subjects():
    error = ResourceExhausted(
        "too many", quota=[FieldViolation("folder:fld-a", "at most 10 unfinished operations")]
    )
    status = error_status(error, REQUEST_ID)
    assert details_of(status) == ["google.rpc.QuotaFailure", "google.rpc.RequestInfo"]
    quota = unpack(status.details[0], error_details_pb2.QuotaFailure)
    assert [(v.subject, v.description) for v in quota.violations] == [  # type: ignore[attr-defined]
        ("folder:fld-a", "at most 10 unfinished operations")
    ]


# --- operation_to_proto ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "metadata"),
    [
        (OperationKind.CREATE_IMAGE, "CreateImageMetadata"),
        (OperationKind.UPDATE_IMAGE, "UpdateImageMetadata"),
        (OperationKind.DELETE_IMAGE, "DeleteImageMetadata"),
    ],
)
def test_an_operation_carries_the_metadata_of_its_kind(kind: OperationKind, metadata: str):
    proto = operation_to_proto(operation(kind))
    assert proto.metadata.type_url == f"{TYPE}yandex.cloud.baremetal.v1alpha.{metadata}"
    unpacked = unpack(proto.metadata, getattr(image_service_pb2, metadata))
    assert unpacked.image_id == IMAGE.id  # type: ignore[attr-defined]


def test_a_running_operation_has_neither_result():
    proto = operation_to_proto(operation(OperationKind.CREATE_IMAGE))
    assert not proto.done
    assert proto.WhichOneof("result") is None
    assert proto.id == "opn" + "a1b2c3d4e5f6g7h8i"
    assert proto.description == "Create image"
    assert proto.created_by == "alice"
    assert proto.created_at.ToDatetime(UTC) == CREATED_AT
    assert proto.modified_at.ToDatetime(UTC) == CREATED_AT + timedelta(seconds=3)


def test_a_succeeded_operation_answers_its_image():
    proto = operation_to_proto(operation(OperationKind.UPDATE_IMAGE, done=True, response=IMAGE))
    assert proto.done
    assert proto.WhichOneof("result") == "response"
    assert proto.response.type_url == f"{TYPE}yandex.cloud.baremetal.v1alpha.Image"
    image = unpack(proto.response, image_pb2.Image)
    assert image == image_to_proto(IMAGE)
    assert image.status == image_pb2.Image.Status.READY  # type: ignore[attr-defined]
    assert dict(image.labels) == {"env": "prod"}  # type: ignore[attr-defined]


def test_a_failed_operation_answers_its_error():
    failed = operation(
        OperationKind.CREATE_IMAGE, done=True, error=OperationError(Code.NOT_FOUND, "404")
    )
    proto = operation_to_proto(failed)
    assert proto.WhichOneof("result") == "error"
    assert (proto.error.code, proto.error.message) == (Code.NOT_FOUND, "404")


def test_a_finished_delete_answers_empty():
    proto = operation_to_proto(operation(OperationKind.DELETE_IMAGE, done=True))
    assert proto.WhichOneof("result") == "response"
    assert proto.response.type_url == f"{TYPE}google.protobuf.Empty"
    assert unpack(proto.response, empty_pb2.Empty) == empty_pb2.Empty()


def test_an_encoded_operation_decodes_to_its_proto():
    finished = operation(OperationKind.UPDATE_IMAGE, done=True, response=IMAGE)
    decoded = operation_pb2.Operation.FromString(encode_operation(finished).wire)
    assert decoded == operation_to_proto(finished)


def test_the_frame_sends_an_encoded_operation_as_it_is():
    serialize = passing_encoded(operation_pb2.Operation.SerializeToString)
    assert serialize is not None
    finished = operation(OperationKind.UPDATE_IMAGE, done=True, response=IMAGE)
    encoded = encode_operation(finished)
    assert serialize(encoded) is encoded.wire  # neither encoded again nor copied
    assert serialize(operation_to_proto(finished)) == encoded.wire


def test_only_an_encoded_operation_passes_the_serializer_unencoded():
    serialize = passing_encoded(lambda message: b"serialized")
    assert serialize is not None
    assert serialize(EncodedOperation(b"as is")) == b"as is"
    # Bytes are not an answer of any method: they go through the method's serializer.
    assert serialize(b"as is") == b"serialized"


# --- longrunning_operation ------------------------------------------------------------------


def test_a_longrunning_operation_is_named_by_its_id_and_keeps_its_metadata():
    running = operation(OperationKind.UPDATE_IMAGE)
    proto = longrunning_operation(running)
    assert proto.name == running.id
    assert not proto.done
    assert proto.metadata == operation_to_proto(running).metadata
    assert proto.WhichOneof("result") is None


def test_a_longrunning_operation_keeps_the_response():
    proto = longrunning_operation(operation(OperationKind.UPDATE_IMAGE, done=True, response=IMAGE))
    assert proto.done
    assert unpack(proto.response, image_pb2.Image) == image_to_proto(IMAGE)


def test_a_longrunning_operation_keeps_the_error():
    failed = operation(
        OperationKind.UPDATE_IMAGE, done=True, error=OperationError(Code.ALREADY_EXISTS, "taken")
    )
    proto = longrunning_operation(failed)
    assert proto.WhichOneof("result") == "error"
    assert (proto.error.code, proto.error.message) == (Code.ALREADY_EXISTS, "taken")


def test_a_finished_delete_as_longrunning_answers_empty():
    proto = longrunning_operation(operation(OperationKind.DELETE_IMAGE, done=True))
    assert proto.response.type_url == f"{TYPE}google.protobuf.Empty"


# --- wait_seconds: WaitOperation's and REST's :wait's one timeout rule ------------------------


def wait_request(seconds: float | None = None) -> operations_pb2.WaitOperationRequest:
    request = operations_pb2.WaitOperationRequest(name="opn1")
    if seconds is not None:
        request.timeout.FromTimedelta(timedelta(seconds=seconds))
    return request


@pytest.mark.parametrize(
    ("timeout", "remaining", "waits"),
    [
        (None, None, MAX_WAIT_SECONDS),  # no timeout asked: the longest
        (1.5, None, 1.5),
        (MAX_WAIT_SECONDS * 10, None, MAX_WAIT_SECONDS),  # never longer than the longest
        (-3.0, None, 0.0),  # a negative timeout: the state as it stands
        (0.0, None, 0.0),
        (None, 1.0, 0.95),  # over before the client's deadline
        (30.0, 0.01, 0.0),
        (0.5, 10.0, 0.5),
    ],
)
def test_a_wait_lasts_the_timeout_at_most_the_longest_and_ends_before_the_deadline(
    timeout: float | None, remaining: float | None, waits: float
):
    assert wait_seconds(wait_request(timeout), remaining) == pytest.approx(waits)
