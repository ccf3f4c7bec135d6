"""The operations console: its page (``/console``, static files shipped in ``console/``) and
the one read it needs that the public API has not (``/console/api/...``, not a public path).

The page calls the public REST API for everything else, with the token the operator enters
once (kept in the tab's ``sessionStorage`` only). Its own read goes through the same call
frame as every API call: authentication, the rate limit, request IDs, errors.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import Any

from google.protobuf import json_format

from service.domain.errors import FieldViolation, InvalidArgument
from service.entrypoints.grpc.calls import CallHandling, caller
from service.entrypoints.grpc.convert import operation_to_proto
from service.entrypoints.http.frame import framed
from service.entrypoints.http.paths import PathTemplate
from service.entrypoints.http.transcoding import HttpInput, dump_json, shown_name
from service.usecases.ports import RecentOperation
from service.usecases.recent import RecentOperations, console_progress

CONSOLE_PATH = "/console"
API_PREFIX = "/console/api/"
RECENT_TEMPLATE = PathTemplate.parse("/console/api/folders/{folder_id}/operations")
# The frame's name of the read (its access log's ``method``; a read, so logged at DEBUG).
RECENT_METHOD = "/console/ListOperations"
_PAGE_SIZE_KEYS = ("pageSize", "page_size")
_JSON_NAMES = {"folder_id": "folderId", "page_size": "pageSize"}

_FILES = {
    "index.html": "text/html",
    "console.js": "text/javascript",
    "console.css": "text/css",
}
# The page runs only its own script and talks only to this server; nothing may frame it.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self';"
        " img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


@dataclass(frozen=True)
class RecentRequest:
    folder_id: str
    page_size: int


def decode_recent(given: HttpInput) -> RecentRequest:
    """``folder_id`` from the path, an optional ``pageSize`` from the query; nothing else."""
    size = 0
    for key, value in given.query:
        if key not in _PAGE_SIZE_KEYS:
            raise InvalidArgument([FieldViolation(shown_name(key), "unknown query parameter")])
        try:
            size = int(value[:12])  # longer than any page size: refused below or by the rules
        except ValueError:
            raise InvalidArgument(
                [FieldViolation("page_size", "invalid value: expected an integer")]
            ) from None
    if given.body.strip():
        raise InvalidArgument([FieldViolation("body", "must be empty")])
    return RecentRequest(given.path_values["folder_id"], size)


def json_field_path(path: str) -> str:
    """A field of the read as its query and path name it (``page_size`` -> ``pageSize``)."""
    return _JSON_NAMES.get(path, path)


def encode_recent(recent: list[RecentOperation]) -> bytes:
    """``{"operations": [{"operation": <Operation as canonical JSON>, "progress": ...,
    "imageName": ...}]}`` (``imageName`` empty once the image is gone)."""
    return dump_json(
        {
            "operations": [
                {
                    "operation": json_format.MessageToDict(operation_to_proto(each.operation)),
                    "progress": console_progress(each).value,
                    "imageName": each.image_name,
                }
                for each in recent
            ]
        }
    )


def recent_call(calls: CallHandling, recent: RecentOperations) -> Any:
    """The console's read of a folder's recent operations, in the call frame."""

    async def list_recent(request: RecentRequest, context: object) -> list[RecentOperation]:
        return await recent.recent_operations(request.folder_id, request.page_size, caller())

    return framed(calls, RECENT_METHOD, list_recent, decode_recent)


class ConsoleFiles:
    """The console's static files, read once at start-up (a few kilobytes)."""

    def __init__(self) -> None:
        folder = resources.files("service.entrypoints.http") / "console"
        self._files = {
            name: ((folder / name).read_bytes(), content_type)
            for name, content_type in _FILES.items()
        }

    def find(self, path: str) -> tuple[bytes, str] | None:
        """The body and content type of ``/console``, ``/console/`` or a file under it."""
        name = path.removeprefix(CONSOLE_PATH).lstrip("/") or "index.html"
        return self._files.get(name)
