"""Test support: real processes, a blob server, a TCP proxy, and waiting on conditions."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import grpc
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")


def messages_of(operation_ids: list[str], per_message: int = 1) -> list[Any]:
    """``OutgoingMessage``s carrying ``operation_ids`` in order, ``per_message`` each (what a
    publisher sent, for ``Outbox.mark_published``)."""
    from service.domain.ids import new_id
    from service.usecases.ports import OutgoingMessage, Unpublished

    return [
        OutgoingMessage(
            new_id("msg"),
            tuple(Unpublished(i) for i in operation_ids[start : start + per_message]),
        )
        for start in range(0, len(operation_ids), per_message)
    ]


async def eventually(
    check: Callable[[], Awaitable[T | None]],
    *,
    timeout: float = 30.0,
    interval: float = 0.05,
    what: str = "condition",
) -> T:
    """Await ``check`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


class ServiceProcess:
    """``python -m service`` or ``python -m workers`` as a child process, logs to a file."""

    def __init__(self, module: str, env: dict[str, str], log_path: Path) -> None:
        self.module = module
        self.env = env
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.port: int | None = None

    def start(self) -> ServiceProcess:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in wait()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", self.module],
            cwd=ROOT,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        return self

    def log_lines(self) -> list[dict[str, Any]]:
        lines = []
        for raw in self.log_path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                lines.append(json.loads(raw))
        return lines

    def logged(self, message: str, **fields: Any) -> list[dict[str, Any]]:
        return [
            line
            for line in self.log_lines()
            if line.get("message") == message and all(line.get(k) == v for k, v in fields.items())
        ]

    async def wait_started(self, timeout: float = 60.0) -> ServiceProcess:
        started = "api.started" if self.module == "service" else "workers.started"

        async def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"{self.module} exited with {self.proc.returncode}:\n"
                    + self.log_path.read_text(errors="replace")[-3000:]
                )
            lines = self.logged(started)
            if lines and self.module == "service":
                self.port = int(lines[-1]["port"])
            return bool(lines)

        await eventually(ready, timeout=timeout, what=f"{self.module} to start")
        return self

    @property
    def address(self) -> str:
        assert self.port is not None
        return f"127.0.0.1:{self.port}"

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signum)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.wait(10)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        code = self.proc.wait(timeout)
        self._log.close()
        return code

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.signal(signal.SIGTERM)
        try:
            self.wait(30)
        except subprocess.TimeoutExpired:
            self.kill()


def blob(size: int, seed: str = "") -> bytes:
    """Deterministic content of ``size`` bytes."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:size])


GENERATED_CHUNK = 1024 * 1024


def generated_chunks(size: int) -> Iterator[bytes]:
    """Deterministic content of ``size`` bytes, one chunk at a time (cheap, constant memory)."""
    index = 0
    while size > 0:
        length = min(GENERATED_CHUNK, size)
        pattern = hashlib.sha256(f"generated:{index}".encode()).digest()
        yield (pattern * (GENERATED_CHUNK // len(pattern)))[:length]
        size -= length
        index += 1


class BlobServer:
    """An HTTP server the workers download images from.

    ``/blob/<size>`` serves deterministic bytes; ``/status/<code>`` answers that status;
    ``/gated/<size>`` sends half, then waits until ``release()``.

    For download tests: ``/chunked/<size>`` serves ``blob(size)`` without a Content-Length
    (chunked encoding); ``/generated/<size>?tag=<t>`` streams ``generated_chunks(size)``
    chunked, recording the bytes it wrote in ``generated_sent[t]`` and ``t`` in
    ``generated_done`` when it ends; ``/redirect/<size>`` is a 302 to ``/blob/<size>``;
    ``/redirect-loop`` redirects to itself; ``/slow/<size>`` declares ``size`` bytes, sends 16
    and stalls; ``/trickle/<size>`` sends one byte every 50 ms; ``/lying-length/<length>``
    declares ``length`` bytes and sends 16; ``/truncated/<size>`` declares ``size`` bytes, sends
    half and closes the connection. Handlers that stall return as soon as the client goes away
    (and after 30 s at most), so ``close()`` never waits on them.
    """

    STALL_SECONDS = 30.0

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.gated_requests = 0
        self.generated_sent: dict[str, int] = {}
        self.generated_done: set[str] = set()
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> BlobServer:
        app = web.Application()
        app.router.add_get("/blob/{size}", self._blob)
        app.router.add_get("/status/{code}", self._status)
        app.router.add_get("/gated/{size}", self._gated)
        app.router.add_get("/redirect-to", self._redirect_to)
        app.router.add_get("/chunked/{size}", self._chunked)
        app.router.add_get("/generated/{size}", self._generated)
        app.router.add_get("/redirect/{size}", self._redirect)
        app.router.add_get("/redirect-loop", self._redirect_loop)
        app.router.add_get("/slow/{size}", self._slow)
        app.router.add_get("/trickle/{size}", self._trickle)
        app.router.add_get("/lying-length/{length}", self._lying_length)
        app.router.add_get("/truncated/{size}", self._truncated)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def _blob(self, request: web.Request) -> web.Response:
        return web.Response(body=blob(int(request.match_info["size"])))

    async def _redirect_to(self, request: web.Request) -> web.Response:
        raise web.HTTPFound(request.query["url"])

    async def _status(self, request: web.Request) -> web.Response:
        return web.Response(status=int(request.match_info["code"]))

    async def _gated(self, request: web.Request) -> web.StreamResponse:
        self.gated_requests += 1
        data = blob(int(request.match_info["size"]))
        response = web.StreamResponse()
        response.content_length = len(data)
        await response.prepare(request)
        await response.write(data[: len(data) // 2])
        await self.gate.wait()
        await response.write(data[len(data) // 2 :])
        await response.write_eof()
        return response

    async def _chunked(self, request: web.Request) -> web.StreamResponse:
        data = blob(int(request.match_info["size"]))
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for start in range(0, len(data), 64 * 1024):
            await response.write(data[start : start + 64 * 1024])
        await response.write_eof()
        return response

    async def _generated(self, request: web.Request) -> web.StreamResponse:
        tag = request.query.get("tag", "")
        self.generated_sent[tag] = 0
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        try:
            await response.prepare(request)
            for chunk in generated_chunks(int(request.match_info["size"])):
                await response.write(chunk)
                self.generated_sent[tag] += len(chunk)
            await response.write_eof()
        except (ConnectionError, OSError):
            pass  # the client went away: stop generating
        finally:
            self.generated_done.add(tag)
        return response

    async def _redirect(self, request: web.Request) -> web.Response:
        raise web.HTTPFound(f"/blob/{request.match_info['size']}")

    async def _redirect_loop(self, request: web.Request) -> web.Response:
        raise web.HTTPFound("/redirect-loop")

    async def _until_client_gone(self, request: web.Request) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.STALL_SECONDS
        while loop.time() < deadline:
            transport = request.transport
            if transport is None or transport.is_closing():
                return
            await asyncio.sleep(0.05)

    async def _declared(self, request: web.Request, length: int) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_length = length
        await response.prepare(request)
        await response.write(blob(min(16, length)))
        return response

    async def _slow(self, request: web.Request) -> web.StreamResponse:
        response = await self._declared(request, int(request.match_info["size"]))
        await self._until_client_gone(request)
        return response

    async def _lying_length(self, request: web.Request) -> web.StreamResponse:
        response = await self._declared(request, int(request.match_info["length"]))
        await self._until_client_gone(request)
        return response

    async def _trickle(self, request: web.Request) -> web.StreamResponse:
        data = blob(int(request.match_info["size"]))
        response = web.StreamResponse()
        response.content_length = len(data)
        await response.prepare(request)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.STALL_SECONDS
        try:
            for i in range(len(data)):
                transport = request.transport
                if loop.time() > deadline or transport is None or transport.is_closing():
                    break
                await response.write(data[i : i + 1])
                await asyncio.sleep(0.05)
        except (ConnectionError, OSError):
            pass
        return response

    async def _truncated(self, request: web.Request) -> web.StreamResponse:
        data = blob(int(request.match_info["size"]))
        response = web.StreamResponse()
        response.content_length = len(data)
        await response.prepare(request)
        await response.write(data[: len(data) // 2])
        if request.transport is not None:
            request.transport.close()
        return response

    def release(self) -> None:
        self.gate.set()

    async def close(self) -> None:
        self.gate.set()
        if self.runner is not None:
            await self.runner.cleanup()


class TcpProxy:
    """A TCP forwarder that can be cut (all connections dropped, new ones refused) and restored."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        self._writers.difference_update((writer, up_writer))

    async def cut(self) -> None:
        """Refuse new connections and drop the open ones."""
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            with contextlib.suppress(Exception):
                writer.transport.abort()
        self._writers.clear()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def restore(self) -> None:
        await self.start()

    async def close(self) -> None:
        await self.cut()


def base_env(**overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "AMQP_"))}
    env.update(overrides)
    return env


async def backend_waiting_on_lock(db: Any, table: str) -> bool:
    """True once some session of this database is blocked on a row lock of ``table``."""
    count = await db.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND wait_event_type = 'Lock' AND query ILIKE $1",
        f"%{table}%",
    )
    return bool(count)


async def backend_blocked_by(db: Any, pid: int) -> bool:
    """True once some session waits for a lock the session ``pid`` holds (the lock graph,
    whatever statement waits)."""
    count = await db.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))", pid
    )
    return bool(count)


# Set once per test run by the session fixture ``admin_token``: an editor of every folder.
ADMIN_TOKEN: str | None = None


class BearerAuth(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Adds ``authorization: Bearer <token>`` to every unary call of a channel."""

    def __init__(self, token: str) -> None:
        self._header = ("authorization", f"Bearer {token}")

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        metadata = [*(details.metadata or ()), self._header]
        details = details._replace(metadata=metadata)
        return await continuation(details, request)


def connect(address: str, token: str | None = None) -> grpc.aio.Channel:
    """A channel to the API whose calls carry ``token`` (by default the run's admin token)."""
    token = token or ADMIN_TOKEN
    assert token, "no token: request the admin_token fixture"
    return grpc.aio.insecure_channel(address, interceptors=[BearerAuth(token)])


def create_token(database_url: str, *args: str) -> str:
    """``python -m service token create ARGS`` against a database; returns the token."""
    result = subprocess.run(
        [sys.executable, "-m", "service", "token", "create", *args],
        cwd=ROOT,
        env=base_env(DATABASE_URL=database_url),
        check=True,
        capture_output=True,
        text=True,
    )
    return result.stdout.strip().splitlines()[-1]


OPENSSL = "/usr/bin/openssl"


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 / localhost and its key, in ``directory``."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            OPENSSL, "req", "-x509", "-newkey", "rsa:2048", "-nodes",
            "-keyout", str(key), "-out", str(cert), "-days", "1",
            "-subj", "/CN=127.0.0.1",
            "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key
