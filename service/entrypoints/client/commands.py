"""``python -m service image ...`` and ``python -m service operation ...``: the public API
for people at a terminal.

Mutations wait for their operation by default, with a live progress line, and print the
result; ``--async`` prints the operation at once instead. Exit codes: 0 done, 1 the API
refused the call or the operation finished with an error (its message on stderr), 2 a usage
error, 130 interrupted (the operation goes on).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import click
from google.protobuf import field_mask_pb2

from service.entrypoints.cli.output import format_option, stderr
from service.entrypoints.client.connection import RETRY_SECONDS, ApiClient, ApiError, ApiTarget
from service.entrypoints.client.render import (
    ProgressLine,
    error_text,
    print_image,
    print_images,
    print_operation,
    print_operations,
)
from yandex.cloud.baremetal.v1alpha import image_service_pb2
from yandex.cloud.operation import operation_pb2, operation_service_pb2

F = TypeVar("F", bound=Callable[..., Any])
DEFAULT_ENDPOINT = "127.0.0.1:50051"
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def api_options(command: F) -> F:
    """The options every client command takes: where the API is, the token, the format."""
    options = [
        click.option(
            "--endpoint",
            envvar="IMAGES_ENDPOINT",
            show_envvar=True,
            default=DEFAULT_ENDPOINT,
            show_default=True,
            help="host:port of the API",
        ),
        click.option(
            "--token",
            envvar="IMAGES_TOKEN",
            show_envvar=True,
            help="the bearer token (python -m service token create makes one)",
        ),
        click.option(
            "--ca-file",
            envvar="IMAGES_CA_FILE",
            show_envvar=True,
            type=click.Path(exists=True, dir_okay=False),
            help="PEM certificate(s) to trust: connect with TLS",
        ),
        click.option(
            "--tls",
            envvar="IMAGES_TLS",
            show_envvar=True,
            is_flag=True,
            help="connect with TLS, trusting the system's certificate authorities",
        ),
        click.option(
            "--retry-for",
            envvar="IMAGES_RETRY_SECONDS",
            show_envvar=True,
            type=click.FloatRange(min=0),
            default=RETRY_SECONDS,
            show_default=True,
            metavar="SECONDS",
            help="how long a call is retried while the API is unavailable",
        ),
        format_option,
    ]
    for option in reversed(options):
        command = option(command)
    return command


class Session:
    """One command's connection and printing: the progress line, notices and failures."""

    def __init__(self, options: dict[str, Any]) -> None:
        token = options["token"]
        if not token:
            click.echo(
                "error: no token: set IMAGES_TOKEN or pass --token"
                " (python -m service token create makes one)",
                err=True,
            )
            raise SystemExit(2)
        self.err = stderr()
        self.progress: ProgressLine | None = None
        endpoint = ApiTarget(options["endpoint"], token, options["ca_file"] or "", options["tls"])
        self.api = ApiClient(endpoint, self.notice, retry_seconds=options["retry_for"])
        self.waiting_for = ""  # the operation being waited for: named if interrupted

    def notice(self, text: str) -> None:
        if self.progress is not None:
            self.progress.note(text)
        else:
            self.err.print(f"[yellow]{text}[/]", highlight=False)

    def wait(self, operation: operation_pb2.Operation, what: str) -> operation_pb2.Operation:
        self.waiting_for = operation.id
        with ProgressLine(self.err, f"{what} {operation.id}") as line:
            self.progress = line
            try:
                return self.api.wait(operation, line.status)
            finally:
                self.progress = None


@contextmanager
def session(options: dict[str, Any]) -> Iterator[Session]:
    """A ``Session`` for the command; the API's refusals become one line and exit 1."""
    current = Session(options)
    try:
        with current.api:
            yield current
    except ApiError as exc:
        click.echo(f"error: {exc}", err=True)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        if current.waiting_for:
            click.echo(
                f"interrupted; operation {current.waiting_for} goes on"
                f" (python -m service operation wait {current.waiting_for})",
                err=True,
            )
        else:
            click.echo("interrupted; an operation already started goes on", err=True)
        raise SystemExit(130) from None


def finish(
    current: Session,
    operation: operation_pb2.Operation,
    *,
    wait: bool,
    what: str,
    output_format: str,
) -> None:
    """Print the operation (after waiting for it, unless ``--async``); exit 1 if it failed."""
    if wait:
        operation = current.wait(operation, what)
    print_operation(operation, output_format)
    if operation.done and operation.HasField("error"):
        click.echo(f"error: operation {operation.id} failed: {error_text(operation)}", err=True)
        raise SystemExit(1)


def mutation(command: F) -> F:
    """The ``--async`` flag of commands that start an operation."""
    return click.option(
        "--async",
        "run_async",
        is_flag=True,
        help="print the operation at once instead of waiting for it",
    )(command)


def parse_labels(values: tuple[str, ...]) -> dict[str, str]:
    labels = {}
    for value in values:
        key, sep, text = value.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{value!r} is not key=value", param_hint="--label")
        labels[key] = text
    return labels


label_option = click.option(
    "--label", "labels", multiple=True, metavar="KEY=VALUE", help="a label; repeat for several"
)
folder_option = click.option(
    "--folder", envvar="IMAGES_FOLDER", show_envvar=True, required=True, help="the folder ID"
)


@click.group(context_settings=CONTEXT)
def image() -> None:
    """Create, update, get, list and delete images through the public API."""


@image.command()
@folder_option
@click.option("--name", required=True, help="unique in the folder")
@click.option("--uri", required=True, help="http(s) URL the workers download the image from")
@click.option("--description", default="", help="free text")
@label_option
@mutation
@api_options
def create(
    folder: str,
    name: str,
    uri: str,
    description: str,
    labels: tuple[str, ...],
    run_async: bool,
    output_format: str,
    **options: Any,
) -> None:
    """Create an image from a URL; waits until it is downloaded (or failed)."""
    request = image_service_pb2.CreateImageRequest(
        folder_id=folder, name=name, uri=uri, description=description, labels=parse_labels(labels)
    )
    with session(options) as current:
        operation = current.api.call(current.api.images.Create, request, mutation=True)
        finish(current, operation, wait=not run_async, what="creating", output_format=output_format)


@image.command()
@click.argument("image_id")
@click.option("--name", default=None, help="the new name")
@click.option("--description", default=None, help="the new description ('' clears it)")
@label_option
@click.option("--clear-labels", is_flag=True, help="remove every label")
@mutation
@api_options
def update(
    image_id: str,
    name: str | None,
    description: str | None,
    labels: tuple[str, ...],
    clear_labels: bool,
    run_async: bool,
    output_format: str,
    **options: Any,
) -> None:
    """Change an image's name, description or labels (only what is given; --label replaces
    all labels); waits until the change is applied."""
    paths = []
    request = image_service_pb2.UpdateImageRequest(image_id=image_id)
    if name is not None:
        paths.append("name")
        request.name = name
    if description is not None:
        paths.append("description")
        request.description = description
    if labels or clear_labels:
        if labels and clear_labels:
            raise click.UsageError("--label and --clear-labels exclude each other")
        paths.append("labels")
        request.labels.update(parse_labels(labels))
    if not paths:
        raise click.UsageError(
            "nothing to change: give --name, --description, --label or --clear-labels"
        )
    request.update_mask.CopyFrom(field_mask_pb2.FieldMask(paths=paths))
    with session(options) as current:
        operation = current.api.call(current.api.images.Update, request, mutation=True)
        finish(current, operation, wait=not run_async, what="updating", output_format=output_format)


@image.command()
@click.argument("image_id")
@api_options
def get(image_id: str, output_format: str, **options: Any) -> None:
    """Show one image."""
    with session(options) as current:
        found = current.api.call(
            current.api.images.Get, image_service_pb2.GetImageRequest(image_id=image_id)
        )
    print_image(found, output_format)


@image.command(name="list")
@folder_option
@click.option("--filter", "filter_text", default="", help='e.g. name:"ubuntu" (see the README)')
@click.option("--order-by", default="", help="id, name or createdAt, then asc or desc")
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True)
@api_options
def list_images(
    folder: str, filter_text: str, order_by: str, limit: int, output_format: str, **options: Any
) -> None:
    """List the images of a folder (page after page, up to --limit)."""
    found: list[Any] = []
    token = ""
    with session(options) as current:
        while len(found) < limit:
            page = current.api.call(
                current.api.images.List,
                image_service_pb2.ListImagesRequest(
                    folder_id=folder,
                    page_size=min(limit - len(found), 1000),
                    page_token=token,
                    filter=filter_text,
                    order_by=order_by,
                ),
            )
            found.extend(page.images)
            token = page.next_page_token
            if not token:
                break
    print_images(found, output_format)


@image.command()
@click.argument("image_id")
@mutation
@api_options
def delete(image_id: str, run_async: bool, output_format: str, **options: Any) -> None:
    """Delete an image; waits until it is gone."""
    request = image_service_pb2.DeleteImageRequest(image_id=image_id)
    with session(options) as current:
        operation = current.api.call(current.api.images.Delete, request, mutation=True)
        finish(current, operation, wait=not run_async, what="deleting", output_format=output_format)


@click.group(context_settings=CONTEXT)
def operation() -> None:
    """Follow the operations that Create, Update and Delete start."""


@operation.command(name="get")
@click.argument("operation_id")
@api_options
def get_operation(operation_id: str, output_format: str, **options: Any) -> None:
    """Show an operation as it stands."""
    with session(options) as current:
        found = current.api.get_operation(operation_id)
    print_operation(found, output_format)


@operation.command()
@click.argument("operation_id")
@api_options
def wait(operation_id: str, output_format: str, **options: Any) -> None:
    """Wait until an operation is done, with a progress line, and show it (exit 1 if it
    finished with an error)."""
    with session(options) as current:
        found = current.api.get_operation(operation_id)
        finish(current, found, wait=True, what="waiting for", output_format=output_format)


@operation.command()
@click.argument("operation_id")
@api_options
def cancel(operation_id: str, output_format: str, **options: Any) -> None:
    """Cancel an unfinished operation (it ends with CANCELLED and its change is undone); a
    finished one is shown unchanged."""
    with session(options) as current:
        found = current.api.call(
            current.api.operations.Cancel,
            operation_service_pb2.CancelOperationRequest(operation_id=operation_id),
        )
    print_operation(found, output_format)


@operation.command(name="list")
@click.option("--image", "image_id", required=True, help="the image whose operations to list")
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True)
@api_options
def list_operations(image_id: str, limit: int, output_format: str, **options: Any) -> None:
    """List an image's operations, newest first."""
    found: list[Any] = []
    token = ""
    with session(options) as current:
        while len(found) < limit:
            page = current.api.call(
                current.api.images.ListOperations,
                image_service_pb2.ListImageOperationsRequest(
                    image_id=image_id, page_size=min(limit - len(found), 1000), page_token=token
                ),
            )
            found.extend(page.operations)
            token = page.next_page_token
            if not token:
                break
    print_operations(found, output_format)
