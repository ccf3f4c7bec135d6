"""The official Python SDK's own machinery, unchanged, against the real stack over TLS:
endpoint discovery, the operation waiter, the RetryPolicy, its error type.

``official_sdk_client.py`` runs in the SDK's virtualenv (``sdk_venv``). The API serves TLS
with a certificate made here and announces, as ``PUBLIC_ENDPOINT``, a TCP proxy in front of
itself: the SDK learns that address from ``ApiEndpointService.List`` on the API's own address
and sends everything else through the proxy, which can lose a request on the wire.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from tests.compat.sdk_venv import clean_env
from tests.e2e.client import folder
from tests.support import BlobServer, blob, self_signed_certificate

pytestmark = pytest.mark.e2e

SDK_CLIENT = Path(__file__).resolve().parent / "official_sdk_client.py"
CLIENT_DEADLINE = 240.0


CONTROL_FRAME_BYTES = 100


class RequestDroppingProxy:
    """A TCP forwarder to the API. After ``drop_next_request()``, the next bytes any client
    sends are not forwarded: their connection is closed instead, so the request they carry is
    lost on the wire after the client sent it (the client sees ``UNAVAILABLE``)."""

    def __init__(self) -> None:
        self.target: tuple[str, int] | None = None
        self.port = 0
        self.connections = 0
        self.dropped: list[int] = []  # bytes of each request lost
        self._armed = False
        self._server: asyncio.Server | None = None

    async def start(self) -> RequestDroppingProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def drop_next_request(self) -> None:
        self._armed = True

    async def _handle(
        self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        assert self.target is not None, "the proxy has no API to forward to yet"
        self.connections += 1
        try:
            api_reader, api_writer = await asyncio.open_connection(*self.target)
        except OSError:
            client_writer.close()
            return

        async def client_to_api() -> None:
            while data := await client_reader.read(65536):
                # HTTP/2 control frames (PING, WINDOW_UPDATE, SETTINGS: under 60 bytes in
                # TLS) pass even while armed: what is lost is the next request.
                if self._armed and len(data) > CONTROL_FRAME_BYTES:
                    self._armed = False
                    self.dropped.append(len(data))
                    return  # closes both sides below, the data unsent
                api_writer.write(data)
                await api_writer.drain()

        async def api_to_client() -> None:
            while data := await api_reader.read(65536):
                client_writer.write(data)
                await client_writer.drain()

        pipes = [asyncio.create_task(client_to_api()), asyncio.create_task(api_to_client())]
        try:
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pipe in pipes:
                pipe.cancel()
            for writer in (client_writer, api_writer):
                writer.transport.abort()
            for outcome in await asyncio.gather(*pipes, return_exceptions=True):
                # A reset connection ends a pipe; anything else is a bug of the proxy.
                if isinstance(outcome, Exception) and not isinstance(outcome, OSError):
                    raise outcome

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()


async def converse(
    argv: list[str], proxy: RequestDroppingProxy, deadline: float
) -> tuple[dict[str, Any], list[str], str]:
    """Runs the SDK client, dropping a request each time it asks; returns its summary, what
    it asked for and its stderr."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        cwd="/",
        env=clean_env(),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdin is not None
    assert proc.stdout is not None
    assert proc.stderr is not None
    stderr = asyncio.create_task(proc.stderr.read())
    asked: list[str] = []
    last = ""

    async def talk() -> None:
        nonlocal last
        assert proc.stdin is not None
        assert proc.stdout is not None
        while line := (await proc.stdout.readline()).decode():
            message = json.loads(line)
            if "drop_next_request" in message:
                asked.append(message["drop_next_request"])
                proxy.drop_next_request()
                proc.stdin.write(b"dropping\n")
                await proc.stdin.drain()
            else:
                last = line

    try:
        await asyncio.wait_for(talk(), deadline)
        await asyncio.wait_for(proc.wait(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    err = (await stderr).decode(errors="replace")
    assert proc.returncode == 0, f"SDK client exited with {proc.returncode}:\n{err}"
    assert last, f"SDK client printed no summary:\n{err}"
    return json.loads(last), asked, err


async def test_the_official_sdk_discovers_waits_retries_and_raises_its_errors(
    public_python: Path,
    processes: Any,
    own_stack_env: Any,
    blobs: BlobServer,
    admin_token: str,
    tmp_path: Path,
) -> None:
    cert, key = self_signed_certificate(tmp_path)
    proxy = await RequestDroppingProxy().start()
    public = f"127.0.0.1:{proxy.port}"
    env = own_stack_env(TLS_CERT_FILE=str(cert), TLS_KEY_FILE=str(key), PUBLIC_ENDPOINT=public)
    try:
        api = await processes.start("service", env, "api-sdk")
        await processes.start("workers", env, "workers-sdk")
        assert api.port is not None
        proxy.target = ("127.0.0.1", api.port)
        size = 300_000
        summary, asked, err = await converse(
            [
                str(public_python), "-I", str(SDK_CLIENT),
                "--endpoint", api.address,  # discovery: the API itself
                "--cert", str(cert),
                "--token", admin_token,
                "--folder", folder(),
                "--uri", blobs.url(f"/blob/{size}"),
                "--slow-uri", blobs.url("/slow/1000000"),
                "--failing-uri", blobs.url("/status/404"),
            ],
            proxy,
            CLIENT_DEADLINE,
        )  # fmt: skip
    finally:
        await proxy.close()
    print(json.dumps(summary, indent=1))  # shown by pytest when an assertion below fails
    assert summary["ok"] is True, f"{summary}\n{err}"
    assert summary["sdk_version"] == "0.413.0"

    # Discovery, unauthenticated over TLS, announces the configured address for everything.
    assert summary["discovery"]["listed"] == {
        "baremetal": public,
        "endpoint": public,
        "iam": public,
        "operation": public,
    }
    assert summary["discovery"]["baremetal"] == public
    # The SDK then dialled what discovery told it: the proxy, not the API's own address.
    assert proxy.connections >= 2

    # What the README says of yandexcloud 0.413: no BareMetal module mapped.
    assert summary["sdk_maps_baremetal"] is False
    assert "Unknown service" in summary["sdk_client_for_image_service"]

    # Create and Update through the generated stub, waited for by the SDK's waiter.
    created = summary["created"]
    assert created["status"] == "READY"
    assert created["checksum"] == hashlib.md5(blob(size)).hexdigest()
    assert created["meta_image_id"] == created["image_id"]
    updated = summary["updated"]
    assert updated["result_type"] == "OperationResult"
    assert updated["response_type"] == "Image"
    assert updated["image_id"] == updated["meta_image_id"] == created["image_id"]
    assert updated["status"] == "READY"
    assert updated["description"] == "updated through the official SDK"
    assert updated["labels"] == {"made-by": "official-sdk"}

    # Refused calls surface as the grpc.RpcError the SDK's stubs raise; failed operations
    # as the SDK's own OperationError from its waiter.
    assert summary["update_not_ready"]["code"] == "FAILED_PRECONDITION"
    assert summary["update_not_ready"]["caught_as"] == "grpc.RpcError"
    assert "expected READY" in summary["update_not_ready"]["details"]
    assert summary["operation_error"]["type"] == "yandexcloud.operations.OperationError"
    assert summary["operation_error"]["message"].startswith("Error Yandex.Cloud operation")
    assert "HTTP 404" in summary["operation_error"]["message"]
    assert summary["operation_error"]["operation_id"].startswith("opn")

    # The RetryPolicy sent the lost request again and the call succeeded; without the policy
    # the same loss is UNAVAILABLE.
    assert asked == ["with RetryPolicy", "without RetryPolicy"]
    assert len(proxy.dropped) == 2, proxy.dropped
    assert summary["retried_get"]["done"] is True
    assert summary["retried_get"]["operation_id"] == updated["operation_id"]
    assert summary["unretried_get"]["code"] == "UNAVAILABLE", summary["unretried_get"]
