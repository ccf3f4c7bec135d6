"""Images and operations as the command-line client prints them, and the live progress line
shown while it waits for an operation."""

from __future__ import annotations

import time
from types import TracebackType
from typing import Any

from google.protobuf import empty_pb2, json_format
from google.protobuf.message import Message
from rich.console import Console, ConsoleOptions, RenderResult
from rich.live import Live
from rich.spinner import Spinner
from rich.text import Text

from service.entrypoints.cli.output import print_data, print_record, print_rows
from yandex.cloud.baremetal.v1alpha import image_pb2
from yandex.cloud.operation import operation_pb2

IMAGE_COLUMNS = ("id", "name", "status", "checksum", "created_at", "labels")
OPERATION_COLUMNS = ("id", "description", "created_at", "done", "result")


def as_data(message: Message) -> dict[str, Any]:
    """A message as the public API's JSON mapping (camelCase names; Any values unpacked
    with their ``@type``)."""
    return json_format.MessageToDict(message)


def image_record(image: image_pb2.Image) -> dict[str, Any]:
    return {
        "id": image.id,
        "folder_id": image.folder_id,
        "name": image.name,
        "description": image.description,
        "status": image_pb2.Image.Status.Name(image.status),
        "checksum": image.checksum,
        "created_at": image.created_at.ToDatetime().strftime("%Y-%m-%d %H:%M:%S")
        if image.HasField("created_at")
        else "",
        "labels": dict(sorted(image.labels.items())),
    }


def operation_result(operation: operation_pb2.Operation) -> str:
    """How an operation ended, in a few words."""
    if not operation.done:
        return "running"
    if operation.HasField("error"):
        return f"error {error_text(operation)}"
    image = image_pb2.Image()
    if operation.response.Unpack(image):
        return f"image {image.id} {image_pb2.Image.Status.Name(image.status)}"
    if operation.response.Is(empty_pb2.Empty.DESCRIPTOR):
        return "deleted"
    return "done"


def error_text(operation: operation_pb2.Operation) -> str:
    from grpc import StatusCode

    code = next((c.name for c in StatusCode if c.value[0] == operation.error.code), "UNKNOWN")
    return f"{code}: {operation.error.message}"


def operation_record(operation: operation_pb2.Operation) -> dict[str, Any]:
    return {
        "id": operation.id,
        "description": operation.description,
        "created_by": operation.created_by,
        "created_at": operation.created_at.ToDatetime().strftime("%Y-%m-%d %H:%M:%S"),
        "modified_at": operation.modified_at.ToDatetime().strftime("%Y-%m-%d %H:%M:%S"),
        "done": operation.done,
        "result": operation_result(operation),
    }


def print_image(image: image_pb2.Image, output_format: str) -> None:
    if output_format == "table":
        print_record(image_record(image), "table")
    else:
        print_data(as_data(image), output_format)


def print_images(images: list[image_pb2.Image], output_format: str) -> None:
    if output_format == "table":
        print_rows([image_record(i) for i in images], IMAGE_COLUMNS, "table")
    else:
        print_data([as_data(i) for i in images], output_format)


def print_operation(operation: operation_pb2.Operation, output_format: str) -> None:
    """The operation, and in a table the image it produced below it."""
    if output_format != "table":
        print_data(as_data(operation), output_format)
        return
    print_record(operation_record(operation), "table")
    image = image_pb2.Image()
    if operation.done and operation.response.Unpack(image):
        print_record({"": ""}, "table")
        print_image(image, "table")


def print_operations(operations: list[operation_pb2.Operation], output_format: str) -> None:
    if output_format == "table":
        print_rows([operation_record(o) for o in operations], OPERATION_COLUMNS, "table")
    else:
        print_data([as_data(o) for o in operations], output_format)


class ProgressLine:
    """One line on stderr, redrawn in place while an operation runs: a spinner, what is
    awaited, the image's status and the time elapsed. It disappears when the wait ends.

    Not drawn when stderr is not a terminal (scripts, CI): nothing to erase there.
    """

    def __init__(self, console: Console, what: str) -> None:
        self._what = what
        self._status = ""
        self._note = ""
        self._started = time.monotonic()
        self._spinner = Spinner("dots")
        self._live = Live(self, console=console, transient=True, refresh_per_second=8)

    def _text(self) -> Text:
        elapsed = int(time.monotonic() - self._started)
        text = Text(self._what)
        if self._status:
            text.append(" · image ")
            text.append(self._status, style="bold")
        text.append(f" · {elapsed // 60}:{elapsed % 60:02d}", style="dim")
        if self._note:
            text.append(f" · {self._note}", style="yellow")
        return text

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        # Built at each refresh, so the elapsed time ticks between status changes.
        self._spinner.text = self._text()
        yield self._spinner

    def __enter__(self) -> ProgressLine:
        self._live.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._live.stop()

    def status(self, status: str) -> None:
        """The image's status as last seen; clears a retry note."""
        self._status, self._note = status, ""

    def note(self, text: str) -> None:
        """A passing remark (a retry), shown until the next status."""
        self._note = text
