"""REST transcoding without a server: rules read from the descriptors, path templates, routes,
requests decoded (or refused naming the field), answers encoded, statuses mapped."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from google.api import http_pb2
from google.longrunning import operations_pb2
from google.protobuf import duration_pb2, field_mask_pb2, type_pb2
from google.rpc import error_details_pb2, status_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from service.domain.errors import Code, InvalidArgument
from service.entrypoints.grpc.convert import EncodedOperation, pack
from service.entrypoints.http.paths import Match, PathTemplate, Routes
from service.entrypoints.http.responses import (
    HTTP_STATUS,
    error_json,
    http_status,
    retry_after,
    with_json_field_paths,
)
from service.entrypoints.http.routes import kept_json
from service.entrypoints.http.transcoding import Binding, HttpInput, bindings, json_field_path
from yandex.cloud.baremetal.v1alpha import image_pb2, image_service_pb2
from yandex.cloud.operation import operation_pb2, operation_service_pb2

IMAGE_SERVICE = image_service_pb2.DESCRIPTOR.services_by_name["ImageService"]
OPERATION_SERVICE = operation_service_pb2.DESCRIPTOR.services_by_name["OperationService"]
BY_NAME = {b.method.rsplit("/", 1)[1]: b for b in bindings(IMAGE_SERVICE)} | {
    "Operation" + b.method.rsplit("/", 1)[1]: b for b in bindings(OPERATION_SERVICE)
}


def given_input(body: bytes = b"", query=(), **path_values: str) -> HttpInput:
    return HttpInput(path_values, tuple(query), body)


def violations(binding: Binding, given: HttpInput) -> list[tuple[str, str]]:
    with pytest.raises(InvalidArgument) as refused:
        binding.decode(given)
    return [(v.field, v.description) for v in refused.value.violations]


def binding_for(request_type, rule: http_pb2.HttpRule) -> Binding:
    return Binding.from_rule("/test.Service/Method", rule, request_type, request_type)


# --- the rules of the protos --------------------------------------------------------------------


def test_every_rule_of_the_public_api_is_read_from_the_descriptors():
    found = {
        (b.method, b.http_method, b.template.text, b.body)
        for b in bindings(IMAGE_SERVICE) + bindings(OPERATION_SERVICE)
    }
    images = "/yandex.cloud.baremetal.v1alpha.ImageService/"
    operations = "/yandex.cloud.operation.OperationService/"
    assert found == {
        (images + "Get", "GET", "/baremetal/v1alpha/images/{image_id}", ""),
        (images + "List", "GET", "/baremetal/v1alpha/images", ""),
        (images + "Create", "POST", "/baremetal/v1alpha/images", "*"),
        (images + "Update", "PATCH", "/baremetal/v1alpha/images/{image_id}", "*"),
        (images + "Delete", "DELETE", "/baremetal/v1alpha/images/{image_id}", ""),
        (images + "ListOperations", "GET", "/baremetal/v1alpha/images/{image_id}/operations", ""),
        (operations + "Get", "GET", "/operations/{operation_id}", ""),
        (operations + "Cancel", "POST", "/operations/{operation_id}:cancel", ""),
    }


def test_a_rule_that_binds_an_unknown_field_is_refused_at_start_up():
    with pytest.raises(ValueError, match="unknown field"):
        binding_for(type_pb2.Field, http_pb2.HttpRule(get="/x/{nope}"))
    with pytest.raises(ValueError, match="is not a field"):
        binding_for(type_pb2.Field, http_pb2.HttpRule(post="/x", body="nope"))
    with pytest.raises(ValueError, match="without a pattern"):
        binding_for(type_pb2.Field, http_pb2.HttpRule())


# --- path templates and routes ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "path", "values"),
    [
        ("/v1/images/{image_id}", "/v1/images/img1", {"image_id": "img1"}),
        ("/v1/images/{image_id}", "/v1/images/a%2Fb%20c", {"image_id": "a/b c"}),
        ("/v1/images/{image_id}", "/v1/images/img1/x", None),
        ("/v1/images/{image_id}", "/v1/images/", None),
        ("/ops/{operation_id}:cancel", "/ops/opn1:cancel", {"operation_id": "opn1"}),
        ("/ops/{operation_id}:cancel", "/ops/opn1", None),
        ("/v1/{name=shelves/*}/books", "/v1/shelves/s1/books", {"name": "shelves/s1"}),
        ("/v1/{name=files/**}", "/v1/files/a/b/c", {"name": "files/a/b/c"}),
        ("/v1/*/{id}", "/v1/anything/7", {"id": "7"}),
    ],
)
def test_a_template_matches_raw_paths_and_decodes_its_values(template, path, values):
    assert PathTemplate.parse(template).match(path) == values


@pytest.mark.parametrize("template", ["no/slash", "/a//b", "/a/{1bad}", "/a/{x=b{c}}", "/a/b*"])
def test_a_malformed_template_is_refused(template):
    with pytest.raises(ValueError):  # noqa: PT011 - the message names the template
        PathTemplate.parse(template)


def test_a_route_with_a_verb_comes_before_a_variable_that_would_take_it():
    routes = Routes(
        [
            ("GET", PathTemplate.parse("/operations/{id}"), "get"),
            ("GET", PathTemplate.parse("/operations/{id}:wait"), "wait"),
            ("POST", PathTemplate.parse("/operations/{id}:cancel"), "cancel"),
        ]
    )
    assert routes.find("GET", "/operations/o1:wait") == Match("wait", {"id": "o1"})
    assert routes.find("GET", "/operations/o1") == Match("get", {"id": "o1"})
    assert routes.find("POST", "/operations/o1:cancel") == Match("cancel", {"id": "o1"})
    assert routes.find("DELETE", "/operations/o1") == {"GET"}
    assert routes.find("GET", "/nothing") == set()


# --- requests -----------------------------------------------------------------------------------


def test_create_reads_the_whole_body_in_either_field_naming():
    body = b'{"folderId": "f", "name": "n", "uri": "http://h/x", "labels": {"a": "b"}}'
    request = BY_NAME["Create"].decode(given_input(body))
    assert request == image_service_pb2.CreateImageRequest(
        folder_id="f", name="n", uri="http://h/x", labels={"a": "b"}
    )
    snake = BY_NAME["Create"].decode(given_input(b'{"folder_id": "f"}'))
    assert snake.folder_id == "f"
    assert BY_NAME["Create"].decode(given_input(b"  ")) == image_service_pb2.CreateImageRequest()


def test_update_takes_its_id_from_the_path_and_the_mask_as_a_string():
    body = b'{"imageId": "ignored", "updateMask": "name,labels", "name": "n"}'
    request = BY_NAME["Update"].decode(given_input(body, image_id="img1"))
    assert request.image_id == "img1"
    assert request.update_mask == field_mask_pb2.FieldMask(paths=["name", "labels"])
    assert request.name == "n"


def test_list_reads_the_query_in_either_field_naming():
    query = [("folderId", "f"), ("page_size", "20"), ("pageToken", "t"), ("orderBy", "name")]
    request = BY_NAME["List"].decode(given_input(query=[*query, ("filter", 'name="x"')]))
    assert request == image_service_pb2.ListImagesRequest(
        folder_id="f", page_size=20, page_token="t", order_by="name", filter='name="x"'
    )


def test_query_values_of_every_kind():
    binding = binding_for(type_pb2.Field, http_pb2.HttpRule(get="/fields/{name}"))
    query = [("number", "7"), ("packed", "true"), ("kind", "TYPE_STRING"), ("jsonName", "j")]
    request = binding.decode(given_input(query=query, name="n"))
    assert request == type_pb2.Field(
        name="n", number=7, packed=True, kind=type_pb2.Field.TYPE_STRING, json_name="j"
    )
    types = binding_for(type_pb2.Type, http_pb2.HttpRule(get="/types"))
    repeated = types.decode(given_input(query=[("oneofs", "a"), ("oneofs", "b")]))
    assert list(repeated.oneofs) == ["a", "b"]
    waits = Binding.from_rule(
        "/w",
        http_pb2.HttpRule(get="/w/{name}"),
        operations_pb2.WaitOperationRequest,
        operation_pb2.Operation,
    )
    assert waits.decode(given_input(query=[("timeout", "1.5s")], name="o")).timeout == (
        duration_pb2.Duration(seconds=1, nanos=500_000_000)
    )


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ([("colour", "red")], [("colour", "unknown query parameter")]),
        ([("number", "seven")], [("number", "invalid value: expected an integer")]),
        ([("number", "1"), ("number", "2")], [("number", "is given more than once")]),
        ([("packed", "yes")], [("packed", "invalid value: expected true or false")]),
        ([("kind", "TYPE_NOPE")], [("kind", "invalid value: expected one of TYPE_UNKNOWN")]),
        ([("name", "x")], [("name", "is given by the path")]),
        ([("options", "x")], [("options", "cannot be given as a query parameter")]),
    ],
)
def test_a_query_that_does_not_decode_names_the_field(query, expected):
    binding = binding_for(type_pb2.Field, http_pb2.HttpRule(get="/fields/{name}"))
    found = violations(binding, given_input(query=query, name="n"))
    assert [(field, text[: len(expected[0][1])]) for field, text in found] == expected


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"{", ("body", "is not valid JSON: Expecting property name enclosed in double quotes")),
        (b"\xff", ("body", "is not valid JSON")),
        (b"[]", ("body", "must be a JSON object")),
        (b"[" * 50_000, ("body", "is nested too deeply")),
        (b'{"nope": 1}', ("nope", "unknown field")),
        (b'{"name": 1}', ("name", "invalid value: expected a string")),
        (b'{"labels": {"k": 1}}', ("labels", "invalid value: expected an object with a string")),
        (b'{"labels": "k"}', ("labels", "invalid value: expected an object with a string")),
        (b'{"folderId": "a", "folder_id": "b"}', ("folder_id", "is given more than once")),
    ],
)
def test_a_body_that_does_not_decode_names_the_field(body, expected):
    [(field, description)] = violations(BY_NAME["Create"], given_input(body))
    assert (field, description[: len(expected[1])]) == expected


def test_a_body_or_query_where_the_rule_takes_none_is_refused():
    assert violations(BY_NAME["Get"], given_input(b"{}", image_id="i")) == [
        ("body", "must be empty: this method reads the path and the query")
    ]
    assert violations(BY_NAME["Create"], given_input(b"{}", query=[("name", "n")])) == [
        ("name", "unknown query parameter: send it in the body")
    ]


def test_a_body_rule_naming_a_field_reads_that_field():
    binding = binding_for(type_pb2.Type, http_pb2.HttpRule(post="/t/{name}", body="oneofs"))
    request = binding.decode(given_input(b'["a", "b"]', name="n"))
    assert (request.name, list(request.oneofs)) == ("n", ["a", "b"])
    assert violations(binding, given_input(b'{"a": 1}', name="n")) == [
        ("oneofs", "invalid value: expected a list, each a string")
    ]


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)
KEYS = st.sampled_from(["folderId", "folder_id", "name", "labels", "pageSize", "updateMask", "x"])


@settings(max_examples=400, deadline=None, derandomize=True, database=None)
@given(
    method=st.sampled_from(sorted(BY_NAME)),
    body=st.one_of(
        st.binary(max_size=64),
        st.dictionaries(KEYS | st.text(max_size=8), JSON, max_size=5).map(
            lambda d: json.dumps(d).encode()
        ),
    ),
    query=st.lists(st.tuples(KEYS | st.text(max_size=8), st.text(max_size=12)), max_size=4),
    path_value=st.text(max_size=24),
)
def test_decoding_anything_gives_a_request_or_names_what_is_wrong(method, body, query, path_value):
    binding = BY_NAME[method]
    path_values = {name: path_value for name in binding.template.variables}
    try:
        binding.decode(HttpInput(path_values, tuple(query), body))
    except InvalidArgument as exc:
        refused = exc
    else:
        return
    assert refused.violations
    assert all(v.field and v.description for v in refused.violations)
    assert refused.message.startswith("Request validation error: ")


# --- answers and statuses -----------------------------------------------------------------------


def test_an_answer_is_canonical_json_whether_given_as_a_message_or_encoded():
    image = image_pb2.Image(id="img1", status=image_pb2.Image.READY, labels={"a": "b"})
    operation = operation_pb2.Operation(id="opn1", done=True, response=pack(image))
    binding = BY_NAME["OperationGet"]
    expected = {
        "id": "opn1",
        "done": True,
        "response": {
            "@type": "type.googleapis.com/yandex.cloud.baremetal.v1alpha.Image",
            "id": "img1",
            "status": "READY",
            "labels": {"a": "b"},
        },
    }
    assert json.loads(binding.encode(operation)) == expected
    encoded = EncodedOperation(operation.SerializeToString())
    assert binding.encode(encoded) == binding.encode(operation)
    assert json.loads(binding.encode(encoded)) == expected
    # And through the route's encoder, which keeps the JSON of an encoded one.
    kept = kept_json(binding.encode, capacity=2)
    assert kept(encoded) == kept(encoded) == kept(operation) == binding.encode(operation)
    page = image_service_pb2.ListImagesResponse(images=[image])
    only = Binding.from_rule(
        "/m",
        http_pb2.HttpRule(get="/i", response_body="images"),
        image_service_pb2.ListImagesRequest,
        image_service_pb2.ListImagesResponse,
    )
    assert json.loads(only.encode(page)) == [
        {"id": "img1", "status": "READY", "labels": {"a": "b"}}
    ]


def test_every_code_has_the_http_status_of_googles_mapping():
    assert set(HTTP_STATUS) == set(Code)
    assert {code.name: http_status(code) for code in Code} == {
        "OK": 200, "CANCELLED": 499, "UNKNOWN": 500, "INVALID_ARGUMENT": 400,
        "DEADLINE_EXCEEDED": 504, "NOT_FOUND": 404, "ALREADY_EXISTS": 409,
        "PERMISSION_DENIED": 403, "UNAUTHENTICATED": 401, "RESOURCE_EXHAUSTED": 429,
        "FAILED_PRECONDITION": 400, "ABORTED": 409, "OUT_OF_RANGE": 400, "UNIMPLEMENTED": 501,
        "INTERNAL": 500, "UNAVAILABLE": 503, "DATA_LOSS": 500,
    }  # fmt: skip
    assert http_status(99) == 500


def test_an_error_body_is_code_message_and_details_with_their_types():
    delay = duration_pb2.Duration()
    delay.FromTimedelta(timedelta(seconds=1.2))
    status = status_pb2.Status(
        code=8, message="slow down", details=[pack(error_details_pb2.RetryInfo(retry_delay=delay))]
    )
    assert json.loads(error_json(status)) == {
        "code": 8,
        "message": "slow down",
        "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "1.200s"}],
    }
    assert retry_after(status) == "2"
    assert retry_after(status_pb2.Status(code=8)) is None
    assert json.loads(error_json(status_pb2.Status(code=5))) == {
        "code": 5,
        "message": "",
        "details": [],
    }


def test_the_json_of_an_answer_given_encoded_is_made_once():
    made: list[object] = []

    def encode(answer: object) -> bytes:
        made.append(answer)
        return b"{}"

    kept = kept_json(encode, capacity=2)
    wire = operation_pb2.Operation(id="opn1", done=True).SerializeToString
    finished = EncodedOperation(wire())
    assert kept(finished) == kept(finished) == b"{}"
    assert kept(EncodedOperation(wire())) == b"{}"  # the same operation, encoded again
    unfinished = operation_pb2.Operation(id="opn2")
    kept(unfinished)
    kept(unfinished)
    assert made == [finished, unfinished, unfinished]  # messages are encoded every time


@pytest.mark.parametrize(
    ("path", "shown"),
    [
        ("page_size", "pageSize"),
        ("update_mask.paths[1]", "updateMask.paths[1]"),
        ('labels["a_b"]', 'labels["a_b"]'),
        ("folder_id", "folderId"),
        ("colour_name", "colour_name"),  # no such field: kept as the caller wrote it
        ("body", "body"),
        ("update_mask.no_such.page_size", "updateMask.no_such.page_size"),
    ],
)
def test_a_field_path_is_shown_by_its_json_names(path, shown):
    descriptor = image_service_pb2.UpdateImageRequest.DESCRIPTOR
    if path in ("page_size", "folder_id"):
        descriptor = image_service_pb2.ListImagesRequest.DESCRIPTOR
    assert json_field_path(descriptor, path) == shown


def test_a_rest_error_names_the_fields_by_json_name_in_details_and_message():
    violations = [
        error_details_pb2.BadRequest.FieldViolation(field="page_size", description="too big"),
        error_details_pb2.BadRequest.FieldViolation(field="folder_id", description="missing"),
    ]
    info = error_details_pb2.RequestInfo(request_id="r1")
    status = status_pb2.Status(
        code=3,
        message="Request validation error: page_size: too big",
        details=[pack(info), pack(error_details_pb2.BadRequest(field_violations=violations))],
    )
    descriptor = image_service_pb2.ListImagesRequest.DESCRIPTOR

    shown = with_json_field_paths(status, lambda p: json_field_path(descriptor, p))

    assert shown.message == "Request validation error: pageSize: too big"
    bad = error_details_pb2.BadRequest()
    assert shown.details[1].Unpack(bad)
    assert [v.field for v in bad.field_violations] == ["pageSize", "folderId"]
    assert shown.details[0] == status.details[0]
    assert status.message.endswith("page_size: too big")  # the gRPC status is left as it was
    other = status_pb2.Status(code=5, message="Image x not found", details=[pack(info)])
    assert with_json_field_paths(other, str) is other
