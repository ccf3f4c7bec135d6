"""The REST/JSON API and the operations console, served by aiohttp in the API process on
``HTTP_LISTEN`` beside the gRPC server, over the same use cases.

Every request is answered in JSON, whatever goes wrong: a path no rule matches is 404, a
method the path does not take 405 (``UNIMPLEMENTED``), a body over ``GRPC_MAX_MESSAGE_BYTES``
400 (field ``body``), more than ``HTTP_MAX_CONCURRENT_REQUESTS`` at once 429; these are
refused before the call frame, as gRPC's transport refuses them before ours. Everything else
goes through the frame (``frame.py``): errors as ``{"code", "message", "details"}`` with the
HTTP status of their code (``responses.py``), ``X-Request-Id`` on every answer. With
``TLS_CERT_FILE`` the port speaks TLS only, with gRPC's certificate.
"""

from __future__ import annotations

import importlib.metadata
import ssl
import time
from typing import Any

import structlog
from aiohttp import web
from google.rpc import status_pb2

from service.bootstrap import ApiUseCases
from service.domain.errors import Code
from service.entrypoints.grpc.calls import PUBLIC_METHODS, CallHandling
from service.entrypoints.grpc.convert import EncodedOperation
from service.entrypoints.http.console_api import (
    API_PREFIX,
    CONSOLE_PATH,
    PAGE_HEADERS,
    ConsoleFiles,
)
from service.entrypoints.http.frame import CallAborted, HttpCallContext, metadata_of
from service.entrypoints.http.openapi import OPENAPI_PATH, openapi_document
from service.entrypoints.http.paths import Match
from service.entrypoints.http.responses import (
    API_HEADERS,
    JSON_TYPE,
    error_json,
    http_status,
    refusal,
    retry_after,
    with_json_field_paths,
)
from service.entrypoints.http.routes import RestMethod, build_routes, public_bindings
from service.entrypoints.http.transcoding import HttpInput, dump_json
from service.runtime.metrics import http_request
from service.runtime.settings import Settings

log = structlog.get_logger(__name__)

try:
    VERSION = importlib.metadata.version("baremetal-image-service")
except importlib.metadata.PackageNotFoundError:  # run from a checkout that is not installed
    VERSION = "0"

# Initial metadata the frame sends, as response headers.
_RESPONSE_HEADERS = {"x-request-id": "X-Request-Id", "x-server-trace-id": "X-Server-Trace-Id"}
_MAX_ECHOED_PATH = 200
# The route label of what no API route matched, and of the console's files.
UNMATCHED_ROUTE = "(unmatched)"


class RestApi:
    """Routes each request to its endpoint and writes the answer."""

    def __init__(self, api: ApiUseCases[EncodedOperation], settings: Settings) -> None:
        # Not metered by the frame: the gRPC server metrics count gRPC calls; REST requests
        # are counted here, in http_server_requests_total (with METRICS_LISTEN set).
        calls = CallHandling(api.authenticator, api.limiter)
        self._metered = bool(settings.metrics_listen)
        self._routes = build_routes(api, calls, settings.operation_cache_size)
        self._openapi = dump_json(
            openapi_document(
                public_bindings(), PUBLIC_METHODS, title="BareMetal image service", version=VERSION
            )
        )
        self._console = ConsoleFiles()
        self._max_body = settings.grpc_max_message_bytes
        self._max_in_flight = settings.http_max_concurrent_requests
        self._in_flight = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if not self._metered:
            response, _ = await self._handle(request)
            return response
        started = time.perf_counter()
        route, status = UNMATCHED_ROUTE, 500
        try:
            response, route = await self._handle(request)
            status = response.status
            return response
        finally:
            http_request(request.method, route, status, time.perf_counter() - started)

    async def _handle(self, request: web.Request) -> tuple[web.StreamResponse, str]:
        """The answer, and the route template it was answered by."""
        path = request.rel_url.raw_path
        if path == "/" and request.method in ("GET", "HEAD"):
            # A browser pointed at the port: the console is what there is to see.
            return web.HTTPFound(CONSOLE_PATH), CONSOLE_PATH
        if path == OPENAPI_PATH and request.method in ("GET", "HEAD"):
            return web.Response(
                body=self._openapi, content_type=JSON_TYPE, charset="utf-8"
            ), OPENAPI_PATH
        if _is_console_page(path):
            return self._console_page(request, path), CONSOLE_PATH
        found = self._routes.find(request.method, path)
        if not isinstance(found, Match):
            if found:
                allowed = ", ".join(sorted(found))
                refused = _refused(
                    Code.UNIMPLEMENTED,
                    f"Method {request.method} not allowed",
                    status=405,
                    headers={"Allow": allowed},
                )
                return refused, UNMATCHED_ROUTE
            return _refused(
                Code.NOT_FOUND, f"No route for {request.method} {path[:_MAX_ECHOED_PATH]}"
            ), UNMATCHED_ROUTE
        route = found.target.route
        if self._in_flight >= self._max_in_flight:
            return _refused(Code.RESOURCE_EXHAUSTED, "Too many concurrent requests"), route
        self._in_flight += 1
        try:
            return await self._call(request, found), route
        finally:
            self._in_flight -= 1

    async def _call(self, request: web.Request, found: Match[RestMethod]) -> web.Response:
        if request.content_length is not None and request.content_length > self._max_body:
            return _body_too_large(self._max_body)
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _body_too_large(self._max_body)
        given = HttpInput(found.path_values, tuple(request.query.items()), body)
        context = HttpCallContext(metadata_of(request.headers), request.remote or "")
        # Each request runs in a task of its own: this stays with its access log line.
        structlog.contextvars.bind_contextvars(transport="http")
        endpoint = found.target
        try:
            answer = await endpoint.call(given, context)
        except CallAborted as aborted:
            status = with_json_field_paths(aborted.status, endpoint.json_field_path)
            return _error(status, _headers(context))
        return web.Response(
            body=endpoint.encode(answer),
            content_type=JSON_TYPE,
            charset="utf-8",
            headers=_headers(context),
        )

    def _console_page(self, request: web.Request, path: str) -> web.Response:
        if request.method not in ("GET", "HEAD"):
            return _refused(
                Code.UNIMPLEMENTED,
                f"Method {request.method} not allowed",
                status=405,
                headers={"Allow": "GET, HEAD"},
            )
        page = self._console.find(path)
        if page is None:
            return _refused(Code.NOT_FOUND, f"No console file {path[:_MAX_ECHOED_PATH]}")
        body, content_type = page
        return web.Response(
            body=body, content_type=content_type, charset="utf-8", headers=PAGE_HEADERS
        )


def _is_console_page(path: str) -> bool:
    return (path == CONSOLE_PATH or path.startswith(CONSOLE_PATH + "/")) and not path.startswith(
        API_PREFIX
    )


def _headers(context: HttpCallContext) -> dict[str, str]:
    headers = dict(API_HEADERS)
    for key, value in context.sent:
        name = _RESPONSE_HEADERS.get(key)
        if name is not None:
            headers[name] = value
    return headers


def _error(
    status: status_pb2.Status, headers: dict[str, str], code: int | None = None
) -> web.Response:
    wait = retry_after(status)
    if wait is not None:
        headers["Retry-After"] = wait
    return web.Response(
        status=code or http_status(status.code),
        body=error_json(status),
        content_type=JSON_TYPE,
        charset="utf-8",
        headers=headers,
    )


def _refused(
    code: Code,
    message: str,
    *,
    field: str = "",
    status: int | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """An answer made before the call frame (which has a request ID of its own)."""
    refused, request_id = refusal(code, message, field=field)
    log.info("http.refused", code=code.name, request_id=request_id, message=refused.message)
    return _error(refused, {**API_HEADERS, "X-Request-Id": request_id, **(headers or {})}, status)


def _body_too_large(limit: int) -> web.Response:
    return _refused(Code.INVALID_ARGUMENT, f"must be at most {limit} bytes", field="body")


@web.middleware
async def _never_a_traceback(request: web.Request, handler: Any) -> web.StreamResponse:
    """What escapes the handler (a bug) is logged and answered INTERNAL in JSON, without
    internals; aiohttp's own error pages are for requests it could not even parse."""
    try:
        response: web.StreamResponse = await handler(request)
    except web.HTTPException:
        raise
    except Exception:
        log.exception("http.failed")
        return _refused(Code.INTERNAL, "Internal error")
    return response


class HttpServer:
    """The running HTTP server; ``port`` is the one bound (``HTTP_LISTEN`` may say 0)."""

    def __init__(self, runner: web.AppRunner, port: int) -> None:
        self._runner = runner
        self.port = port

    async def stop(self) -> None:
        """Stop accepting; requests in flight get the runner's shutdown timeout to finish."""
        await self._runner.cleanup()


def make_app(api: ApiUseCases[EncodedOperation], settings: Settings) -> web.Application:
    rest = RestApi(api, settings)
    # aiohttp's own limit on reading a body, above ours: ours answers first, in JSON.
    app = web.Application(
        client_max_size=settings.grpc_max_message_bytes + 1, middlewares=[_never_a_traceback]
    )
    app.router.add_route("*", "/{path:.*}", rest.handle)
    return app


async def start_http(settings: Settings, api: ApiUseCases[EncodedOperation]) -> HttpServer:
    """Serve the REST API and the console on ``HTTP_LISTEN``; an address that cannot be
    bound ends the process with a one-line reason."""
    host, _, port = settings.http_listen.rpartition(":")
    runner = web.AppRunner(
        make_app(api, settings),
        access_log=None,  # the call frame logs each call (rpc.done)
        handle_signals=False,
        shutdown_timeout=settings.grpc_grace_seconds,
    )
    await runner.setup()
    tls = None
    if settings.tls_cert_file:
        # REST carries the same tokens as gRPC: with a certificate, TLS only, as gRPC.
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
    # Several API processes (API_PROCESSES) share the port, as they share gRPC's.
    site = web.TCPSite(
        runner,
        host.strip("[]") or None,
        int(port),
        reuse_port=settings.api_processes > 1,
        ssl_context=tls,
    )
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise SystemExit(
            f"cannot listen on HTTP_LISTEN {settings.http_listen}: {exc.strerror}"
        ) from None
    bound = runner.addresses[0][1]
    log.info("http.started", listen=settings.http_listen, port=bound, tls=tls is not None)
    return HttpServer(runner, bound)
