"""One error hierarchy. Each error carries its status code and knows whether a retry can help.

Codes are the numbers of ``google.rpc.Code``; the API maps them to gRPC status codes and the
workers store them in an operation's ``error``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Code(enum.IntEnum):
    """The canonical status codes (``google.rpc.Code``)."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


@dataclass(frozen=True)
class FieldViolation:
    """One offending request field (``google.rpc.BadRequest.FieldViolation``)."""

    field: str
    description: str


class ServiceError(Exception):
    """Base of every error the service reports to a client or stores in an operation."""

    code: Code = Code.INTERNAL
    retryable: bool = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(ServiceError):
    code = Code.INVALID_ARGUMENT

    def __init__(self, violations: list[FieldViolation]) -> None:
        first = violations[0]
        super().__init__(f"Request validation error: {first.field}: {first.description}")
        self.violations = violations


class NotFound(ServiceError):
    code = Code.NOT_FOUND


class AlreadyExists(ServiceError):
    code = Code.ALREADY_EXISTS


class FailedPrecondition(ServiceError):
    code = Code.FAILED_PRECONDITION


class Unauthenticated(ServiceError):
    code = Code.UNAUTHENTICATED


class PermissionDenied(ServiceError):
    code = Code.PERMISSION_DENIED


class ResourceExhausted(ServiceError):
    """A limit was reached: ``retry_after`` (seconds) for rates, ``quota`` for quotas."""

    code = Code.RESOURCE_EXHAUSTED
    retryable = True

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        quota: list[FieldViolation] | None = None,
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        # (subject, description) pairs: google.rpc.QuotaFailure violations on the wire.
        self.quota = quota or []


class Unimplemented(ServiceError):
    code = Code.UNIMPLEMENTED


class DeadlineExceeded(ServiceError):
    code = Code.DEADLINE_EXCEEDED


class Unavailable(ServiceError):
    """A dependency (database, broker, remote server) cannot be reached right now."""

    code = Code.UNAVAILABLE
    retryable = True


class Internal(ServiceError):
    code = Code.INTERNAL


def image_not_found(image_id: str) -> NotFound:
    return NotFound(f"Image {image_id} not found")


def image_name_taken(name: str) -> AlreadyExists:
    return AlreadyExists(f"Image with name {name} already exists")
