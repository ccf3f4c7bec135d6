"""Every validation rule and refusal of ``test_errors.py``, over REST: the HTTP status of its
code, and the error body (``code``, ``message``, the fields and kinds of its ``details``)
equal to the gRPC status of the same request; and what only REST can get wrong (JSON,
unknown fields, types, sizes, routes), answered 400/404/405 in JSON naming the field."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import uuid
from typing import Any

import pytest

from tests.e2e.client import create_ready_image, folder, image_id_of, rpc_error, unique, wait_done
from tests.e2e.rest import IMAGES, grpc_error_json, json_name
from tests.e2e.test_errors import CREATE_CASES, IMAGE_ID, UPDATE_CASES, create, update
from tests.support import ROOT
from yandex.cloud.baremetal.v1alpha import image_service_pb2
from yandex.cloud.operation import operation_service_pb2


async def same_error(rest: Any, method: str, request: Any, grpc_call: Any, status: int) -> Any:
    """Send ``request`` both ways; the REST answer is ``status`` and says what gRPC says,
    naming each field of the request by its JSON name where gRPC names the proto's."""
    error = await rpc_error(grpc_call(request))
    answer = await rest.send(method, request)
    assert answer.status == status, answer.text
    assert answer.error() == grpc_error_json(error, rest_names=True)
    return answer


@pytest.mark.parametrize(("field", "overrides"), CREATE_CASES)
async def test_create_refuses_an_invalid_field_naming_it(rest, images, db, field, overrides):
    request = create(**overrides)
    answer = await same_error(rest, "ImageService.Create", request, images.Create, 400)
    assert answer.json["code"] == 3
    assert answer.json["message"].startswith("Request validation error: ")
    assert json_name(field) in answer.field_violations()
    assert await db.fetchval("SELECT count(*) FROM images WHERE name = $1", request.name) == 0


@pytest.mark.parametrize(("field", "request_"), [case for case in UPDATE_CASES if case[1].image_id])
async def test_update_refuses_an_invalid_field_naming_it(rest, images, field, request_):
    answer = await same_error(rest, "ImageService.Update", request_, images.Update, 400)
    assert json_name(field) in answer.field_violations()


@pytest.mark.parametrize(
    ("field", "method", "request_"),
    [
        ("image_id", "Get", image_service_pb2.GetImageRequest(image_id="short")),
        ("folder_id", "List", image_service_pb2.ListImagesRequest(folder_id="")),
        ("page_size", "List", image_service_pb2.ListImagesRequest(folder_id="f", page_size=1001)),
        ("page_size", "List", image_service_pb2.ListImagesRequest(folder_id="f", page_size=-1)),
        ("page_token", "List", image_service_pb2.ListImagesRequest(folder_id="f", page_token="x")),
        ("page_size", "ListOperations", image_service_pb2.ListImageOperationsRequest(
            image_id=IMAGE_ID, page_size=1001)),
    ],
)  # fmt: skip
async def test_reads_refuse_invalid_fields(rest, images, field, method, request_):
    call = getattr(images, method)
    answer = await same_error(rest, f"ImageService.{method}", request_, call, 400)
    assert answer.field_violations() == [json_name(field)]


async def test_a_bad_page_size_is_named_as_rest_names_it_and_grpc_as_the_proto_does(rest, images):
    answer = await rest.get(IMAGES, params={"folderId": "f", "pageSize": "1001"})
    assert answer.status == 400
    assert answer.field_violations() == ["pageSize"]
    assert answer.json["message"].startswith("Request validation error: pageSize: ")
    request = image_service_pb2.ListImagesRequest(folder_id="f", page_size=1001)
    error = grpc_error_json(await rpc_error(images.List(request)))
    assert error["message"].startswith("Request validation error: page_size: ")
    assert error["message"].split(": ", 2)[2] == answer.json["message"].split(": ", 2)[2]


@pytest.mark.parametrize(
    ("value", "description"),
    [("ten", "invalid value: expected an integer"), ("-1", "must be"), ("1001", "must be")],
)
async def test_the_console_reads_bad_page_size_is_named_page_size_as_the_query_names_it(
    rest, value, description
):
    answer = await rest.get(
        f"/console/api/folders/{folder()}/operations", params={"pageSize": value}
    )
    assert answer.status == 400, answer.text
    assert answer.field_violations() == ["pageSize"]
    assert answer.json["message"].startswith(f"Request validation error: pageSize: {description}")


async def test_an_empty_id_in_the_path_matches_no_route(rest):
    for method, path in (("PATCH", f"{IMAGES}/"), ("GET", "/operations/"), ("GET", "//")):
        answer = await rest.call(method, path)
        assert answer.status == 404, (method, path)
        assert answer.error()["code"] == 5
        assert answer.json["message"] == f"No route for {method} {path}"


async def test_unknown_image_and_operation_are_not_found(rest, images, operations):
    answer = await same_error(
        rest, "ImageService.Get", image_service_pb2.GetImageRequest(image_id=IMAGE_ID),
        images.Get, 404,
    )  # fmt: skip
    assert IMAGE_ID in answer.json["message"]
    await same_error(rest, "ImageService.Update", update(description="x"), images.Update, 404)
    await same_error(
        rest, "ImageService.Delete", image_service_pb2.DeleteImageRequest(image_id=IMAGE_ID),
        images.Delete, 404,
    )  # fmt: skip
    for method, call in (("Get", operations.Get), ("Cancel", operations.Cancel)):
        request_type = getattr(operation_service_pb2, f"{method}OperationRequest")
        await same_error(
            rest, f"OperationService.{method}", request_type(operation_id="opn-unknown"), call, 404
        )
    answer = await rest.get("/operations/opn-unknown:wait")
    assert answer.status == 404
    assert answer.error()["message"] == "Operation opn-unknown not found"


async def test_a_taken_name_is_already_exists(rest, images, operations, blobs):
    folder_id = folder()
    first = await create_ready_image(images, operations, blobs.url("/blob/8"), folder_id)
    second = await create_ready_image(images, operations, blobs.url("/blob/8"), folder_id)
    request = create(folder_id=folder_id, name=first.name, uri=blobs.url("/blob/8"))
    answer = await same_error(rest, "ImageService.Create", request, images.Create, 409)
    assert answer.json["message"] == f"Image with name {first.name} already exists"
    renaming = update(image_id=second.id, name=first.name)
    await same_error(rest, "ImageService.Update", renaming, images.Update, 409)


async def test_an_image_not_ready_is_failed_precondition_400(rest, images, operations, blobs, db):
    image = await create_ready_image(images, operations, blobs.url("/blob/8"), folder())
    async with db.acquire() as conn, conn.transaction():
        await conn.execute("SELECT 1 FROM images WHERE id = $1 FOR KEY SHARE", image.id)
        first = await images.Update(update(image_id=image.id, description="first"))
        second = update(image_id=image.id, description="second")
        answer = await same_error(rest, "ImageService.Update", second, images.Update, 400)
        assert answer.json["code"] == 9
        assert "update in progress" in answer.json["message"]
        request = image_service_pb2.DeleteImageRequest(image_id=image.id)
        await same_error(rest, "ImageService.Delete", request, images.Delete, 400)
    await wait_done(operations, first.id)

    broken = await images.Create(
        create(folder_id=folder(), name=unique("bad"), uri=blobs.url("/status/404"))
    )
    await wait_done(operations, broken.id)
    request = update(image_id=image_id_of(broken), description="x")
    answer = await same_error(rest, "ImageService.Update", request, images.Update, 400)
    assert "ERROR" in answer.json["message"]


async def test_an_idempotency_key_of_another_request_or_malformed_is_refused(rest, images):
    request = create(folder_id=folder(), name=unique("keyed"), uri="http://127.0.0.1:1/x")
    key = str(uuid.uuid4())
    assert (
        await rest.send("ImageService.Create", request, headers={"Idempotency-Key": key})
    ).status == 200
    request.description = "another request"
    for value in (key, "has spaces", "k" * 129):
        keyed = (("idempotency-key", value),)
        error = await rpc_error(images.Create(request, metadata=keyed))
        answer = await rest.send("ImageService.Create", request, headers={"Idempotency-Key": value})
        assert answer.status == 400, value
        assert answer.error() == grpc_error_json(error)
        assert answer.field_violations() == ["idempotency-key"]


# --- what only REST can get wrong ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field", "description"),
    [
        (b'{"folderId": "f", ', "body", "is not valid JSON: Expecting property name enclosed"),
        (b"\xff\xfe{}", "body", "is not valid JSON"),
        (b'["folderId"]', "body", "must be a JSON object"),
        (b'"text"', "body", "must be a JSON object"),
        (b"[" * 100_000, "body", "is nested too deeply"),
        (b'{"folderId": "f", "nmae": "x"}', "nmae", "unknown field"),
        (b'{"folderId": 7}', "folderId", "invalid value: expected a string"),
        (b'{"folder_id": 7}', "folderId", "invalid value: expected a string"),
        (b'{"labels": ["a"]}', "labels", "invalid value: expected an object with a string"),
        (b'{"labels": {"a": 1}}', "labels", "invalid value: expected an object with a string"),
        (b'{"folderId": "f", "folder_id": "g"}', "folderId", "is given more than once"),
        (b'{"name": null, "uri": {"x": 1}}', "uri", "invalid value: expected a string"),
    ],
)
async def test_a_body_that_does_not_decode_is_400_naming_the_field(rest, body, field, description):
    answer = await rest.call("POST", IMAGES, data=body)
    assert answer.status == 400, answer.text
    error = answer.error()
    assert error["code"] == 3
    [violation] = error["details"][0]["fieldViolations"]
    assert violation["field"] == field
    assert violation["description"].startswith(description)
    assert error["message"] == f"Request validation error: {field}: {violation['description']}"


@pytest.mark.parametrize(
    ("path", "params", "field", "description"),
    [
        (IMAGES, {"folderId": "f", "pageSize": "ten"}, "pageSize", "invalid value: expected an"),
        (IMAGES, {"folderId": "f", "pageSize": "9" * 20}, "pageSize", "invalid value"),
        (IMAGES, {"folderId": "f", "page_size": "ten"}, "pageSize", "invalid value: expected an"),
        (IMAGES, {"folderId": "f", "colour": "red"}, "colour", "unknown query parameter"),
        (IMAGES, [("folderId", "f"), ("folderId", "g")], "folderId", "is given more than once"),
        (f"{IMAGES}/{IMAGE_ID}", {"imageId": IMAGE_ID}, "imageId", "is given by the path"),
        ("/operations/opn1:wait", {"timeout": "30"}, "timeout", "invalid value: expected a dur"),
    ],
)  # fmt: skip
async def test_a_query_that_does_not_decode_is_400_naming_the_field(
    rest, path, params, field, description
):
    answer = await rest.get(path, params=params)
    assert answer.status == 400, answer.text
    [violation] = answer.error()["details"][0]["fieldViolations"]
    assert (violation["field"], violation["description"][: len(description)]) == (
        field,
        description,
    )


async def test_a_body_where_the_method_takes_none_is_400(rest):
    answer = await rest.call("GET", f"{IMAGES}/{IMAGE_ID}", data=b'{"imageId": "x"}')
    assert answer.status == 400
    assert answer.field_violations() == ["body"]


async def test_a_body_over_the_message_limit_is_400_before_anything_is_read(rest):
    body = json.dumps({"folderId": "f", "description": "d" * (1024 * 1024)}).encode()

    async def chunked() -> Any:  # no Content-Length: the limit holds while reading
        for start in range(0, len(body), 65536):
            yield body[start : start + 65536]

    for data in (body, chunked()):
        answer = await rest.call("POST", IMAGES, data=data)
        assert answer.status == 400, answer.text
        assert (
            answer.error()["message"]
            == "Request validation error: body: must be at most 1048576 bytes"
        )
        assert answer.field_violations() == ["body"]


async def test_a_decoding_error_comes_after_authentication(rest):
    anonymous = rest.as_caller(None)
    answer = await anonymous.call("POST", IMAGES, data=b"not json")
    assert answer.status == 401
    assert answer.error()["code"] == 16


async def test_unknown_paths_and_methods_are_answered_in_json(rest):
    answer = await rest.get("/v1/nothing/here")
    assert (answer.status, answer.error()["code"]) == (404, 5)
    answer = await rest.call("PUT", f"{IMAGES}/{IMAGE_ID}")
    assert (answer.status, answer.error()["code"]) == (405, 12)
    assert set(answer.headers["Allow"].split(", ")) == {"GET", "PATCH", "DELETE"}
    answer = await rest.call("DELETE", "/console")
    assert answer.status == 405
    assert (await rest.get("/console/nothing.js")).status == 404
    answer = await rest.call("POST", "/")
    assert (answer.status, answer.error()["code"]) == (404, 5)


async def test_the_root_leads_a_browser_to_the_console(rest):
    async with rest.session.get(rest.base + "/", allow_redirects=False) as answer:
        assert answer.status == 302
        assert answer.headers["Location"] == "/console"
    async with rest.session.get(rest.base + "/") as followed:  # as a browser follows it
        assert followed.status == 200
        assert "Operations console" in await followed.text()


def test_a_taken_http_port_ends_the_api_with_one_line(own_stack_env):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "service"],
            cwd=ROOT,
            env=own_stack_env(HTTP_LISTEN=f"127.0.0.1:{port}"),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"error: cannot listen on 127.0.0.1:{port}: the port is in use (another API still"
        " running?); stop it or set HTTP_LISTEN to a free host:port"
    )
