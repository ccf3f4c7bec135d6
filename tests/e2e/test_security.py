"""Security through the real stack: tokens, roles, folders, limits, downloads, secrets.

Tokens are made with ``python -m service token create`` against the run's database. Tests that
need a setting of their own (no token cache, tight limits, no allowed download networks) start
a private API (and worker) on the same database with a queue of their own.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import quote

import grpc
import pytest
from google.protobuf import field_mask_pb2
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status

from service.domain.ids import IMAGE_PREFIX, OPERATION_PREFIX, new_id
from tests.accounts import exchange, make_key, make_service_account, sign
from tests.e2e.client import (
    create_ready_image,
    folder,
    image_id_of,
    response_image,
    rpc_error,
    unique,
    violated_fields,
    wait_done,
)
from tests.support import (
    ROOT,
    ServiceProcess,
    backend_waiting_on_lock,
    base_env,
    connect,
    create_token,
    eventually,
)
from yandex.cloud.baremetal.v1alpha import image_pb2, image_service_pb2, image_service_pb2_grpc
from yandex.cloud.iam.v1.iam_token_service_pb2 import CreateIamTokenRequest, CreateIamTokenResponse
from yandex.cloud.operation import operation_service_pb2, operation_service_pb2_grpc

Code = grpc.StatusCode
TOKEN_FORMAT = re.compile(r"tok[a-z0-9]{17}\.[A-Za-z0-9_-]{43}")
IDEMPOTENCY = "idempotency-key"


# --- helpers ------------------------------------------------------------------------------


def make_token(
    database_url: str,
    subject: str,
    *folders: str,
    role: str = "editor",
    expires_in: float | None = None,
) -> str:
    args = ["--subject", subject, "--role", role]
    for folder_id in folders:
        args += ["--folder", folder_id]
    if expires_in is not None:
        args += ["--expires-in", str(expires_in)]
    return create_token(database_url, *args)


@dataclass(frozen=True)
class Credential:
    """A bearer token, and the subject its operations are recorded as (``created_by``)."""

    token: str
    subject: str


MakeCredential = Callable[..., Awaitable[Credential]]


@pytest.fixture(params=["service token", "service account IAM token"])
def credential(request: pytest.FixtureRequest, database_url: str, tmp_path: Path) -> MakeCredential:
    """Makes the folder-isolation tests' callers: ``await credential(address, subject,
    *folders, role=...)``, a token of the service (``token create``) or an IAM token of a new
    service account of those folders, exchanged at ``address`` as the SDK does."""

    async def make(address: str, subject: str, *folders: str, role: str = "editor") -> Credential:
        if request.param == "service token":
            return Credential(make_token(database_url, subject, *folders, role=role), subject)
        account = make_service_account(database_url, *folders, role=role)
        key = make_key(database_url, account, tmp_path)
        answer = await exchange(address, CreateIamTokenRequest(jwt=sign(key, address)))
        assert isinstance(answer, CreateIamTokenResponse), answer
        return Credential(answer.iam_token, account)

    return make


def secret_of(token: str) -> str:
    return token.split(".", 1)[1]


def token_command(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m service token ARGS`` against the run's database."""
    return subprocess.run(
        [sys.executable, "-m", "service", "token", *args],
        cwd=ROOT,
        env=base_env(DATABASE_URL=database_url),
        capture_output=True,
        text=True,
        timeout=60,
    )


def stubs(
    channel: grpc.aio.Channel,
) -> tuple[
    image_service_pb2_grpc.ImageServiceStub, operation_service_pb2_grpc.OperationServiceStub
]:
    return (
        image_service_pb2_grpc.ImageServiceStub(channel),
        operation_service_pb2_grpc.OperationServiceStub(channel),
    )


def detail(error: grpc.aio.AioRpcError, message_type: Any) -> Any:
    """The detail of type ``message_type`` in the error's ``google.rpc.Status``, or None."""
    status = rpc_status.from_call(error)
    if status is None:
        return None
    for packed in status.details:
        if packed.Is(message_type.DESCRIPTOR):
            out = message_type()
            packed.Unpack(out)
            return out
    return None


def shape(error: grpc.aio.AioRpcError, ident: str) -> tuple[Any, ...]:
    """Everything a client learns from an error, with ``ident`` blanked out.

    The request ID (``RequestInfo``) differs per call by design and is left out.
    """
    status = rpc_status.from_call(error)
    assert status is not None
    kinds = sorted(
        packed.type_url
        for packed in status.details
        if not packed.Is(error_details_pb2.RequestInfo.DESCRIPTOR)
    )
    trailing = sorted(key for key, _ in error.trailing_metadata() or ())
    return (
        error.code(),
        error.details().replace(ident, "<id>"),
        status.message.replace(ident, "<id>"),
        kinds,
        trailing,
    )


def get_image(images: Any, image_id: str, **kw: Any) -> Awaitable[Any]:
    return images.Get(image_service_pb2.GetImageRequest(image_id=image_id), **kw)


def list_images(images: Any, folder_id: str, **kw: Any) -> Awaitable[Any]:
    return images.List(image_service_pb2.ListImagesRequest(folder_id=folder_id), **kw)


def list_ops(images: Any, image_id: str, **kw: Any) -> Awaitable[Any]:
    return images.ListOperations(
        image_service_pb2.ListImageOperationsRequest(image_id=image_id), **kw
    )


def update(images: Any, image_id: str, description: str = "", **kw: Any) -> Awaitable[Any]:
    return images.Update(
        image_service_pb2.UpdateImageRequest(
            image_id=image_id,
            update_mask=field_mask_pb2.FieldMask(paths=["description"]),
            description=description,
        ),
        **kw,
    )


def delete(images: Any, image_id: str, **kw: Any) -> Awaitable[Any]:
    return images.Delete(image_service_pb2.DeleteImageRequest(image_id=image_id), **kw)


def create(images: Any, folder_id: str, uri: str, name: str | None = None, **kw: Any) -> Any:
    return images.Create(
        image_service_pb2.CreateImageRequest(
            folder_id=folder_id, name=name or unique("img"), uri=uri
        ),
        **kw,
    )


def get_op(operations: Any, operation_id: str, **kw: Any) -> Awaitable[Any]:
    return operations.Get(
        operation_service_pb2.GetOperationRequest(operation_id=operation_id), **kw
    )


def cancel(operations: Any, operation_id: str, **kw: Any) -> Awaitable[Any]:
    return operations.Cancel(
        operation_service_pb2.CancelOperationRequest(operation_id=operation_id), **kw
    )


def every_method(
    images: Any, operations: Any, folder_id: str, uri: str
) -> dict[str, Callable[..., Awaitable[Any]]]:
    """One call of each method of both services, taking the call's keyword arguments."""
    image_id = new_id(IMAGE_PREFIX)
    operation_id = new_id(OPERATION_PREFIX)
    return {
        "ImageService.Get": lambda **kw: get_image(images, image_id, **kw),
        "ImageService.List": lambda **kw: list_images(images, folder_id, **kw),
        "ImageService.Create": lambda **kw: create(images, folder_id, uri, **kw),
        "ImageService.Update": lambda **kw: update(images, image_id, "x", **kw),
        "ImageService.Delete": lambda **kw: delete(images, image_id, **kw),
        "ImageService.ListOperations": lambda **kw: list_ops(images, image_id, **kw),
        "OperationService.Get": lambda **kw: get_op(operations, operation_id, **kw),
        "OperationService.Cancel": lambda **kw: cancel(operations, operation_id, **kw),
    }


async def insert_image(db: Any, folder_id: str, status: int = image_pb2.Image.READY) -> str:
    """An image row written directly: for tests whose API has no workers."""
    image_id = new_id(IMAGE_PREFIX)
    await db.execute(
        "INSERT INTO images (id, folder_id, name, status) VALUES ($1, $2, $3, $4)",
        image_id,
        folder_id,
        unique("img"),
        status,
    )
    return image_id


async def images_in(db: Any, folder_id: str) -> int:
    return await db.fetchval("SELECT count(*) FROM images WHERE folder_id = $1", folder_id)


# --- 1. Authentication --------------------------------------------------------------------


async def test_token_create_prints_the_token_alone_on_the_last_line_and_stores_only_its_hash(
    database_url, db
):
    subject = unique("cli")
    result = token_command(
        database_url, "create", "--subject", subject, "--folder", "f1", "--folder", "f2",
        "--role", "viewer",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    token = lines[-1]
    assert TOKEN_FORMAT.fullmatch(token), lines
    assert all(secret_of(token) not in line for line in lines[:-1])
    token_id, secret = token.split(".", 1)

    row = await db.fetchrow("SELECT * FROM api_tokens WHERE id = $1", token_id)
    assert row["subject"] == subject
    assert row["role"] == "viewer"
    assert sorted(row["folders"]) == ["f1", "f2"]
    assert row["expires_at"] is None
    assert row["revoked_at"] is None
    assert bytes(row["secret_hash"]) == hashlib.sha256(secret.encode()).digest()
    # The secret itself is stored nowhere in the row.
    assert secret not in repr(dict(row))
    assert secret.encode() not in bytes(row["secret_hash"])

    other = make_token(database_url, subject, "f1", role="viewer")
    assert other != token
    assert secret_of(other) != secret


async def test_every_method_but_health_and_reflection_needs_a_token(api, blobs):
    async with grpc.aio.insecure_channel(api.address) as channel:
        images, operations = stubs(channel)
        for name, call in every_method(images, operations, folder(), blobs.url("/blob/8")).items():
            error = await rpc_error(call())
            assert error.code() == Code.UNAUTHENTICATED, name
            assert "authorization" in error.details(), name

        health = health_pb2_grpc.HealthStub(channel)
        answer = await health.Check(health_pb2.HealthCheckRequest())
        assert answer.status == health_pb2.HealthCheckResponse.SERVING

        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        responses = [r async for r in reflection.ServerReflectionInfo(iter([request]))]
        names = {s.name for s in responses[0].list_services_response.service}
        assert "yandex.cloud.baremetal.v1alpha.ImageService" in names


async def test_malformed_unknown_and_wrong_secret_tokens_are_unauthenticated(
    api, database_url, blobs
):
    folder_id = folder()
    good = make_token(database_url, unique("auth"), folder_id)
    token_id, secret = good.split(".", 1)
    wrong_secret = f"{token_id}.{'A' * 43}"
    unknown = f"{new_id('tok')}.{secret}"
    headers = {
        "empty": "",
        "bare token": good,
        "basic": f"Basic {good}",
        "bearer alone": "Bearer",
        "bearer garbage": "Bearer not-a-token",
        "short secret": f"Bearer {token_id}.{secret[:-1]}",
        "long secret": f"Bearer {good}x",
        "no separator": f"Bearer {token_id}{secret}",
        "two tokens": f"Bearer {good} {good}",
        "unknown id": f"Bearer {unknown}",
        "wrong secret": f"Bearer {wrong_secret}",
        "wrong-cased id": f"Bearer {token_id.upper()}.{secret}",
        "bearer twice": f"Bearer Bearer {good}",
    }
    async with grpc.aio.insecure_channel(api.address) as channel:
        images, operations = stubs(channel)
        # The genuine token works (and is now in the API's cache).
        await list_images(images, folder_id, metadata=(("authorization", f"Bearer {good}"),))
        messages = {}
        for what, header in headers.items():
            for name, call in every_method(images, operations, folder_id, blobs.url("/")).items():
                error = await rpc_error(call(metadata=(("authorization", header),)))
                assert error.code() == Code.UNAUTHENTICATED, (what, name)
                assert secret not in error.details(), (what, name)
                messages[what] = error.details()
    # A wrong secret tells nothing about whether the token ID exists.
    assert messages["unknown id"] == messages["wrong secret"] == "Invalid token"
    # A header that is not "Bearer <one word>" is malformed; a word that is no token of ours is
    # an invalid token, said so (what someone who typed or pasted a token needs to hear).
    malformed = "Malformed authorization header: expected Bearer <token>"
    for what in ("empty", "bare token", "basic", "bearer alone", "two tokens"):
        assert messages[what] == (
            "Authentication required: send authorization: Bearer <token>"
            if what == "empty"
            else malformed
        ), what
    for what in ("bearer garbage", "short secret", "long secret", "no separator", "wrong-cased id"):
        assert messages[what] == (
            "Invalid token: not a token of this service"
            " (tok and 17 letters or digits, a dot, then 43 characters)"
        ), what
    assert (
        messages["bearer twice"] == "Invalid token: it begins with 'Bearer ': give the token alone"
    )


async def test_an_expired_token_is_refused(api, database_url):
    folder_id = folder()
    lasting = make_token(database_url, unique("lasting"), folder_id, expires_in=3600)
    expiring = make_token(database_url, unique("expiring"), folder_id, expires_in=0.5)
    async with connect(api.address, lasting) as channel:
        images, _ = stubs(channel)
        await list_images(images, folder_id)  # a token with time left works
    async with connect(api.address, expiring) as channel:
        images, _ = stubs(channel)

        async def refused() -> grpc.aio.AioRpcError | None:
            try:
                await list_images(images, folder_id)
            except grpc.aio.AioRpcError as exc:
                return exc
            return None

        error = await eventually(refused, timeout=10, what="the token to expire")
    assert error.code() == Code.UNAUTHENTICATED
    assert error.details() == "Token expired"


async def test_a_revoked_token_is_refused_at_once_by_an_api_without_token_cache(
    processes, own_stack_env, database_url
):
    api = await processes.start("service", own_stack_env(AUTH_CACHE_SECONDS="0"), "api-nocache")
    folder_id = folder()
    token = make_token(database_url, unique("revoked"), folder_id)
    by_id = make_token(database_url, unique("revoked-by-id"), folder_id)
    async with connect(api.address, token) as channel, connect(api.address, by_id) as other:
        images, _ = stubs(channel)
        other_images, _ = stubs(other)
        await list_images(images, folder_id)
        await list_images(other_images, folder_id)

        revoked = token_command(database_url, "revoke", token)
        assert revoked.returncode == 0, revoked.stderr
        assert revoked.stdout.strip() == f"revoked {token.split('.')[0]}"
        assert secret_of(token) not in revoked.stdout + revoked.stderr
        error = await rpc_error(list_images(images, folder_id))
        assert error.code() == Code.UNAUTHENTICATED
        assert error.details() == "Token revoked"

        again = token_command(database_url, "revoke", token)
        assert again.returncode == 1
        assert "no active token" in again.stderr

        # Revoking by the token ID alone works the same way.
        assert token_command(database_url, "revoke", by_id.split(".")[0]).returncode == 0
        error = await rpc_error(list_images(other_images, folder_id))
        assert error.code() == Code.UNAUTHENTICATED


async def test_a_revoked_token_is_refused_by_a_caching_api_within_the_cache_time(api, database_url):
    folder_id = folder()
    token = make_token(database_url, unique("revoked-cached"), folder_id)
    async with connect(api.address, token) as channel:
        images, _ = stubs(channel)
        await list_images(images, folder_id)  # now cached for AUTH_CACHE_SECONDS (5)
        assert token_command(database_url, "revoke", token).returncode == 0
        revoked_at = time.monotonic()

        async def refused() -> Any:
            try:
                await list_images(images, folder_id)
            except grpc.aio.AioRpcError as exc:
                return exc.code()
            return None

        code = await eventually(refused, timeout=15, interval=0.2, what="the revocation to apply")
    assert code == Code.UNAUTHENTICATED
    assert time.monotonic() - revoked_at < 5 + 2


# --- 2. Roles and folders -----------------------------------------------------------------


async def test_a_viewer_reads_but_cannot_change_anything(
    api, images, operations, blobs, database_url
):
    folder_id = folder()
    image = await create_ready_image(images, operations, blobs.url("/blob/8"), folder_id)
    [created] = (await list_ops(images, image.id)).operations
    viewer = make_token(database_url, unique("viewer"), folder_id, role="viewer")
    async with connect(api.address, viewer) as channel:
        v_images, v_operations = stubs(channel)
        assert (await get_image(v_images, image.id)).id == image.id
        assert [i.id for i in (await list_images(v_images, folder_id)).images] == [image.id]
        assert [o.id for o in (await list_ops(v_images, image.id)).operations] == [created.id]
        assert (await get_op(v_operations, created.id)).id == created.id

        refusals = {
            "Update": lambda: update(v_images, image.id, "by a viewer"),
            "Create": lambda: create(v_images, folder_id, blobs.url("/blob/8")),
            "Delete": lambda: delete(v_images, image.id),
            "Cancel": lambda: cancel(v_operations, created.id),
        }
        for name, call in refusals.items():
            error = await rpc_error(call())
            assert error.code() == Code.PERMISSION_DENIED, name
            assert "editor" in error.details(), name

    after = await get_image(images, image.id)
    assert (after.status, after.description, after.name, after.checksum) == (
        image.status,
        image.description,
        image.name,
        image.checksum,
    )
    assert len((await list_ops(images, image.id)).operations) == 1
    assert len((await list_images(images, folder_id)).images) == 1


async def test_every_method_checks_the_role_before_the_request(api, database_url):
    """Authenticate, authorize, then validate, alike for every method: a viewer's malformed
    change is refused for the role, not for the fields."""
    viewer = make_token(database_url, unique("viewer"), folder(), role="viewer")
    async with connect(api.address, viewer) as channel:
        v_images, v_operations = stubs(channel)
        malformed = {
            "Create": lambda: v_images.Create(
                image_service_pb2.CreateImageRequest(folder_id="NOT A FOLDER", name="X")
            ),
            "Update": lambda: v_images.Update(
                image_service_pb2.UpdateImageRequest(image_id="bad", name="X Y")
            ),
            "Delete": lambda: v_images.Delete(image_service_pb2.DeleteImageRequest(image_id="x")),
            "Cancel": lambda: v_operations.Cancel(
                operation_service_pb2.CancelOperationRequest(operation_id="")
            ),
        }
        for name, call in malformed.items():
            error = await rpc_error(call())
            assert error.code() == Code.PERMISSION_DENIED, name


async def test_an_editor_acts_in_its_folders_only_and_is_recorded_as_creator(
    api, images, operations, blobs, credential, db
):
    mine, theirs = folder(), folder()
    editor = await credential(api.address, unique("editor"), mine)
    subject = editor.subject
    async with connect(api.address, editor.token) as channel:
        e_images, e_operations = stubs(channel)
        created = await create(e_images, mine, blobs.url("/blob/8"))
        assert created.created_by == subject
        image = response_image(await wait_done(e_operations, created.id))

        updated = await update(e_images, image.id, "by the editor")
        assert updated.created_by == subject
        await wait_done(e_operations, updated.id)
        deleted = await delete(e_images, image.id)
        assert deleted.created_by == subject
        await wait_done(e_operations, deleted.id)

        history = (await list_ops(e_images, image.id)).operations
        assert [o.id for o in history] == [deleted.id, updated.id, created.id]
        assert {o.created_by for o in history} == {subject}
        for op in (created, updated, deleted):
            assert (await get_op(operations, op.id)).created_by == subject  # seen by the admin

        error = await rpc_error(create(e_images, theirs, blobs.url("/blob/8")))
        assert error.code() == Code.PERMISSION_DENIED
        assert await images_in(db, theirs) == 0
        error = await rpc_error(list_images(e_images, theirs))
        assert error.code() == Code.PERMISSION_DENIED


async def test_a_token_of_several_folders_sees_each_of_them_and_no_other(
    api, images, operations, blobs, credential
):
    first, second, third = folder(), folder(), folder()
    uri = blobs.url("/blob/8")
    in_first = await create_ready_image(images, operations, uri, first)
    in_second = await create_ready_image(images, operations, uri, second)
    in_third = await create_ready_image(images, operations, uri, third)
    multi = await credential(api.address, unique("multi"), first, second, role="viewer")
    async with connect(api.address, multi.token) as channel:
        t_images, _ = stubs(channel)
        assert (await get_image(t_images, in_first.id)).id == in_first.id
        assert (await get_image(t_images, in_second.id)).id == in_second.id
        error = await rpc_error(get_image(t_images, in_third.id))
        assert error.code() == Code.NOT_FOUND
        error = await rpc_error(list_images(t_images, third))
        assert error.code() == Code.PERMISSION_DENIED


async def test_anything_of_a_folder_the_caller_may_not_see_answers_like_something_missing(
    api, images, operations, blobs, credential
):
    """Image B and its operations, seen with folder-A tokens: exactly like IDs that do not exist."""
    folder_a, folder_b = folder(), folder()
    uri = blobs.url("/blob/8")
    image = await create_ready_image(images, operations, uri, folder_b)
    touched = await update(images, image.id, "in folder b")
    await wait_done(operations, touched.id)
    # An image of B deleted since: its operations remain, and remain hidden.
    gone = await create_ready_image(images, operations, uri, folder_b)
    gone_op = await wait_done(operations, (await delete(images, gone.id)).id)
    history = [o.id for o in (await list_ops(images, image.id)).operations]
    image = await get_image(images, image.id)

    missing_image = new_id(IMAGE_PREFIX)
    missing_operation = new_id(OPERATION_PREFIX)
    editor = await credential(api.address, unique("editor-a"), folder_a)
    viewer = await credential(api.address, unique("viewer-a"), folder_a, role="viewer")
    for token, role in ((editor.token, "editor"), (viewer.token, "viewer")):
        async with connect(api.address, token) as channel:
            a_images, a_operations = stubs(channel)
            reads = {
                "Get": (partial(get_image, a_images), image.id, missing_image),
                "ListOperations": (partial(list_ops, a_images), image.id, missing_image),
                "ListOperations of a deleted image": (
                    partial(list_ops, a_images),
                    gone.id,
                    missing_image,
                ),
                "OperationService.Get": (
                    partial(get_op, a_operations),
                    touched.id,
                    missing_operation,
                ),
                "OperationService.Get of a deleted image's operation": (
                    partial(get_op, a_operations),
                    gone_op.id,
                    missing_operation,
                ),
            }
            writes = {
                "Update": (partial(update, a_images, description="x"), image.id, missing_image),
                "Delete": (partial(delete, a_images), image.id, missing_image),
                "Cancel": (partial(cancel, a_operations), touched.id, missing_operation),
            }
            checks = {**reads, **writes} if role == "editor" else reads
            for name, (call, hidden_id, missing_id) in checks.items():
                hidden = await rpc_error(call(hidden_id))
                missing = await rpc_error(call(missing_id))
                assert hidden.code() == Code.NOT_FOUND, (role, name)
                assert shape(hidden, hidden_id) == shape(missing, missing_id), (role, name)
                assert hidden.details() == missing.details().replace(missing_id, hidden_id)

            error = await rpc_error(list_images(a_images, folder_b))
            assert error.code() == Code.PERMISSION_DENIED, role
            assert list((await list_images(a_images, folder_a)).images) == []

    # Nothing of B was changed by those calls.
    assert await get_image(images, image.id) == image
    assert [o.id for o in (await list_ops(images, image.id)).operations] == history


async def test_an_unfinished_operation_of_another_folder_cannot_be_cancelled(
    processes, own_stack_env, credential, db, blobs
):
    # No workers: the Create stays unfinished.
    api = await processes.start("service", own_stack_env(), "api-hidden-cancel")
    folder_a, folder_b = folder(), folder()
    editor_a = await credential(api.address, unique("editor-a"), folder_a)
    async with (
        connect(api.address) as admin_channel,
        connect(api.address, editor_a.token) as channel,
    ):
        admin_images, admin_operations = stubs(admin_channel)
        a_images, a_operations = stubs(channel)
        created = await create(admin_images, folder_b, blobs.url("/blob/8"))
        image_id = image_id_of(created)
        missing = new_id(OPERATION_PREFIX)

        for call in (cancel, get_op):
            hidden = await rpc_error(call(a_operations, created.id))
            absent = await rpc_error(call(a_operations, missing))
            assert shape(hidden, created.id) == shape(absent, missing)
        for call in (get_image, list_ops):
            hidden = await rpc_error(call(a_images, image_id))
            assert hidden.code() == Code.NOT_FOUND

        still = await get_op(admin_operations, created.id)
        assert not still.done
        assert (await get_image(admin_images, image_id)).status == image_pb2.Image.CREATING
        cancelled = await cancel(admin_operations, created.id)
        assert cancelled.done
        assert cancelled.error.code == Code.CANCELLED.value[0]


# --- 2b. Idempotency keys belong to their caller -------------------------------------------


async def test_the_same_idempotency_key_of_two_subjects_makes_two_operations(
    api, images, operations, blobs, credential
):
    folder_id = folder()
    image = await create_ready_image(images, operations, blobs.url("/blob/8"), folder_id)
    first_caller = await credential(api.address, unique("first"), folder_id)
    second_caller = await credential(api.address, unique("second"), folder_id)
    first, second = first_caller.token, second_caller.token
    first_subject, second_subject = first_caller.subject, second_caller.subject
    key = str(uuid.uuid4())
    keyed = ((IDEMPOTENCY, key),)
    address = api.address
    async with connect(address, first) as one, connect(address, second) as two:
        first_images, _ = stubs(one)
        second_images, _ = stubs(two)
        by_first = await update(first_images, image.id, "same request", metadata=keyed)
        await wait_done(operations, by_first.id)
        by_second = await update(second_images, image.id, "same request", metadata=keyed)
        assert by_second.id != by_first.id
        assert by_first.created_by == first_subject
        assert by_second.created_by == second_subject
        await wait_done(operations, by_second.id)
        # Each subject's retry returns its own operation.
        assert (await update(first_images, image.id, "same request", metadata=keyed)).id == (
            by_first.id
        )
        assert (await update(second_images, image.id, "same request", metadata=keyed)).id == (
            by_second.id
        )
        # Another request with the key is refused for the subject that used it only.
        error = await rpc_error(update(first_images, image.id, "other", metadata=keyed))
        assert error.code() == Code.INVALID_ARGUMENT
        assert violated_fields(error) == [IDEMPOTENCY]
    history = (await list_ops(images, image.id)).operations
    assert [o.id for o in history[:2]] == [by_second.id, by_first.id]


async def test_a_key_replayed_with_a_token_for_another_folder_reveals_nothing(
    api, images, operations, blobs, credential
):
    folder_a, folder_b = folder(), folder()
    image = await create_ready_image(images, operations, blobs.url("/blob/8"), folder_a)
    subject = unique("two-tokens")
    for_a = (await credential(api.address, subject, folder_a)).token
    for_b = (await credential(api.address, subject, folder_b)).token
    keyed = ((IDEMPOTENCY, str(uuid.uuid4())),)
    address = api.address
    async with connect(address, for_a) as channel_a, connect(address, for_b) as channel_b:
        a_images, a_operations = stubs(channel_a)
        b_images, b_operations = stubs(channel_b)
        started = await update(a_images, image.id, "secret of folder a", metadata=keyed)
        await wait_done(a_operations, started.id)
        # The folder-B token can neither poll that operation nor see the image ...
        assert (await rpc_error(get_op(b_operations, started.id))).code() == Code.NOT_FOUND
        assert (await rpc_error(get_image(b_images, image.id))).code() == Code.NOT_FOUND
        # ... so replaying the call must not hand it over either.
        error = await rpc_error(update(b_images, image.id, "secret of folder a", metadata=keyed))
        assert error.code() == Code.NOT_FOUND


# --- 4. Limits ----------------------------------------------------------------------------


async def test_a_message_over_the_maximum_size_is_refused(processes, own_stack_env, db):
    api = await processes.start(
        "service", own_stack_env(GRPC_MAX_MESSAGE_BYTES="4096"), "api-msgsize"
    )
    folder_id = folder()
    async with connect(api.address) as channel:
        images, _ = stubs(channel)
        big = image_service_pb2.CreateImageRequest(
            folder_id=folder_id,
            name=unique("big"),
            uri="http://example.com/image",
            labels={f"k{i}": "v" * 60 for i in range(64)},
        )
        assert big.ByteSize() > 4096
        error = await rpc_error(images.Create(big))
        assert error.code() == Code.RESOURCE_EXHAUSTED
        assert await images_in(db, folder_id) == 0
        # A call of normal size is served.
        assert list((await list_images(images, folder_id)).images) == []


async def test_calls_over_the_concurrency_limit_are_resource_exhausted(
    processes, own_stack_env, db
):
    api = await processes.start(
        "service", own_stack_env(GRPC_MAX_CONCURRENT_RPCS="2"), "api-concurrency"
    )
    folder_id = folder()
    first, second = await insert_image(db, folder_id), await insert_image(db, folder_id)
    async with connect(api.address) as channel:
        images, _ = stubs(channel)
        async with db.acquire() as conn, conn.transaction():
            await conn.execute(
                "SELECT 1 FROM images WHERE id = ANY($1::text[]) FOR UPDATE", [first, second]
            )
            holder = await conn.fetchval("SELECT pg_backend_pid()")
            held = [
                asyncio.ensure_future(update(images, image_id, "held"))
                for image_id in (first, second)
            ]

            async def held_by_the_lock() -> bool:
                # Asked of the lock graph, not of the statement text (pg_stat_activity shows
                # only its first 1 KiB).
                return bool(
                    await db.fetchval(
                        "SELECT count(*) FROM pg_stat_activity"
                        " WHERE $1 = ANY(pg_blocking_pids(pid))",
                        holder,
                    )
                )

            await eventually(held_by_the_lock, what="the Updates to wait on the lock")
            assert await backend_waiting_on_lock(db, "images")

            async def over_the_limit() -> bool:
                # Until the second Update reaches the server a read is served; the two may
                # also share one group-commit statement, so count calls, not backends.
                try:
                    await list_images(images, folder_id)
                except grpc.aio.AioRpcError as error:
                    refused.append(error.code())
                    return True
                return False

            refused: list[grpc.StatusCode] = []
            await eventually(over_the_limit, what="a call over the limit to be refused")
            assert refused == [Code.RESOURCE_EXHAUSTED]
            assert not any(update.done() for update in held)  # both still in flight
        done = await asyncio.gather(*held)
        assert all(op.id for op in done)
        listed = await list_images(images, folder_id)  # served again once they finished
    assert {image.id for image in listed.images} == {first, second}


async def test_the_rate_limit_is_per_subject_and_says_when_to_retry(
    processes, own_stack_env, database_url
):
    api = await processes.start(
        "service",
        own_stack_env(RATE_LIMIT_PER_SECOND="0.5", RATE_LIMIT_BURST="3"),
        "api-ratelimit",
    )
    folder_id = folder()
    busy = make_token(database_url, unique("busy"), folder_id, role="viewer")
    calm = make_token(database_url, unique("calm"), folder_id, role="viewer")
    async with connect(api.address, busy) as b, connect(api.address, calm) as c:
        busy_images, _ = stubs(b)
        calm_images, _ = stubs(c)
        for _ in range(3):  # the burst
            await list_images(busy_images, folder_id)
        error = await rpc_error(list_images(busy_images, folder_id))
        refused_at = time.monotonic()
        assert error.code() == Code.RESOURCE_EXHAUSTED
        retry = detail(error, error_details_pb2.RetryInfo)
        assert retry is not None, "no RetryInfo"
        delay = retry.retry_delay.ToTimedelta().total_seconds()
        assert 0 < delay <= 2.0
        assert detail(error, error_details_pb2.RequestInfo) is not None

        # Another subject has a bucket of its own; health is not limited.
        await list_images(calm_images, folder_id)
        health = health_pb2_grpc.HealthStub(b)
        for _ in range(5):
            await health.Check(health_pb2.HealthCheckRequest())

        refusals: list[Any] = []

        async def admitted() -> bool:
            try:
                await list_images(busy_images, folder_id)
            except grpc.aio.AioRpcError as exc:
                refusals.append(exc.code())
                return False
            return True

        await eventually(admitted, timeout=10, interval=0.1, what="the bucket to refill")
        assert set(refusals) <= {Code.RESOURCE_EXHAUSTED}
        # Admitted again about when RetryInfo said, not much earlier and not much later.
        assert delay - 0.3 <= time.monotonic() - refused_at <= delay + 1.5


async def test_unfinished_operations_per_folder_are_limited_with_a_quota_failure(
    processes, own_stack_env, database_url, db, blobs
):
    # No workers: accepted operations stay unfinished.
    api = await processes.start(
        "service", own_stack_env(MAX_UNFINISHED_OPERATIONS_PER_FOLDER="2"), "api-quota"
    )
    full, other = folder(), folder()
    first, second = await insert_image(db, full), await insert_image(db, full)
    outsider = make_token(database_url, unique("outsider"), other)
    uri = blobs.url("/blob/8")
    async with connect(api.address) as channel, connect(api.address, outsider) as o_channel:
        images, operations = stubs(channel)
        o_images, _ = stubs(o_channel)
        await update(images, first, "one")
        created = await create(images, full, uri)

        refused = {
            "Create": lambda: create(images, full, uri),
            "Update": lambda: update(images, second, "three"),
            "Delete": lambda: delete(images, second),
        }
        for name, call in refused.items():
            error = await rpc_error(call())
            assert error.code() == Code.RESOURCE_EXHAUSTED, name
            quota = detail(error, error_details_pb2.QuotaFailure)
            assert quota is not None, name
            assert [v.subject for v in quota.violations] == [f"folder:{full}"], name
            assert "2" in quota.violations[0].description
            assert detail(error, error_details_pb2.RetryInfo) is None
        assert (await get_image(images, second)).status == image_pb2.Image.READY

        # Another folder is not affected; the full folder's quota tells an outsider nothing.
        await create(images, other, uri)
        error = await rpc_error(update(o_images, second, "x"))
        assert error.code() == Code.NOT_FOUND

        # A finished operation frees its place.
        await cancel(operations, created.id)
        assert (await update(images, second, "three")).id


# --- 5. Download network policy -----------------------------------------------------------


async def test_with_no_allowed_networks_downloads_of_local_addresses_are_refused(
    processes, own_stack_env, db, blobs
):
    env = own_stack_env(DOWNLOAD_ALLOWED_NETWORKS="")
    api = await processes.start("service", env, "api-nonet")
    await processes.start("workers", env, "worker-nonet")
    folder_id = folder()
    port = blobs.port
    async with connect(api.address) as channel:
        images, operations = stubs(channel)
        # IP literals: refused by the API, nothing is written.
        for uri in (
            f"http://127.0.0.1:{port}/blob/8",
            "http://169.254.169.254/latest/meta-data/",
            f"http://[::1]:{port}/blob/8",
            f"http://[::ffff:127.0.0.1]:{port}/blob/8",
            f"http://0.0.0.0:{port}/blob/8",
            "http://10.0.0.1/image",
            "http://192.168.1.1/image",
            "http://100.64.0.1/image",
            "https://[fe80::1]/image",
        ):
            error = await rpc_error(create(images, folder_id, uri))
            assert error.code() == Code.INVALID_ARGUMENT, uri
            assert violated_fields(error) == ["uri"], uri
        assert await images_in(db, folder_id) == 0

        # Host names: accepted by the API, refused by the worker when it resolves them.
        before = blobs.gated_requests
        # (Numeric forms such as 127.1 are refused too, as URLs the client cannot use.)
        for host in ("localhost", "0x7f000001", "127.1", "2130706433"):
            created = await create(images, folder_id, f"http://{host}:{port}/gated/16")
            done = await wait_done(operations, created.id)
            assert done.WhichOneof("result") == "error", host
            assert done.error.code == Code.INVALID_ARGUMENT.value[0], (host, done.error)
            if host in ("localhost", "0x7f000001"):
                assert "not a public address" in done.error.message, host
            image = await get_image(images, image_id_of(created))
            assert image.status == image_pb2.Image.ERROR, host
        assert blobs.gated_requests == before  # no connection was made


async def test_a_redirect_to_a_forbidden_address_is_refused(processes, own_stack_env, blobs):
    # Only the blob server's own address is allowed.
    env = own_stack_env(DOWNLOAD_ALLOWED_NETWORKS="127.0.0.1/32")
    api = await processes.start("service", env, "api-redirect")
    await processes.start("workers", env, "worker-redirect")
    folder_id = folder()
    async with connect(api.address) as channel:
        images, operations = stubs(channel)
        allowed = await create(images, folder_id, blobs.url("/blob/8"))
        assert (await wait_done(operations, allowed.id)).WhichOneof("result") == "response"

        before = blobs.gated_requests
        for target in (
            "http://169.254.169.254/latest/meta-data/",
            f"http://127.0.0.2:{blobs.port}/gated/16",
            f"http://[::1]:{blobs.port}/gated/16",
        ):
            uri = blobs.url(f"/redirect-to?url={quote(target, safe='')}")
            created = await create(images, folder_id, uri)
            done = await wait_done(operations, created.id)
            assert done.WhichOneof("result") == "error", target
            assert done.error.code == Code.INVALID_ARGUMENT.value[0], (target, done.error)
            image = await get_image(images, image_id_of(created))
            assert image.status == image_pb2.Image.ERROR
        assert blobs.gated_requests == before


# --- 7. Secrets stay out of logs and errors -----------------------------------------------


async def test_token_secrets_never_appear_in_logs_or_error_messages(
    processes, own_stack_env, database_url, blobs
):
    env = own_stack_env(LOG_LEVEL="DEBUG", AUTH_CACHE_SECONDS="0")
    api = await processes.start("service", env, "api-secrets")
    worker = await processes.start("workers", env, "worker-secrets")
    folder_id = folder()
    editor = make_token(database_url, unique("secret-editor"), folder_id)
    viewer = make_token(database_url, unique("secret-viewer"), folder_id, role="viewer")
    revoked = make_token(database_url, unique("secret-revoked"), folder_id)
    expired = make_token(database_url, unique("secret-expired"), folder_id, expires_in=0.01)
    wrong = f"{editor.split('.')[0]}.{secret_of(viewer)}"  # a real secret, another token's ID
    tokens = [editor, viewer, revoked, expired]
    secrets = [secret_of(t) for t in tokens]

    seen: list[str] = []  # every message a client got back

    async def collect(call: Awaitable[Any]) -> Any:
        try:
            result = await call
        except grpc.aio.AioRpcError as exc:
            seen.append(exc.details() or "")
            seen.extend(str(v) for _, v in exc.trailing_metadata() or ())
            return None
        if hasattr(result, "error"):
            seen.append(result.error.message)
        return result

    async with connect(api.address, editor) as channel:
        images, operations = stubs(channel)
        created = await collect(create(images, folder_id, blobs.url("/blob/8")))
        done = await wait_done(operations, created.id)
        image_id = image_id_of(created)
        failed = await collect(create(images, folder_id, blobs.url("/status/404")))
        seen.append((await wait_done(operations, failed.id)).error.message)
        await collect(update(images, image_id, "described"))
        await collect(get_image(images, image_id))
        await collect(list_images(images, folder_id))
        await collect(list_ops(images, image_id))
        await collect(cancel(operations, done.id))
        await collect(get_image(images, new_id(IMAGE_PREFIX)))
        await collect(update(images, "bad id", "x"))
        await collect(create(images, folder(), blobs.url("/blob/8")))
    async with connect(api.address, viewer) as channel:
        images, _ = stubs(channel)
        await collect(delete(images, image_id))
    assert token_command(database_url, "revoke", revoked).returncode == 0
    for token in (wrong, revoked, expired, f"{new_id('tok')}.{secret_of(editor)}"):
        async with connect(api.address, token) as channel:
            images, operations = stubs(channel)
            for call in every_method(images, operations, folder_id, blobs.url("/")).values():
                await collect(call())
    async with grpc.aio.insecure_channel(api.address) as channel:
        images, _ = stubs(channel)
        for header in (f"Bearer {editor}x", editor, f"Basic {viewer}"):
            await collect(list_images(images, folder_id, metadata=(("authorization", header),)))
    assert len(seen) > 40

    async def logged_the_calls() -> bool:
        return len(api.logged("rpc.done")) >= 40 and bool(worker.logged("operation.done"))

    await eventually(logged_the_calls, what="the calls to be logged")
    for process in (api, worker):
        await asyncio.to_thread(process.stop)
    logs = {p.log_path.name: p.log_path.read_text(errors="replace") for p in (api, worker)}
    assert any("UNAUTHENTICATED" in text for text in logs.values())
    for secret in secrets:
        for name, text in logs.items():
            assert secret not in text, name
        for message in seen:
            assert secret not in message


async def test_the_broker_password_never_appears_in_logs(processes, own_stack_env):
    env = own_stack_env(AMQP_URL="amqp://guest:s3cr3t-pw@127.0.0.1:5672/", LOG_LEVEL="DEBUG")
    api = await processes.start("service", env, "api-amqp-password")  # serves without a broker

    async def retried() -> bool:
        return len(api.logged("retry.scheduled", name="broker.connect")) >= 3

    await eventually(retried, what="the broker connection to be refused")
    async with connect(api.address) as channel:
        images, _ = stubs(channel)
        await list_images(images, folder())
    await asyncio.to_thread(api.stop)
    text = api.log_path.read_text(errors="replace")
    assert "ProbableAuthenticationError" in text or "broker.connect" in text
    assert "s3cr3t-pw" not in text


async def test_the_database_password_never_appears_in_logs(own_stack_env, logs_dir):
    # Nothing listens on port 1: the API keeps retrying and logging.
    env = own_stack_env(DATABASE_URL="postgresql://postgres:s3cr3t-pw@127.0.0.1:1/images")
    api = ServiceProcess("service", env, logs_dir / f"api-db-password-{uuid.uuid4().hex[:6]}.log")
    api.start()
    try:

        async def retried() -> bool:
            return len(api.logged("retry.scheduled", name="database.connect")) >= 3

        await eventually(retried, what="the database connection to be retried")
    finally:
        api.kill()
    text = api.log_path.read_text(errors="replace")
    assert "s3cr3t-pw" not in text


def test_a_malformed_database_url_is_not_echoed_with_its_password():
    # A typo in the port makes the URL invalid; the password must not be printed anyway.
    malformed = "postgresql://u:pw-s3cr3t@db.internal.example:54x2/images_production"
    result = subprocess.run(
        [sys.executable, "-m", "service"],
        cwd=ROOT,
        env=base_env(DATABASE_URL=malformed, GRPC_LISTEN="127.0.0.1:0"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "database_url" in (result.stdout + result.stderr).lower()
    assert "s3cr3t" not in result.stdout + result.stderr
