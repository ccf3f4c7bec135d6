"""Pages: opaque page tokens (versioned, checksummed, so garbage is told apart from a real
token), and how many items fit in one answer."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from service.domain.errors import FieldViolation, InvalidArgument
from service.domain.model import Image, Operation

T = TypeVar("T")

_VERSION = 1
# Tokens we make are far shorter; anything longer is refused before it is parsed.
MAX_TOKEN_LENGTH = 1024


def _digest(payload: bytes) -> str:
    return hashlib.blake2b(payload, digest_size=6, person=b"imgsvc-page").hexdigest()


def encode_page_token(position: dict[str, Any]) -> str:
    """A token that resumes a listing after ``position``."""
    if "v" in position:
        raise ValueError("the key 'v' is reserved for the token version")
    payload = json.dumps({**position, "v": _VERSION}, separators=(",", ":"), sort_keys=True)
    raw = f"{_digest(payload.encode())}.{payload}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def invalid_page_token(field: str = "page_token") -> InvalidArgument:
    return InvalidArgument([FieldViolation(field, "invalid page token")])


def decode_page_token(token: str, field: str = "page_token") -> dict[str, Any]:
    """The position a token carries; ``InvalidArgument`` for anything not made by us."""
    invalid = invalid_page_token(field)
    if len(token) > MAX_TOKEN_LENGTH:
        raise invalid
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        digest, _, payload = raw.partition(".")
        if digest != _digest(payload.encode()):
            raise invalid
        if "\\u0000" in payload or "\x00" in payload:
            raise invalid  # no position holds NUL; the database could not compare it
        position = json.loads(payload)
    except (binascii.Error, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise invalid from exc
    if not isinstance(position, dict) or position.pop("v", None) != _VERSION:
        raise invalid
    return position


def image_wire_bytes(image: Image) -> int:
    """An upper bound of an image's size on the wire."""
    labels = sum(len(k.encode()) + len(v.encode()) + 8 for k, v in image.labels.items())
    return 128 + len(image.name.encode()) + len(image.description.encode()) + labels


def operation_wire_bytes(operation: Operation) -> int:
    image = 0 if operation.response is None else image_wire_bytes(operation.response)
    error = 0 if operation.error is None else len(operation.error.message.encode())
    return 256 + image + error


def fitting(items: Sequence[T], budget: int, size: Callable[[T], int]) -> int:
    """How many of ``items``, from the first, fit in ``budget`` bytes (at least one)."""
    total = 0
    for count, item in enumerate(items):
        total += size(item)
        if total > budget and count > 0:
            return count
    return len(items)
