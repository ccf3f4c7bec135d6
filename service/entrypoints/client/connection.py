"""The command-line client's connection to the public API: a channel (plaintext or TLS), the
bearer token, retries of UNAVAILABLE, and waiting for an operation.

It is a gRPC client like any SDK: it imports the generated stubs, never the use cases.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
from google.longrunning import operations_pb2, operations_pb2_grpc
from google.protobuf import duration_pb2

from yandex.cloud.baremetal.v1alpha import image_pb2, image_service_pb2, image_service_pb2_grpc
from yandex.cloud.operation import operation_pb2, operation_service_pb2, operation_service_pb2_grpc

T = TypeVar("T")

# Each call's deadline; WaitOperation answers well within it.
CALL_TIMEOUT_SECONDS = 30.0
# How long UNAVAILABLE is retried by default before giving up (the API restarting, say).
RETRY_SECONDS = 30.0
# A call refused outright before the API ever answered this command (nothing listens at that
# port, or the name does not resolve) is most likely a mistyped endpoint: it is given up after
# this long, not RETRY_SECONDS.
FIRST_CONTACT_SECONDS = 3.0
_NOTHING_THERE = (
    "connection refused",
    "dns resolution failed",
    "name or service not known",
    "failed to resolve",
)
# WaitOperation's timeout: how often the progress line learns the image's status.
WAIT_STEP_SECONDS = 1.0
# The polling interval when the server has no WaitOperation (the official clients' habit).
POLL_SECONDS = 1.0


class ApiError(Exception):
    """A call the API refused or could not answer: its status code and one-line message."""

    def __init__(self, code: grpc.StatusCode, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        text = f"{self.code.name}: {self.message}"
        return f"{text}; {self.hint}" if self.hint else text


@dataclass(frozen=True)
class ApiTarget:
    """Where the API is and how to reach it."""

    address: str
    token: str
    ca_file: str = ""
    tls: bool = False

    def channel(self) -> grpc.Channel:
        if self.ca_file or self.tls:
            root = Path(self.ca_file).read_bytes() if self.ca_file else None
            return grpc.secure_channel(self.address, grpc.ssl_channel_credentials(root))
        return grpc.insecure_channel(self.address)


def _first_line(text: str | None) -> str:
    lines = (text or "").strip().splitlines()
    return lines[0] if lines else ""


class ApiClient:
    """The services of the public API over one channel, each call retried on UNAVAILABLE.

    ``notice`` is told of each retry (the progress line shows it)."""

    def __init__(
        self,
        endpoint: ApiTarget,
        notice: Callable[[str], None],
        *,
        retry_seconds: float = RETRY_SECONDS,
    ) -> None:
        self._endpoint = endpoint
        self._notice = notice
        self._retry_seconds = retry_seconds
        self._reached = False  # the API has answered a call (with anything but UNAVAILABLE)
        self._channel = endpoint.channel()
        self.images = image_service_pb2_grpc.ImageServiceStub(self._channel)
        self.operations = operation_service_pb2_grpc.OperationServiceStub(self._channel)
        self.longrunning = operations_pb2_grpc.OperationsStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(self, method: Callable[..., T], request: Any, *, mutation: bool = False) -> T:
        """``method(request)`` with the token; UNAVAILABLE is retried for ``retry_seconds``.

        A mutation carries one ``idempotency-key`` on every try, so a retry of a call whose
        answer was lost returns the operation the first try started instead of a second one.
        """
        metadata = [("authorization", f"Bearer {self._endpoint.token}")]
        if mutation:
            metadata.append(("idempotency-key", str(uuid.uuid4())))
        started = time.monotonic()
        give_up = started + self._retry_seconds
        delay = 0.25
        told = ""
        while True:
            try:
                answer = method(request, metadata=metadata, timeout=CALL_TIMEOUT_SECONDS)
            except grpc.RpcError as exc:
                code, details = exc.code(), _first_line(exc.details())
                if code is not grpc.StatusCode.UNAVAILABLE:
                    self._reached = True
                    raise self._error(code, details) from None
                limit = give_up
                if not self._reached and any(s in details.lower() for s in _NOTHING_THERE):
                    limit = min(give_up, started + FIRST_CONTACT_SECONDS)
                if time.monotonic() + delay >= limit:
                    raise self._error(code, details) from None
                notice = f"the API is unavailable ({details}); retrying"
                if notice != told:  # once, not once per try
                    self._notice(notice)
                    told = notice
                time.sleep(delay)
                delay = min(delay * 2, 4.0)
            else:
                self._reached = True
                return answer

    def _error(self, code: grpc.StatusCode, details: str) -> ApiError:
        where = self._endpoint.address
        if code is grpc.StatusCode.UNAVAILABLE:
            return ApiError(
                code,
                f"cannot reach the API at {where} ({details})",
                "is it running? set --endpoint or IMAGES_ENDPOINT",
            )
        if code is grpc.StatusCode.UNAUTHENTICATED:
            return ApiError(
                code,
                details,
                "set IMAGES_TOKEN or --token to a valid token (python -m service token create)",
            )
        return ApiError(code, details)

    def get_operation(self, operation_id: str) -> operation_pb2.Operation:
        return self.call(
            self.operations.Get,
            operation_service_pb2.GetOperationRequest(operation_id=operation_id),
        )

    def image_status(self, image_id: str) -> str:
        """The image's status name, or "deleted" once it is gone."""
        try:
            image = self.call(self.images.Get, image_service_pb2.GetImageRequest(image_id=image_id))
        except ApiError as exc:
            if exc.code is grpc.StatusCode.NOT_FOUND:
                return "deleted"
            raise
        return image_pb2.Image.Status.Name(image.status)

    def wait(
        self, operation: operation_pb2.Operation, progress: Callable[[str], None]
    ) -> operation_pb2.Operation:
        """Block until ``operation`` is done and return it, telling ``progress`` the image's
        status as it goes.

        Uses ``google.longrunning.Operations/WaitOperation`` (answered the moment the
        operation finishes); a server without it (UNIMPLEMENTED) is polled with
        ``OperationService.Get`` instead, once a second.
        """
        image_id = image_id_of(operation)
        waiting = True
        while not operation.done:
            if image_id:
                progress(self.image_status(image_id))
            if waiting:
                try:
                    answer = self.call(
                        self.longrunning.WaitOperation,
                        operations_pb2.WaitOperationRequest(
                            name=operation.id,
                            timeout=duration_pb2.Duration(seconds=int(WAIT_STEP_SECONDS)),
                        ),
                    )
                except ApiError as exc:
                    if exc.code is not grpc.StatusCode.UNIMPLEMENTED:
                        raise
                    waiting = False
                    continue
                if answer.done:
                    operation = self.get_operation(operation.id)
            else:
                time.sleep(POLL_SECONDS)
                operation = self.get_operation(operation.id)
        return operation


_METADATA = (
    image_service_pb2.CreateImageMetadata,
    image_service_pb2.UpdateImageMetadata,
    image_service_pb2.DeleteImageMetadata,
)


def image_id_of(operation: operation_pb2.Operation) -> str:
    """The image an operation is about (from its metadata); "" if it names none."""
    for kind in _METADATA:
        if operation.metadata.Is(kind.DESCRIPTOR):
            metadata = kind()
            operation.metadata.Unpack(metadata)
            return metadata.image_id
    return ""
