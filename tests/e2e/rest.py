"""Client-side helpers for the REST API: a small HTTP client, its answers, and the JSON the
gRPC answers are compared with (``json_format``, as the public REST API encodes them).

Its fixtures (``rest``) are a plugin of ``tests/conftest.py``.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp
import grpc
import pytest
from google.protobuf import empty_pb2, json_format
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from service.entrypoints.http.transcoding import Binding, bindings
from tests import support
from tests.support import ServiceProcess, eventually
from yandex.cloud.baremetal.v1alpha import image_service_pb2
from yandex.cloud.operation import operation_service_pb2

IMAGES = "/baremetal/v1alpha/images"
# Types packed in Any values, which json_format finds by name once they are imported.
PACKED_TYPES = (empty_pb2.Empty, error_details_pb2.BadRequest)


# Every method's REST binding, by name: "ImageService.Get", "OperationService.Cancel", ...
BINDINGS: dict[str, Binding] = {
    binding.method.rsplit(".", 1)[1].replace("/", "."): binding
    for module, service in (
        (image_service_pb2, "ImageService"),
        (operation_service_pb2, "OperationService"),
    )
    for binding in bindings(module.DESCRIPTOR.services_by_name[service])
}


def rest_form(method: str, request: Message) -> tuple[str, str, Any, dict[str, str]] | None:
    """The REST call of a gRPC request: HTTP method, path, JSON body and query parameters
    (``None`` if it has none: an empty path value has no URL)."""
    binding = BINDINGS[method]
    fields = json_format.MessageToDict(request)
    path = binding.template.text
    for name in binding.template.variables:
        value = getattr(request, name)
        if not value:
            return None
        path = path.replace("{" + name + "}", quote(value, safe=""))
        fields.pop(request.DESCRIPTOR.fields_by_name[name].json_name, None)
    if binding.body == "*":
        return binding.http_method, path, fields, {}
    return binding.http_method, path, None, {key: str(value) for key, value in fields.items()}


def without_request_id(body: dict[str, Any]) -> dict[str, Any]:
    """An error body less its ``RequestInfo`` (a request ID differs per call by design)."""
    details = [d for d in body.get("details", []) if not d["@type"].endswith("RequestInfo")]
    return {**body, "details": details}


def json_name(field_path: str) -> str:
    """A request field path as REST names it: each field by its JSON (lowerCamelCase) name."""
    return re.sub(r"_([a-z0-9])", lambda m: m.group(1).upper(), field_path)


def grpc_error_json(error: grpc.aio.AioRpcError, *, rest_names: bool = False) -> dict[str, Any]:
    """A gRPC error's ``google.rpc.Status`` as a REST error body, less its request ID; with
    ``rest_names``, the request's fields named as the REST answer names them (JSON names, in
    the ``BadRequest`` and in the message), where gRPC names the proto's fields."""
    status = rpc_status.from_call(error)
    assert status is not None, "no google.rpc.Status details"
    body = json_format.MessageToDict(status)
    body.setdefault("message", "")
    if rest_names:
        for detail in body.get("details", []):
            for violation in detail.get("fieldViolations", []):
                field = violation["field"]
                violation["field"] = json_name(field)
                prefix = f"Request validation error: {field}: "
                if body["message"].startswith(prefix):
                    body["message"] = body["message"].replace(field, violation["field"], 1)
    return without_request_id(body)


def http_port(api: ServiceProcess) -> int:
    """The REST port the API logged (``HTTP_LISTEN`` is ``127.0.0.1:0`` in the tests)."""
    lines = api.logged("http.started")
    assert lines, "the API serves no HTTP: HTTP_LISTEN is not set"
    return int(lines[-1]["port"])


def as_json(message: Message) -> Any:
    """A message as the REST API sends it: protobuf's canonical JSON mapping."""
    return json_format.MessageToDict(message)


@dataclass
class Answer:
    status: int
    headers: Any
    text: str

    @property
    def json(self) -> Any:
        return json.loads(self.text)

    def field_violations(self) -> list[str]:
        """The fields named by the ``BadRequest`` detail of an error answer."""
        return [
            violation["field"]
            for detail in self.json.get("details", [])
            if detail["@type"].endswith("/google.rpc.BadRequest")
            for violation in detail.get("fieldViolations", [])
        ]

    def error(self) -> dict[str, Any]:
        """The error body less its request ID, checked to be one: JSON, a request ID in
        ``RequestInfo`` equal to the ``X-Request-Id`` header."""
        body = self.json
        assert set(body) == {"code", "message", "details"}, body
        info = self.detail("RequestInfo")
        assert info is not None, body
        assert info["requestId"] == self.headers["X-Request-Id"]
        return without_request_id(body)

    def detail(self, name: str) -> Any:
        """The detail of type ``google.rpc.<name>``, or None."""
        for detail in self.json.get("details", []):
            if detail["@type"] == f"type.googleapis.com/google.rpc.{name}":
                return detail
        return None


class Rest:
    """Calls of one API's REST port, with a token (``None``: send no ``Authorization``)."""

    def __init__(self, session: aiohttp.ClientSession, port: int, token: str | None) -> None:
        self.session = session
        self.base = f"http://127.0.0.1:{port}"
        self.token = token

    def as_caller(self, token: str | None) -> Rest:
        return Rest(self.session, int(self.base.rsplit(":", 1)[1]), token)

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        data: Any = None,
        params: Any = None,
        headers: dict[str, str] | None = None,
    ) -> Answer:
        sent = dict(headers or {})
        if self.token is not None:
            sent.setdefault("Authorization", f"Bearer {self.token}")
        if body is not None:
            data = json.dumps(body)
            sent.setdefault("Content-Type", "application/json")
        async with self.session.request(
            method, self.base + path, data=data, params=params, headers=sent
        ) as response:
            return Answer(response.status, response.headers, await response.text())

    async def get(self, path: str, **kw: Any) -> Answer:
        return await self.call("GET", path, **kw)

    async def send(self, method: str, request: Message, **kw: Any) -> Answer:
        """``request`` of ``method`` ("ImageService.Get") in its REST form."""
        form = rest_form(method, request)
        assert form is not None, f"{method} {request} has no REST form"
        verb, path, body, params = form
        return await self.call(verb, path, body, params=params, **kw)

    async def ok(self, method: str, path: str, body: Any = None, **kw: Any) -> Any:
        """The JSON of a successful answer (fails the test on any other)."""
        answer = await self.call(method, path, body, **kw)
        assert answer.status == 200, (method, path, answer.status, answer.text)
        assert answer.headers.get("X-Request-Id"), "no X-Request-Id"
        return answer.json

    async def wait_done(self, operation_id: str, timeout: float = 60.0) -> Any:
        """Poll ``GET /operations/{id}`` until done, as a shell script would."""

        async def done() -> Any:
            operation = await self.ok("GET", f"/operations/{operation_id}")
            return operation if operation.get("done") else None

        return await eventually(done, timeout=timeout, what=f"operation {operation_id} to finish")


@pytest.fixture(scope="session")
async def http_session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture(scope="session")
def rest(api: ServiceProcess, workers: Any, http_session: aiohttp.ClientSession) -> Rest:
    """The shared stack's REST API as the run's admin (an editor of every folder)."""
    assert support.ADMIN_TOKEN
    return Rest(http_session, http_port(api), support.ADMIN_TOKEN)
