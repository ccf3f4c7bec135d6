"""Who is calling and what they may do. Pure: tokens are parsed and hashed here, stored elsewhere.

A token is ``<id>.<secret>``: the ID finds the stored record, the secret is checked against
its SHA-256 hash in constant time. Only the hash is ever stored.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime

from service.domain import ids
from service.domain.errors import PermissionDenied, Unauthenticated

TOKEN_PREFIX = "tok"
ALL_FOLDERS = "*"
_TOKEN = re.compile(r"(?P<id>tok[a-z0-9]{17})\.(?P<secret>[A-Za-z0-9_-]{43})")
_BEARER = re.compile(r"Bearer (?P<token>\S+)", re.IGNORECASE)


class Role(enum.StrEnum):
    VIEWER = "viewer"
    EDITOR = "editor"


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: a subject, a role, and the folders it may act in."""

    subject: str
    role: Role
    folders: frozenset[str]

    def sees(self, folder_id: str) -> bool:
        return ALL_FOLDERS in self.folders or folder_id in self.folders

    def folder_filter(self) -> list[str] | None:
        """The folders to restrict a query to; ``None`` for every folder."""
        return None if ALL_FOLDERS in self.folders else sorted(self.folders)

    def require_editor(self) -> None:
        if self.role is not Role.EDITOR:
            raise PermissionDenied("Permission denied: this method needs the editor role")

    def require_folder(self, folder_id: str) -> None:
        """For a folder the caller names itself (Create, List): refused openly."""
        if not self.sees(folder_id):
            raise PermissionDenied(f"Permission denied for folder {folder_id}")


@dataclass(frozen=True)
class StoredToken:
    id: str
    subject: str
    role: Role
    folders: frozenset[str]
    secret_hash: bytes
    expires_at: datetime | None
    revoked_at: datetime | None
    # An IAM token: the service account key it was exchanged for (IamTokenService.Create).
    key_id: str | None = None


@dataclass(frozen=True)
class NewToken:
    id: str
    secret: str

    @property
    def text(self) -> str:
        return f"{self.id}.{self.secret}"


def new_token() -> NewToken:
    return NewToken(id=ids.new_id(TOKEN_PREFIX), secret=secrets.token_urlsafe(32))


def hash_secret(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


# What a token of this service looks like, for the message that answers something else.
TOKEN_SHAPE = "tok and 17 letters or digits, a dot, then 43 characters"


def parse_authorization(header: str | None) -> tuple[str, str]:
    """The token ID and secret of an ``authorization: Bearer <token>`` header.

    A header that is not ``Bearer <one word>`` is malformed; a word that cannot be a token of
    this service is an invalid token (what a caller who typed or pasted the token needs to
    hear, not a word about headers it never wrote).
    """
    if not header:
        raise Unauthenticated("Authentication required: send authorization: Bearer <token>")
    text = header.strip()
    bearer = _BEARER.fullmatch(text)
    if bearer is None:
        words = text.split()
        if len(words) == 3 and all(w.lower() == "bearer" for w in words[:2]):
            raise Unauthenticated("Invalid token: it begins with 'Bearer ': give the token alone")
        raise Unauthenticated("Malformed authorization header: expected Bearer <token>")
    token = _TOKEN.fullmatch(bearer.group("token"))
    if token is None:
        raise Unauthenticated(f"Invalid token: not a token of this service ({TOKEN_SHAPE})")
    return token.group("id"), token.group("secret")


def verify(stored: StoredToken | None, secret: str, now: datetime) -> Principal:
    """The principal of a presented token, or ``Unauthenticated``."""
    # Compare even for an unknown ID, so timing tells nothing about which IDs exist.
    expected = stored.secret_hash if stored is not None else hash_secret("")
    matches = hmac.compare_digest(expected, hash_secret(secret))
    if stored is None or not matches:
        raise Unauthenticated("Invalid token")
    if stored.revoked_at is not None:
        raise Unauthenticated("Token revoked")
    if stored.expires_at is not None and stored.expires_at <= now:
        raise Unauthenticated("Token expired")
    return Principal(stored.subject, stored.role, stored.folders)
