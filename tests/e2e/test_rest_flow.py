"""The quickstart over REST against the real stack, every answer compared with gRPC's.

Each REST answer is compared with the gRPC answer to the same request (the REST body read by
``json_format`` into the request message) converted by ``json_format``: equal. Where calling
gRPC again would start another operation, the same idempotency key is sent, so both answer
with the one operation; while the image's row is held (a ``FOR KEY SHARE`` lock lets the API
accept but holds the worker), that operation is compared exactly as it was accepted.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from google.protobuf import json_format

from tests.e2e.client import create_ready_image, folder, unique
from tests.e2e.rest import IMAGES, as_json
from yandex.cloud.baremetal.v1alpha import image_service_pb2
from yandex.cloud.operation import operation_service_pb2

# Fields of an operation that change as it progresses.
PROGRESS = ("done", "modifiedAt", "response", "error")


def as_accepted(operation: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in operation.items() if key not in PROGRESS}


async def grpc_operation(operations: Any, operation_id: str) -> Any:
    return as_json(
        await operations.Get(operation_service_pb2.GetOperationRequest(operation_id=operation_id))
    )


def keyed(key: str) -> tuple[tuple[str, str], ...]:
    return (("idempotency-key", key),)


async def test_the_quickstart_over_rest_answers_as_grpc_does(rest, images, operations, blobs, db):
    folder_id = folder()

    # Create, with an idempotency key; poll until done.
    body = {
        "folderId": folder_id,
        "name": unique("rest"),
        "description": "created over REST",
        "uri": blobs.url("/blob/4096"),
        "labels": {"env": "test"},
    }
    key = str(uuid.uuid4())
    created = await rest.ok("POST", IMAGES, body, headers={"Idempotency-Key": key})
    assert created["metadata"]["@type"].endswith(
        "/yandex.cloud.baremetal.v1alpha.CreateImageMetadata"
    )
    done = await rest.wait_done(created["id"])
    assert done == await grpc_operation(operations, created["id"])
    assert as_accepted(created) == as_accepted(done)
    # The same request and key over gRPC, and over REST again: the one operation, as it is.
    request = json_format.ParseDict(body, image_service_pb2.CreateImageRequest())
    assert as_json(await images.Create(request, metadata=keyed(key))) == done
    assert await rest.ok("POST", IMAGES, body, headers={"Idempotency-Key": key}) == done

    # Get: the image the Create made.
    image_id = created["metadata"]["imageId"]
    image = await rest.ok("GET", f"{IMAGES}/{image_id}")
    assert image == as_json(await images.Get(image_service_pb2.GetImageRequest(image_id=image_id)))
    assert image["status"] == "READY"
    assert image["labels"] == {"env": "test"}
    assert {"@type": "type.googleapis.com/yandex.cloud.baremetal.v1alpha.Image", **image} == done[
        "response"
    ]

    # Update with updateMask, held while it is compared, then waited for.
    update = {
        "updateMask": "description,labels",
        "description": "changed over REST",
        "labels": {"tier": "gold"},
        "name": unique("not-in-the-mask"),
    }
    key = str(uuid.uuid4())
    async with db.acquire() as conn, conn.transaction():
        await conn.execute("SELECT 1 FROM images WHERE id = $1 FOR KEY SHARE", image_id)
        updating = await rest.ok(
            "PATCH", f"{IMAGES}/{image_id}", update, headers={"Idempotency-Key": key}
        )
        assert "done" not in updating
        request = json_format.ParseDict(update, image_service_pb2.UpdateImageRequest())
        request.image_id = image_id
        assert list(request.update_mask.paths) == ["description", "labels"]
        assert as_json(await images.Update(request, metadata=keyed(key))) == updating
        assert updating == await grpc_operation(operations, updating["id"])
        assert (await rest.ok("GET", f"{IMAGES}/{image_id}"))["status"] == "UPDATING"

        # A short wait answers the operation as it stands when its timeout ends.
        started = time.monotonic()
        still = await rest.ok(
            "GET", f"/operations/{updating['id']}:wait", params={"timeout": "0.5s"}
        )
        assert 0.4 <= time.monotonic() - started < 5
        assert still == updating
        waiting = asyncio.ensure_future(
            rest.ok("GET", f"/operations/{updating['id']}:wait", params={"timeout": "30s"})
        )
        await asyncio.wait({waiting}, timeout=0.3)
        assert not waiting.done(), "the wait answered while the Update was held"
    released = time.monotonic()
    waited = await waiting
    assert waited["done"], waited
    assert time.monotonic() - released < 5, "the wait did not answer as soon as it was done"
    assert waited == await grpc_operation(operations, updating["id"])
    assert waited == await rest.ok("GET", f"/operations/{updating['id']}")
    changed = waited["response"]
    assert (changed["description"], changed["labels"], changed["name"]) == (
        "changed over REST",
        {"tier": "gold"},
        body["name"],
    )

    # List, with every query parameter, a page at a time.
    second = await create_ready_image(images, operations, blobs.url("/blob/8"), folder_id)
    query = {"folderId": folder_id, "pageSize": "1", "orderBy": "name desc", "filter": 'name:"-"'}
    page = await rest.ok("GET", IMAGES, params=query)
    request = image_service_pb2.ListImagesRequest(
        folder_id=folder_id, page_size=1, order_by="name desc", filter='name:"-"'
    )
    assert page == as_json(await images.List(request))
    assert [i["id"] for i in page["images"]] == [image_id]  # "rest-…" after "img-…"
    query["pageToken"] = request.page_token = page["nextPageToken"]
    last = await rest.ok("GET", IMAGES, params=query)
    assert last == as_json(await images.List(request))
    assert [i["id"] for i in last["images"]] == [second.id]
    assert "nextPageToken" not in last

    # ListOperations, a page at a time: newest first.
    page = await rest.ok("GET", f"{IMAGES}/{image_id}/operations", params={"pageSize": "1"})
    request = image_service_pb2.ListImageOperationsRequest(image_id=image_id, page_size=1)
    assert page == as_json(await images.ListOperations(request))
    assert [o["id"] for o in page["operations"]] == [updating["id"]]
    request.page_token = page["nextPageToken"]
    rest_page = await rest.ok(
        "GET",
        f"{IMAGES}/{image_id}/operations",
        params={"pageSize": "1", "pageToken": request.page_token},
    )
    assert rest_page == as_json(await images.ListOperations(request))
    assert [o["id"] for o in rest_page["operations"]] == [created["id"]]

    # Delete, held as the Update was. A worker claims a Delete before it waits for the image
    # (the claim moves modifiedAt), so the held operation is compared but for its progress,
    # and the finished one exactly.
    key = str(uuid.uuid4())
    path = f"{IMAGES}/{image_id}"
    request = image_service_pb2.DeleteImageRequest(image_id=image_id)
    async with db.acquire() as conn, conn.transaction():
        await conn.execute("SELECT 1 FROM images WHERE id = $1 FOR KEY SHARE", image_id)
        deleting = await rest.ok("DELETE", path, headers={"Idempotency-Key": key})
        replayed = as_json(await images.Delete(request, metadata=keyed(key)))
        assert as_accepted(replayed) == as_accepted(deleting)
        assert "done" not in replayed
        assert deleting["metadata"]["@type"].endswith("DeleteImageMetadata")
    deleted = await rest.ok("GET", f"/operations/{deleting['id']}:wait", params={"timeout": "30s"})
    assert deleted == await grpc_operation(operations, deleting["id"])
    assert as_json(await images.Delete(request, metadata=keyed(key))) == deleted
    assert await rest.ok("DELETE", path, headers={"Idempotency-Key": key}) == deleted
    assert deleted["response"] == {"@type": "type.googleapis.com/google.protobuf.Empty"}
    assert (await rest.get(f"{IMAGES}/{image_id}")).status == 404


async def test_cancel_over_rest_answers_as_grpc_does(rest, operations, blobs):
    # The source sends 16 bytes and stalls: the Create stays unfinished until cancelled.
    body = {"folderId": folder(), "name": unique("stalled"), "uri": blobs.url("/slow/1048576")}
    created = await rest.ok("POST", IMAGES, body)
    cancelled = await rest.ok("POST", f"/operations/{created['id']}:cancel")
    assert cancelled["done"]
    assert cancelled["error"] == {"code": 1, "message": "Operation cancelled"}
    # Cancelling a finished operation returns it unchanged, over either protocol.
    again = await operations.Cancel(
        operation_service_pb2.CancelOperationRequest(operation_id=created["id"])
    )
    assert as_json(again) == cancelled
    assert await rest.ok("POST", f"/operations/{created['id']}:cancel") == cancelled
    assert await rest.ok("GET", f"/operations/{created['id']}") == cancelled
    assert (await rest.get(f"{IMAGES}/{created['metadata']['imageId']}")).status == 404


async def test_every_answer_carries_its_request_id_and_the_clients_ids_are_logged(rest, api):
    client_request = str(uuid.uuid4())
    ok = await rest.get(IMAGES, params={"folderId": folder()}, headers={"X-Client-Trace-Id": "t"})
    refused = await rest.get(f"{IMAGES}/short", headers={"X-Client-Request-Id": client_request})
    ids = [answer.headers["X-Request-Id"] for answer in (ok, refused)]
    assert (ok.status, refused.status) == (200, 400)
    assert len({uuid.UUID(i) for i in ids}) == 2
    assert ok.headers["X-Server-Trace-Id"] == "t"
    assert refused.headers["X-Server-Trace-Id"] == ids[1]
    assert refused.detail("RequestInfo") == {
        "@type": "type.googleapis.com/google.rpc.RequestInfo",
        "requestId": ids[1],
    }
    # The call frame's access log line, as for gRPC, marked as a REST call.
    [line] = api.logged("rpc.done", request_id=ids[1])
    assert (line["code"], line["transport"]) == ("INVALID_ARGUMENT", "http")
    assert line["method"] == "/yandex.cloud.baremetal.v1alpha.ImageService/Get"
    assert line["client_request_id"] == client_request
