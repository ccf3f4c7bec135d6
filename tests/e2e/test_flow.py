"""The whole life of an image through the real API, workers, PostgreSQL and RabbitMQ."""

from __future__ import annotations

import hashlib

import grpc
from google.protobuf import any_pb2, field_mask_pb2

from tests.e2e.client import folder, image_id_of, response_image, unique, wait_done
from tests.support import blob
from yandex.cloud.baremetal.v1alpha import image_pb2, image_service_pb2
from yandex.cloud.operation import operation_service_pb2


async def test_create_poll_update_poll_get_list(images, operations, blobs):
    folder_id = folder()
    name = unique("ubuntu")
    size = 3 * 1024 * 1024 + 17
    created = await images.Create(
        image_service_pb2.CreateImageRequest(
            folder_id=folder_id,
            name=name,
            description="base image",
            uri=blobs.url(f"/blob/{size}"),
            labels={"os": "linux"},
        )
    )
    assert not created.done
    assert created.description == "Create image"
    assert created.metadata.type_url.endswith("yandex.cloud.baremetal.v1alpha.CreateImageMetadata")
    image_id = image_id_of(created)
    assert len(image_id) == 20

    creating = await images.Get(image_service_pb2.GetImageRequest(image_id=image_id))
    assert creating.status in (image_pb2.Image.CREATING, image_pb2.Image.READY)

    done = await wait_done(operations, created.id)
    image = response_image(done)
    assert done.response.type_url == "type.googleapis.com/yandex.cloud.baremetal.v1alpha.Image"
    assert image.status == image_pb2.Image.READY
    assert image.checksum == hashlib.md5(blob(size)).hexdigest()
    assert done.modified_at.ToDatetime() >= done.created_at.ToDatetime()

    updated = await images.Update(
        image_service_pb2.UpdateImageRequest(
            image_id=image_id,
            update_mask=field_mask_pb2.FieldMask(paths=["description", "labels"]),
            description="patched",
            labels={"os": "linux", "tier": "gold"},
        )
    )
    assert updated.metadata.type_url.endswith("UpdateImageMetadata")
    assert image_id_of(updated) == image_id
    during = await images.Get(image_service_pb2.GetImageRequest(image_id=image_id))
    assert during.status in (image_pb2.Image.UPDATING, image_pb2.Image.READY)

    finished = response_image(await wait_done(operations, updated.id))
    assert finished.description == "patched"
    assert dict(finished.labels) == {"os": "linux", "tier": "gold"}
    assert finished.name == name

    got = await images.Get(image_service_pb2.GetImageRequest(image_id=image_id))
    assert got == finished
    assert got.status == image_pb2.Image.READY

    listed = await images.List(image_service_pb2.ListImagesRequest(folder_id=folder_id))
    assert [i.id for i in listed.images] == [image_id]
    assert listed.images[0] == got
    assert listed.next_page_token == ""


async def test_update_without_mask_changes_populated_fields_only(images, operations, blobs):
    folder_id = folder()
    created = await images.Create(
        image_service_pb2.CreateImageRequest(
            folder_id=folder_id,
            name=unique("img"),
            description="keep me",
            uri=blobs.url("/blob/10"),
            labels={"a": "1"},
        )
    )
    image = response_image(await wait_done(operations, created.id))
    new_name = unique("renamed")
    op = await images.Update(image_service_pb2.UpdateImageRequest(image_id=image.id, name=new_name))
    after = response_image(await wait_done(operations, op.id))
    assert after.name == new_name
    assert after.description == "keep me"
    assert dict(after.labels) == {"a": "1"}


async def test_masked_empty_values_clear_description_and_labels(images, operations, blobs):
    created = await images.Create(
        image_service_pb2.CreateImageRequest(
            folder_id=folder(),
            name=unique("img"),
            description="to be cleared",
            uri=blobs.url("/blob/10"),
            labels={"a": "1"},
        )
    )
    image = response_image(await wait_done(operations, created.id))
    op = await images.Update(
        image_service_pb2.UpdateImageRequest(
            image_id=image.id, update_mask=field_mask_pb2.FieldMask(paths=["*"]), name=image.name
        )
    )
    after = response_image(await wait_done(operations, op.id))
    assert after.description == ""
    assert dict(after.labels) == {}
    assert after.name == image.name


async def test_list_pages_through_a_folder_in_id_order(images, operations, blobs):
    folder_id = folder()
    ops = [
        await images.Create(
            image_service_pb2.CreateImageRequest(
                folder_id=folder_id, name=unique("img"), uri=blobs.url("/blob/1")
            )
        )
        for _ in range(5)
    ]
    expected = sorted(image_id_of(op) for op in ops)
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        page = await images.List(
            image_service_pb2.ListImagesRequest(folder_id=folder_id, page_size=2, page_token=token)
        )
        pages += 1
        seen += [i.id for i in page.images]
        token = page.next_page_token
        if not token:
            break
    assert seen == expected
    assert pages == 3


async def test_failed_download_ends_the_operation_with_an_error_and_the_image_in_error(
    images, operations, blobs
):
    created = await images.Create(
        image_service_pb2.CreateImageRequest(
            folder_id=folder(), name=unique("img"), uri=blobs.url("/status/404")
        )
    )
    done = await wait_done(operations, created.id)
    assert done.WhichOneof("result") == "error"
    assert done.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "404" in done.error.message
    image = await images.Get(image_service_pb2.GetImageRequest(image_id=image_id_of(created)))
    assert image.status == image_pb2.Image.ERROR


async def test_responses_carry_a_request_id(images):
    call = images.List(image_service_pb2.ListImagesRequest(folder_id=folder()))
    await call
    metadata = dict(await call.initial_metadata())
    assert len(metadata["x-request-id"]) == 36
    assert metadata["x-server-trace-id"]


async def test_operation_metadata_is_an_any_of_the_public_type(images, operations, blobs):
    created = await images.Create(
        image_service_pb2.CreateImageRequest(
            folder_id=folder(), name=unique("img"), uri=blobs.url("/blob/1")
        )
    )
    fetched = await operations.Get(
        operation_service_pb2.GetOperationRequest(operation_id=created.id)
    )
    assert isinstance(fetched.metadata, any_pb2.Any)
    assert fetched.metadata == created.metadata
    await wait_done(operations, created.id)
