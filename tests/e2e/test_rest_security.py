"""``test_security.py`` over REST: tokens, roles, folders, idempotency keys per subject, and
the limits, with the HTTP status of each code and the same error bodies as gRPC's."""

from __future__ import annotations

import asyncio
import math
import ssl
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from service.domain.ids import IMAGE_PREFIX, OPERATION_PREFIX, new_id
from tests.e2e.client import create_ready_image, folder, rpc_error, unique
from tests.e2e.rest import IMAGES, Answer, Rest, grpc_error_json, http_port
from tests.e2e.test_security import (
    get_image,
    insert_image,
    make_token,
    stubs,
    token_command,
)
from tests.support import backend_blocked_by, connect, eventually
from yandex.cloud.baremetal.v1alpha import image_service_pb2

INVALID_KEY_HEADERS = ("", "Basic x", "Bearer", "Bearer not-a-token")


def every_route(folder_id: str, uri: str) -> dict[str, tuple[str, str, Any, Any]]:
    """One call of each REST route: HTTP method, path, body, query."""
    image_id, operation_id = new_id(IMAGE_PREFIX), new_id(OPERATION_PREFIX)
    return {
        "Get": ("GET", f"{IMAGES}/{image_id}", None, None),
        "List": ("GET", IMAGES, None, {"folderId": folder_id}),
        "Create": ("POST", IMAGES, {"folderId": folder_id, "name": unique("i"), "uri": uri}, None),
        "Update": ("PATCH", f"{IMAGES}/{image_id}", {"description": "x"}, None),
        "Delete": ("DELETE", f"{IMAGES}/{image_id}", None, None),
        "ListOperations": ("GET", f"{IMAGES}/{image_id}/operations", None, None),
        "Operation.Get": ("GET", f"/operations/{operation_id}", None, None),
        "Operation.Cancel": ("POST", f"/operations/{operation_id}:cancel", None, None),
        "Operation.Wait": ("GET", f"/operations/{operation_id}:wait", None, {"timeout": "1s"}),
        "Console.Recent": ("GET", f"/console/api/folders/{folder_id}/operations", None, None),
    }


async def call(rest: Rest, route: tuple[str, str, Any, Any], **kw: Any) -> Any:
    method, path, body, params = route
    return await rest.call(method, path, body, params=params, **kw)


async def test_every_route_needs_a_token(rest, blobs):
    anonymous = rest.as_caller(None)
    for name, route in every_route(folder(), blobs.url("/blob/8")).items():
        answer = await call(anonymous, route)
        assert answer.status == 401, name
        error = answer.error()
        assert error["code"] == 16, name
        assert error["message"] == "Authentication required: send authorization: Bearer <token>"


async def test_malformed_unknown_and_wrong_secret_tokens_are_401(rest, database_url, blobs):
    folder_id = folder()
    good = make_token(database_url, unique("rest-auth"), folder_id)
    token_id, secret = good.split(".", 1)
    headers = {
        "malformed": INVALID_KEY_HEADERS,
        "bare": (good, f"Basic {good}", f"Bearer {good}x", f"Bearer {good} {good}"),
        "unknown id": (f"Bearer {new_id('tok')}.{secret}",),
        "wrong secret": (f"Bearer {token_id}.{'A' * 43}",),
    }
    messages: dict[str, set[str]] = {}
    for what, values in headers.items():
        for header in values:
            for name, route in every_route(folder_id, blobs.url("/")).items():
                answer = await call(rest, route, headers={"Authorization": header})
                assert answer.status == 401, (what, header, name)
                assert secret not in answer.text
                messages.setdefault(what, set()).add(answer.error()["message"])
    # A wrong secret tells nothing about whether the token ID exists.
    assert messages["unknown id"] == messages["wrong secret"] == {"Invalid token"}
    assert (await rest.as_caller(good).get(IMAGES, params={"folderId": folder_id})).status == 200


async def test_expired_and_revoked_tokens_are_401(rest, database_url):
    folder_id = folder()
    expiring = rest.as_caller(make_token(database_url, unique("exp"), folder_id, expires_in=0.5))
    revoked_token = make_token(database_url, unique("rev"), folder_id)
    revoked = rest.as_caller(revoked_token)
    assert (await revoked.get(IMAGES, params={"folderId": folder_id})).status == 200
    assert token_command(database_url, "revoke", revoked_token).returncode == 0

    for caller, message in ((expiring, "Token expired"), (revoked, "Token revoked")):

        async def refused(caller: Rest = caller) -> Any:
            answer = await caller.get(IMAGES, params={"folderId": folder_id})
            return answer if answer.status == 401 else None

        answer = await eventually(refused, timeout=15, interval=0.2, what=message)
        assert answer.error()["message"] == message


async def test_a_viewer_reads_but_changes_nothing_and_its_role_is_checked_first(
    rest, images, operations, blobs, database_url
):
    folder_id = folder()
    image = await create_ready_image(images, operations, blobs.url("/blob/8"), folder_id)
    viewer = rest.as_caller(make_token(database_url, unique("viewer"), folder_id, role="viewer"))
    assert (await viewer.ok("GET", f"{IMAGES}/{image.id}"))["id"] == image.id
    listed = await viewer.ok("GET", f"{IMAGES}/{image.id}/operations")
    [created] = listed["operations"]
    assert (await viewer.ok("GET", f"/operations/{created['id']}"))["done"]
    recent = await viewer.ok("GET", f"/console/api/folders/{folder_id}/operations")
    assert [(o["operation"]["id"], o["progress"]) for o in recent["operations"]] == [
        (created["id"], "done")
    ]
    refusals = {
        "Create": ("POST", IMAGES, {"folderId": folder_id, "name": "ab", "uri": "http://h/x"}),
        "Create, malformed": ("POST", IMAGES, {"folderId": "NOT A FOLDER", "name": "X"}),
        "Update": ("PATCH", f"{IMAGES}/{image.id}", {"description": "by a viewer"}),
        "Update, malformed": ("PATCH", f"{IMAGES}/bad", {"name": "X Y"}),
        "Delete": ("DELETE", f"{IMAGES}/{image.id}", None),
        "Cancel": ("POST", f"/operations/{created['id']}:cancel", None),
        "Cancel, malformed": ("POST", "/operations/%20:cancel", None),
    }
    for name, (method, path, body) in refusals.items():
        answer = await viewer.call(method, path, body)
        assert answer.status == 403, (name, answer.text)
        error = answer.error()
        assert error["code"] == 7, name
        assert "editor" in error["message"], name
    assert await get_image(images, image.id) == image


async def test_a_hidden_image_or_operation_answers_like_a_missing_one(
    rest, images, operations, blobs, database_url
):
    folder_a, folder_b = folder(), folder()
    image = await create_ready_image(images, operations, blobs.url("/blob/8"), folder_b)
    [created] = (await rest.ok("GET", f"{IMAGES}/{image.id}/operations"))["operations"]
    missing_image, missing_operation = new_id(IMAGE_PREFIX), new_id(OPERATION_PREFIX)
    editor = rest.as_caller(make_token(database_url, unique("editor-a"), folder_a))
    checks = {
        "Get": ("GET", f"{IMAGES}/{{}}", image.id, missing_image),
        "ListOperations": ("GET", f"{IMAGES}/{{}}/operations", image.id, missing_image),
        "Update": ("PATCH", f"{IMAGES}/{{}}", image.id, missing_image),
        "Delete": ("DELETE", f"{IMAGES}/{{}}", image.id, missing_image),
        "Operation.Get": ("GET", "/operations/{}", created["id"], missing_operation),
        "Operation.Wait": ("GET", "/operations/{}:wait", created["id"], missing_operation),
        "Operation.Cancel": ("POST", "/operations/{}:cancel", created["id"], missing_operation),
    }
    for name, (method, path, hidden_id, missing_id) in checks.items():
        body = {"description": "x"} if method == "PATCH" else None
        hidden = await editor.call(method, path.format(hidden_id), body)
        missing = await editor.call(method, path.format(missing_id), body)
        assert hidden.status == missing.status == 404, name
        shown = hidden.error()
        assert shown == {**missing.error(), "message": shown["message"]}
        assert shown["message"] == missing.error()["message"].replace(missing_id, hidden_id)
    for path, params in (
        (IMAGES, {"folderId": folder_b}),
        (f"/console/api/folders/{folder_b}/operations", None),
    ):
        answer = await editor.get(path, params=params)
        assert (answer.status, answer.error()["code"]) == (403, 7)
    create = {"folderId": folder_b, "name": unique("i"), "uri": blobs.url("/blob/8")}
    assert (await editor.call("POST", IMAGES, create)).status == 403
    assert await get_image(images, image.id) == image


async def test_an_idempotency_key_is_the_callers_own(rest, images, operations, blobs, database_url):
    folder_id = folder()
    image = await create_ready_image(images, operations, blobs.url("/blob/8"), folder_id)
    first = rest.as_caller(make_token(database_url, unique("first"), folder_id))
    second = rest.as_caller(make_token(database_url, unique("second"), folder_id))
    keyed = {"Idempotency-Key": str(uuid.uuid4())}
    path, body = f"{IMAGES}/{image.id}", {"updateMask": "description", "description": "same"}
    by_first = await first.ok("PATCH", path, body, headers=keyed)
    await rest.wait_done(by_first["id"])
    by_second = await second.ok("PATCH", path, body, headers=keyed)
    assert by_second["id"] != by_first["id"]
    await rest.wait_done(by_second["id"])
    assert (await first.ok("PATCH", path, body, headers=keyed))["id"] == by_first["id"]


async def test_a_key_replayed_with_a_token_for_another_folder_reveals_nothing(
    rest, images, operations, blobs, database_url
):
    folder_a, folder_b = folder(), folder()
    image = await create_ready_image(images, operations, blobs.url("/blob/8"), folder_a)
    subject = unique("two-tokens")
    for_a = rest.as_caller(make_token(database_url, subject, folder_a))
    for_b = rest.as_caller(make_token(database_url, subject, folder_b))
    keyed = {"Idempotency-Key": str(uuid.uuid4())}
    path, body = f"{IMAGES}/{image.id}", {"updateMask": "description", "description": "of a"}
    started = await for_a.ok("PATCH", path, body, headers=keyed)
    await for_a.wait_done(started["id"])
    # The folder-B token can neither poll that operation nor see the image ...
    for answer in (await for_b.get(f"/operations/{started['id']}"), await for_b.get(path)):
        assert (answer.status, answer.error()["code"]) == (404, 5)
    # ... so replaying the call must not hand it over either.
    replayed = await for_b.call("PATCH", path, body, headers=keyed)
    assert (replayed.status, replayed.error()["message"]) == (404, f"Image {image.id} not found")
    assert started["id"] not in replayed.text


# --- limits ------------------------------------------------------------------------------------


async def test_the_rate_limit_is_429_with_retry_info_and_retry_after(
    processes, own_stack_env, database_url, http_session
):
    api = await processes.start(
        "service", own_stack_env(RATE_LIMIT_PER_SECOND="0.5", RATE_LIMIT_BURST="3"), "api-rl"
    )
    folder_id = folder()
    token = make_token(database_url, unique("busy"), folder_id, role="viewer")
    busy = Rest(http_session, http_port(api), token)
    for _ in range(3):
        assert (await busy.get(IMAGES, params={"folderId": folder_id})).status == 200
    answer = await busy.get(IMAGES, params={"folderId": folder_id})
    assert answer.status == 429
    assert answer.error()["code"] == 8
    delay = float(answer.detail("RetryInfo")["retryDelay"].removesuffix("s"))
    assert 0 < delay <= 2.0
    assert answer.headers["Retry-After"] == str(max(1, math.ceil(delay)))
    # The gRPC API of the same process shares the subject's bucket, and says the same.
    async with connect(api.address, token) as channel:
        images, _ = stubs(channel)
        request = image_service_pb2.ListImagesRequest(folder_id=folder_id)
        error = grpc_error_json(await rpc_error(images.List(request)))
    assert error["code"] == 8
    assert error["message"] == answer.json["message"]


async def test_the_unfinished_operations_quota_is_429_with_a_quota_failure(
    processes, own_stack_env, db, blobs, http_session, admin_token
):
    # No workers: accepted operations stay unfinished.
    api = await processes.start(
        "service", own_stack_env(MAX_UNFINISHED_OPERATIONS_PER_FOLDER="1"), "api-rest-quota"
    )
    full = folder()
    image_id = await insert_image(db, full)
    rest = Rest(http_session, http_port(api), admin_token)
    await rest.ok("PATCH", f"{IMAGES}/{image_id}", {"description": "one"})
    create = {"folderId": full, "name": unique("i"), "uri": blobs.url("/blob/8")}
    answer = await rest.call("POST", IMAGES, create)
    assert answer.status == 429, answer.text
    quota = answer.detail("QuotaFailure")
    assert [v["subject"] for v in quota["violations"]] == [f"folder:{full}"]
    assert answer.detail("RetryInfo") is None


async def test_requests_over_the_concurrency_limit_are_429(
    processes, own_stack_env, db, http_session, admin_token
):
    api = await processes.start(
        "service", own_stack_env(HTTP_MAX_CONCURRENT_REQUESTS="2"), "api-rest-concurrency"
    )
    folder_id = folder()
    first, second = await insert_image(db, folder_id), await insert_image(db, folder_id)
    rest = Rest(http_session, http_port(api), admin_token)
    async with db.acquire() as conn, conn.transaction():
        await conn.execute(
            "SELECT 1 FROM images WHERE id = ANY($1::text[]) FOR UPDATE", [first, second]
        )
        holder = await conn.fetchval("SELECT pg_backend_pid()")
        held = [
            asyncio.ensure_future(
                rest.ok(
                    "PATCH",
                    f"{IMAGES}/{image_id}",
                    {"description": "held"},
                    headers={"Idempotency-Key": str(uuid.uuid4())},
                )
            )
            for image_id in (first, second)
        ]
        # Both wait on the images this transaction holds (in one group commit, or two).
        await eventually(lambda: backend_blocked_by(db, holder), what="an Update to wait")

        async def refused() -> Answer | None:
            answer = await rest.get(IMAGES, params={"folderId": folder_id})
            return answer if answer.status == 429 else None

        # A third request is refused once both held ones are counted.
        answer = await eventually(refused, what="a request over the limit to be refused")
        assert not any(h.done() for h in held)
        assert answer.error()["code"] == 8
        assert answer.error()["message"] == "Too many concurrent requests"
    started = time.monotonic()
    assert all(op["id"] for op in await asyncio.gather(*held))
    assert time.monotonic() - started < 10
    listed = await rest.ok("GET", IMAGES, params={"folderId": folder_id})
    assert {image["id"] for image in listed["images"]} == {first, second}


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key (as ``test_tls.py`` makes them)."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "/usr/bin/openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
            "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
            "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


async def test_with_a_certificate_rest_speaks_tls_only(
    processes, own_stack_env, admin_token, certificate
):
    cert, key = certificate
    env = own_stack_env(TLS_CERT_FILE=str(cert), TLS_KEY_FILE=str(key))
    api = await processes.start("service", env, "api-rest-tls")
    assert api.logged("http.started")[-1]["tls"] is True
    port, folder_id = http_port(api), folder()
    trusted = ssl.create_default_context(cafile=str(cert))
    headers = {"Authorization": f"Bearer {admin_token}"}
    async with aiohttp.ClientSession(headers=headers) as session:
        async with session.get(
            f"https://127.0.0.1:{port}{IMAGES}", params={"folderId": folder_id}, ssl=trusted
        ) as answer:
            assert answer.status == 200
            assert await answer.json() == {}
        with pytest.raises(aiohttp.ClientError):
            async with session.get(f"http://127.0.0.1:{port}{IMAGES}") as answer:
                await answer.read()
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            async with session.get(f"https://127.0.0.1:{port}{IMAGES}") as answer:
                await answer.read()
