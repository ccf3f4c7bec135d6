"""The command-line client (python -m service image|operation ...) against the real API and
workers: what a person at a terminal, or a script, gets from each command."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import grpc
import yaml

from tests.conftest import Processes
from tests.e2e.client import folder, unique
from tests.e2e.commands import Ran, assert_one_line_failure, run
from tests.e2e.test_tls import certificate  # noqa: F401 - the fixture
from tests.support import ROOT, BlobServer, ServiceProcess, TcpProxy, base_env, eventually
from yandex.cloud.baremetal.v1alpha import image_service_pb2, image_service_pb2_grpc


def client_env(api: ServiceProcess, token: str, **more: str) -> dict[str, str]:
    return {"IMAGES_ENDPOINT": api.address, "IMAGES_TOKEN": token, **more}


async def cli(env: dict[str, str], *args: str) -> Ran:
    return await run("service", *args, env=env)


async def create(env: dict[str, str], uri: str, *args: str) -> Ran:
    return await cli(env, "image", "create", "--folder", folder(), "--name", unique("cli"),
                     "--uri", uri, *args)  # fmt: skip


async def test_create_waits_for_the_image_and_prints_it(api, workers, blobs, admin_token):
    env = client_env(api, admin_token)
    ran = await create(env, blobs.url("/blob/1000"), "--description", "from the cli")
    assert ran.code == 0, ran
    assert "READY" in ran.stdout
    assert "from the cli" in ran.stdout
    assert "image img" in ran.stdout  # the operation's result line
    assert ran.stderr == ""  # no progress line when stderr is not a terminal


async def test_create_update_get_list_and_delete_in_json_and_yaml(api, workers, blobs, admin_token):
    env = client_env(api, admin_token)
    folder_id, name = folder(), unique("cli")
    created = await cli(
        env, "image", "create", "--folder", folder_id, "--name", name,
        "--uri", blobs.url("/blob/2048"), "--label", "os=linux", "--format", "json",
    )  # fmt: skip
    assert created.code == 0, created
    operation = created.json()
    assert operation["done"] is True
    image = operation["response"]
    assert image["@type"] == "type.googleapis.com/yandex.cloud.baremetal.v1alpha.Image"
    assert image["status"] == "READY"
    assert image["labels"] == {"os": "linux"}
    image_id = image["id"]

    updated = await cli(
        env, "image", "update", image_id, "--description", "changed", "--clear-labels",
        "--format", "yaml",
    )  # fmt: skip
    assert updated.code == 0, updated
    response = yaml.safe_load(updated.stdout)["response"]
    assert response["description"] == "changed"
    assert "labels" not in response

    got = await cli(env, "image", "get", image_id, "--format", "json")
    assert got.json()["description"] == "changed"
    listed = await cli(env, "image", "list", "--folder", folder_id, "--format", "json")
    assert [i["id"] for i in listed.json()] == [image_id]
    table = await cli(env, "image", "list", "--folder", folder_id)
    assert image_id in table.stdout
    assert name in table.stdout

    operations = await cli(env, "operation", "list", "--image", image_id, "--format", "json")
    assert [o["description"] for o in operations.json()][:2] == ["Update image", "Create image"]

    deleted = await cli(env, "image", "delete", image_id)
    assert deleted.code == 0, deleted
    assert "deleted" in deleted.stdout
    gone = await cli(env, "image", "get", image_id)
    assert_one_line_failure(gone, "NOT_FOUND")


async def test_async_returns_the_operation_at_once_and_operation_wait_finishes_it(
    api, workers, admin_token
):
    gate = await BlobServer().start()  # its own: the gate is released by this test only
    try:
        env = client_env(api, admin_token)
        started = await create(env, gate.url("/gated/4096"), "--async", "--format", "json")
        assert started.code == 0, started
        operation = started.json()
        assert operation.get("done", False) is False
        shown = await cli(env, "operation", "get", operation["id"])
        assert "running" in shown.stdout

        waiting = asyncio.create_task(
            cli(env, "operation", "wait", operation["id"], "--format", "json")
        )
        await eventually(
            lambda: asyncio.sleep(0, gate.gated_requests > 0), what="the download to start"
        )
        gate.release()
        waited = await waiting
        assert waited.code == 0, waited
        assert waited.json()["done"] is True
        assert waited.json()["response"]["status"] == "READY"
    finally:
        await gate.close()


async def test_a_failed_operation_exits_1_with_its_error_message(api, workers, blobs, admin_token):
    ran = await create(client_env(api, admin_token), blobs.url("/status/404"))
    line = assert_one_line_failure(ran, "failed: INVALID_ARGUMENT:")
    assert line.startswith("error: operation opn")
    assert "error INVALID_ARGUMENT" in ran.stdout  # the operation itself is still shown


async def test_a_refused_call_exits_1_with_the_api_message(api, admin_token):
    ran = await cli(client_env(api, admin_token), "image", "update", "imgdoesnotexist00000",
                    "--name", "new-name")  # fmt: skip
    assert_one_line_failure(ran, "NOT_FOUND: Image imgdoesnotexist00000 not found")


async def test_cancel_ends_an_unfinished_operation(api, workers, admin_token):
    gate = await BlobServer().start()
    try:
        env = client_env(api, admin_token)
        started = await create(env, gate.url("/gated/4096"), "--async", "--format", "json")
        cancelled = await cli(env, "operation", "cancel", started.json()["id"], "--format", "json")
        assert cancelled.code == 0, cancelled
        assert cancelled.json()["done"] is True
        assert cancelled.json()["error"]["code"] == grpc.StatusCode.CANCELLED.value[0]
        waited = await cli(env, "operation", "wait", started.json()["id"])
        assert_one_line_failure(waited, "failed: CANCELLED")
    finally:
        await gate.close()


async def test_an_update_without_a_change_is_a_usage_error(api, admin_token):
    ran = await cli(client_env(api, admin_token), "image", "update", "imgdoesnotexist00000")
    assert ran.code == 2
    assert "nothing to change" in ran.stderr


async def test_no_token_is_one_line_saying_where_to_get_one(api):
    ran = await cli({"IMAGES_ENDPOINT": api.address, "IMAGES_TOKEN": ""}, "image", "list",
                    "--folder", "f")  # fmt: skip
    assert ran.code == 2
    assert "Traceback" not in ran.stderr
    assert ran.error_lines == [
        "error: no token: set IMAGES_TOKEN or pass --token (python -m service token create"
        " makes one)"
    ]


async def test_a_bad_token_is_one_line(api):
    ran = await cli(client_env(api, "tokxxxxxxxxxxxxxxxxx.nope"), "image", "list", "--folder", "f")
    assert_one_line_failure(ran, "UNAUTHENTICATED", "IMAGES_TOKEN")


async def test_an_unreachable_api_is_one_line_after_the_retry_time(admin_token):
    env = {"IMAGES_ENDPOINT": "127.0.0.1:1", "IMAGES_TOKEN": admin_token}
    ran = await cli(env, "image", "get", "imgdoesnotexist00000", "--retry-for", "1")
    assert ran.code == 1
    assert "Traceback" not in ran.stderr
    assert ran.error_lines[-1].startswith("error: UNAVAILABLE: cannot reach the API at 127.0.0.1:1")
    assert all("retrying" in line for line in ran.error_lines[:-1])


async def test_unavailable_is_retried_and_the_create_made_once(api, workers, blobs, admin_token):
    proxy = await TcpProxy("127.0.0.1", api.port or 0).start()
    await proxy.cut()
    folder_id, name = folder(), unique("retry")
    command = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "service", "image", "create", "--folder", folder_id,
        "--name", name, "--uri", blobs.url("/blob/512"), "--format", "json",
        cwd=ROOT,
        env=base_env(IMAGES_ENDPOINT=f"127.0.0.1:{proxy.port}", IMAGES_TOKEN=admin_token),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert command.stderr is not None
    assert command.stdout is not None
    try:
        notice = await asyncio.wait_for(command.stderr.readline(), 30)
        assert b"the API is unavailable" in notice
        assert b"retrying" in notice
        await proxy.restore()
        out = await asyncio.wait_for(command.stdout.read(), 60)
        assert await command.wait() == 0
    finally:
        if command.returncode is None:
            command.kill()
        await proxy.close()
    assert b'"status": "READY"' in out
    async with grpc.aio.insecure_channel(api.address) as channel:
        listed = await image_service_pb2_grpc.ImageServiceStub(channel).List(
            image_service_pb2.ListImagesRequest(folder_id=folder_id),
            metadata=[("authorization", f"Bearer {admin_token}")],
        )
    assert [i.name for i in listed.images] == [name]


async def test_tls_with_a_ca_file(
    processes: Processes,
    own_stack_env,
    certificate: tuple[Path, Path],  # noqa: F811 - the fixture imported above
    admin_token,
):
    cert, key = certificate
    api = await processes.start(
        "service", own_stack_env(TLS_CERT_FILE=str(cert), TLS_KEY_FILE=str(key)), "api-tls-cli"
    )
    env = client_env(api, admin_token)
    trusted = await cli(env, "image", "list", "--folder", folder(), "--ca-file", str(cert))
    assert trusted.code == 0, trusted
    plaintext = await cli(env, "image", "list", "--folder", folder(), "--retry-for", "0")
    assert_one_line_failure(plaintext, "UNAVAILABLE")
