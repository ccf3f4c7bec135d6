"""Many clients updating many images at once: everything finishes, the last accepted wins."""

from __future__ import annotations

import asyncio
import itertools
import time

import grpc

from tests.e2e.client import create_ready_image, folder, response_image, wait_done
from yandex.cloud.baremetal.v1alpha import image_pb2, image_service_pb2

IMAGES = 50
UPDATES = 200


async def test_200_concurrent_updates_over_50_images_all_finish_with_the_last_accepted_change(
    images, operations, blobs, db
):
    folder_id = folder()
    created = await asyncio.gather(
        *(
            create_ready_image(images, operations, blobs.url("/blob/64"), folder_id)
            for _ in range(IMAGES)
        )
    )
    accepted: dict[str, list[tuple[str, str]]] = {image.id: [] for image in created}
    refused_busy = 0

    async def update(n: int) -> None:
        nonlocal refused_busy
        image = created[n % IMAGES]
        description = f"update-{n}"
        deadline = time.monotonic() + 120
        while True:
            try:
                op = await images.Update(
                    image_service_pb2.UpdateImageRequest(
                        image_id=image.id, description=description, labels={"n": str(n)}
                    )
                )
            except grpc.aio.AioRpcError as exc:
                # One unfinished Update per image: a client retries until the image is READY.
                if exc.code() != grpc.StatusCode.FAILED_PRECONDITION:
                    raise
                refused_busy += 1
                assert time.monotonic() < deadline, "image stayed busy too long"
                await asyncio.sleep(0.01)
                continue
            accepted[image.id].append((op.id, description))
            done = await wait_done(operations, op.id, timeout=120)
            assert response_image(done).description == description
            return

    await asyncio.gather(*(update(n) for n in range(UPDATES)))

    assert sum(len(v) for v in accepted.values()) == UPDATES
    unfinished = await db.fetchval(
        "SELECT count(*) FROM operations WHERE folder_id = $1 AND NOT done", folder_id
    )
    assert unfinished == 0
    for image_id, history in accepted.items():
        # The order of acceptance is the database's: each Update of an image was accepted
        # only after the one before it had finished.
        rows = await db.fetch(
            "SELECT id, created_at, modified_at FROM operations"
            " WHERE image_id = $1 AND kind = 'update_image' ORDER BY created_at",
            image_id,
        )
        assert sorted(r["id"] for r in rows) == sorted(op_id for op_id, _ in history)
        for before, after in itertools.pairwise(rows):
            assert after["created_at"] > before["modified_at"], "two Updates overlapped"
        descriptions = dict(history)
        image = await images.Get(image_service_pb2.GetImageRequest(image_id=image_id))
        assert image.status == image_pb2.Image.READY
        assert image.description == descriptions[rows[-1]["id"]]
        revision = await db.fetchval("SELECT revision FROM images WHERE id = $1", image_id)
        assert revision == 1 + len(history)  # the Create, then each Update exactly once
