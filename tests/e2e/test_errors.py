"""Every validation rule of the public API, and every refusal, through the real server."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import field_mask_pb2

from tests.e2e.client import (
    create_ready_image,
    folder,
    image_id_of,
    rpc_error,
    unique,
    violated_fields,
    wait_done,
)
from yandex.cloud.baremetal.v1alpha import image_pb2, image_service_pb2
from yandex.cloud.operation import operation_service_pb2

IMAGE_ID = "img" + "a" * 17
INVALID = grpc.StatusCode.INVALID_ARGUMENT


def create(**overrides):
    fields = {
        "folder_id": "folder-ok",
        "name": "valid-name",
        "uri": "http://127.0.0.1:1/x",
    }
    fields.update(overrides)
    return image_service_pb2.CreateImageRequest(**fields)


CREATE_CASES = [
    ("folder_id", {"folder_id": ""}),
    ("folder_id", {"folder_id": "f" * 51}),
    ("folder_id", {"folder_id": "Folder"}),
    ("folder_id", {"folder_id": "1folder"}),
    ("folder_id", {"folder_id": "folder_x"}),
    ("name", {"name": ""}),
    ("name", {"name": "a"}),
    ("name", {"name": "a" * 64}),
    ("name", {"name": "Upper"}),
    ("name", {"name": "trailing-"}),
    ("name", {"name": "1leading"}),
    ("name", {"name": "under_score"}),
    ("name", {"name": "two\nlines"}),
    ("description", {"description": "d" * 1025}),
    ("uri", {"uri": ""}),
    ("uri", {"uri": "http://h/" + "p" * 1020}),
    ("uri", {"uri": "ftp://example.org/image"}),
    ("uri", {"uri": "not a url"}),
    ("labels", {"labels": {f"k{i}": "v" for i in range(65)}}),
    ("labels", {"labels": {"Key": "v"}}),
    ("labels", {"labels": {"1key": "v"}}),
    ("labels", {"labels": {"k" * 64: "v"}}),
    ("labels[key]", {"labels": {"key": "Value"}}),
    ("labels[key]", {"labels": {"key": "v" * 64}}),
]


@pytest.mark.parametrize(("field", "overrides"), CREATE_CASES)
async def test_create_refuses_an_invalid_field_naming_it(images, db, field, overrides):
    request = create(**overrides)
    error = await rpc_error(images.Create(request))
    assert error.code() == INVALID
    assert field in violated_fields(error)
    assert error.details().startswith("Request validation error: ")
    count = await db.fetchval("SELECT count(*) FROM images WHERE name = $1", request.name)
    assert count == 0


@pytest.mark.parametrize(
    "overrides",
    [
        {"folder_id": "f" * 50, "name": "ab"},
        {"name": "a" * 63, "description": "d" * 1024},
        {"labels": {f"k{i}": "" for i in range(64)}},
        {"labels": {"k" * 63: "v" * 63, "a-b_c": "x_y-z"}},
        {"uri": "https://h/" + "p" * 1014},
    ],
)
async def test_create_accepts_values_at_the_limits(images, operations, overrides):
    overrides.setdefault("name", unique("edge"))
    operation = await images.Create(create(**overrides))
    assert operation.id
    await wait_done(operations, operation.id)


def update(**fields):
    fields.setdefault("image_id", IMAGE_ID)
    return image_service_pb2.UpdateImageRequest(**fields)


UPDATE_CASES = [
    ("image_id", update(image_id="")),
    ("image_id", update(image_id="img" + "a" * 16)),
    ("image_id", update(image_id="img" + "a" * 18)),
    ("image_id", update(image_id="IMG" + "a" * 17)),
    ("image_id", update(image_id="1mg" + "a" * 17)),
    ("name", update(name="Bad_Name")),
    ("name", update(update_mask=field_mask_pb2.FieldMask(paths=["name"]))),
    ("description", update(description="d" * 1025)),
    ("labels", update(labels={"Bad": "v"})),
    ("update_mask", update(update_mask=field_mask_pb2.FieldMask(paths=["status"]))),
    ("update_mask", update(update_mask=field_mask_pb2.FieldMask(paths=["labels.a"]))),
    ("update_mask", update(update_mask=field_mask_pb2.FieldMask(paths=["*", "name"]))),
]


@pytest.mark.parametrize(("field", "request_"), UPDATE_CASES)
async def test_update_refuses_an_invalid_field_naming_it(images, field, request_):
    error = await rpc_error(images.Update(request_))
    assert error.code() == INVALID
    assert field in violated_fields(error)


@pytest.mark.parametrize(
    ("field", "call"),
    [
        ("image_id", lambda s: s.Get(image_service_pb2.GetImageRequest(image_id="short"))),
        ("folder_id", lambda s: s.List(image_service_pb2.ListImagesRequest(folder_id=""))),
        (
            "page_size",
            lambda s: s.List(image_service_pb2.ListImagesRequest(folder_id="f", page_size=1001)),
        ),
        (
            "page_size",
            lambda s: s.List(image_service_pb2.ListImagesRequest(folder_id="f", page_size=-1)),
        ),
        (
            "page_token",
            lambda s: s.List(
                image_service_pb2.ListImagesRequest(folder_id="f", page_token="garbage")
            ),
        ),
    ],
)
async def test_reads_refuse_invalid_fields(images, field, call):
    error = await rpc_error(call(images))
    assert error.code() == INVALID
    assert violated_fields(error) == [field]


async def test_operation_get_requires_an_id(operations):
    error = await rpc_error(operations.Get(operation_service_pb2.GetOperationRequest()))
    assert error.code() == INVALID
    assert violated_fields(error) == ["operation_id"]


async def test_unknown_image_and_operation_are_not_found(images, operations):
    error = await rpc_error(images.Get(image_service_pb2.GetImageRequest(image_id=IMAGE_ID)))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert IMAGE_ID in error.details()
    error = await rpc_error(images.Update(update(description="x")))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    error = await rpc_error(
        operations.Get(operation_service_pb2.GetOperationRequest(operation_id="opn-unknown"))
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND


async def test_create_with_a_taken_name_is_already_exists(images, operations, blobs, db):
    folder_id = folder()
    image = await create_ready_image(images, operations, blobs.url("/blob/8"), folder_id)
    error = await rpc_error(
        images.Create(create(folder_id=folder_id, name=image.name, uri=blobs.url("/blob/8")))
    )
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    assert error.details() == f"Image with name {image.name} already exists"
    assert await db.fetchval("SELECT count(*) FROM images WHERE folder_id = $1", folder_id) == 1
    # The same name in another folder is fine.
    other = await images.Create(
        create(folder_id=folder(), name=image.name, uri=blobs.url("/blob/8"))
    )
    await wait_done(operations, other.id)


async def test_update_to_a_taken_name_is_already_exists_and_leaves_the_image(
    images, operations, blobs, db
):
    folder_id = folder()
    first = await create_ready_image(images, operations, blobs.url("/blob/8"), folder_id)
    second = await create_ready_image(images, operations, blobs.url("/blob/8"), folder_id)
    operations_before = await db.fetchval("SELECT count(*) FROM operations")
    error = await rpc_error(
        images.Update(update(image_id=second.id, name=first.name, description="changed"))
    )
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    assert error.details() == f"Image with name {first.name} already exists"
    after = await images.Get(image_service_pb2.GetImageRequest(image_id=second.id))
    assert after == second
    assert after.status == image_pb2.Image.READY
    assert await db.fetchval("SELECT count(*) FROM operations") == operations_before


async def test_renaming_an_image_to_its_own_name_is_allowed(images, operations, blobs):
    image = await create_ready_image(images, operations, blobs.url("/blob/8"), folder())
    op = await images.Update(update(image_id=image.id, name=image.name))
    done = await wait_done(operations, op.id)
    assert done.WhichOneof("result") == "response"


async def test_update_of_an_image_that_is_not_ready_is_failed_precondition(
    images, operations, blobs, db
):
    image = await create_ready_image(images, operations, blobs.url("/blob/8"), folder())
    async with db.acquire() as conn, conn.transaction():
        # A key-share lock lets the API mark the image UPDATING but holds the worker's
        # FOR UPDATE, so the first Update stays unfinished while the second arrives.
        await conn.execute("SELECT 1 FROM images WHERE id = $1 FOR KEY SHARE", image.id)
        first = await images.Update(update(image_id=image.id, description="first"))
        error = await rpc_error(images.Update(update(image_id=image.id, description="second")))
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "update in progress" in error.details()
    done = await wait_done(operations, first.id)
    assert done.WhichOneof("result") == "response"
    after = await images.Get(image_service_pb2.GetImageRequest(image_id=image.id))
    assert after.description == "first"
    assert after.status == image_pb2.Image.READY


async def test_update_of_an_image_in_error_is_failed_precondition(images, operations, blobs):
    created = await images.Create(
        create(folder_id=folder(), name=unique("bad"), uri=blobs.url("/status/404"))
    )
    await wait_done(operations, created.id)

    error = await rpc_error(images.Update(update(image_id=image_id_of(created), description="x")))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "ERROR" in error.details()
