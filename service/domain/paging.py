"""Opaque page tokens: versioned, checksummed, so garbage is told apart from a real token."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from typing import Any

from service.domain.errors import FieldViolation, InvalidArgument

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
