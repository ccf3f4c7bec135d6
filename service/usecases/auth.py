"""Authentication (bearer tokens checked against their stored hashes, briefly cached) and
the tokens operators create and revoke."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta

from service.domain.auth import (
    NewToken,
    Principal,
    Role,
    StoredToken,
    hash_secret,
    new_token,
    parse_authorization,
    verify,
)
from service.domain.model import utcnow
from service.usecases.ports import Tokens


class Authenticator:
    """Turns an ``authorization`` header into a ``Principal``.

    A stored token is kept ``cache_seconds`` after it was read, so an expiry takes effect
    within that time on every API process; a revocation at once, through ``forget`` (the
    database announces every revocation), or within that time if the announcement is lost.
    """

    def __init__(
        self,
        tokens: Tokens,
        cache_seconds: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_cached: int = 100_000,
    ) -> None:
        self._tokens = tokens
        self._cache_seconds = cache_seconds
        self._clock = clock
        self._max_cached = max_cached
        self._cache: dict[str, tuple[float, StoredToken | None]] = {}

    def forget(self) -> None:
        """Drop every token read: a token was revoked somewhere."""
        self._cache.clear()

    async def authenticate(self, header: str | None) -> Principal:
        token_id, secret = parse_authorization(header)
        stored = await self._lookup(token_id)
        return verify(stored, secret, utcnow())

    async def _lookup(self, token_id: str) -> StoredToken | None:
        now = self._clock()
        cached = self._cache.get(token_id)
        if cached is not None and now - cached[0] < self._cache_seconds:
            return cached[1]
        stored = await self._tokens.find_token(token_id)
        if len(self._cache) >= self._max_cached:
            self._cache.clear()
        self._cache[token_id] = (now, stored)
        return stored


async def create_token(
    tokens: Tokens,
    subject: str,
    role: Role,
    folders: frozenset[str],
    expires_in_seconds: float | None,
) -> NewToken:
    """Make and store a token; its secret exists only in the returned value."""
    token = new_token()
    expires_at = None
    if expires_in_seconds is not None:
        expires_at = utcnow() + timedelta(seconds=expires_in_seconds)
    await tokens.insert_token(
        StoredToken(
            id=token.id,
            subject=subject,
            role=role,
            folders=folders,
            secret_hash=hash_secret(token.secret),
            expires_at=expires_at,
            revoked_at=None,
        )
    )
    return token


async def revoke_token(tokens: Tokens, token: str) -> str | None:
    """Revoke a token given by its ID or whole; the ID if it was active, else ``None``."""
    token_id = token.split(".", 1)[0]
    return token_id if await tokens.revoke_token(token_id) else None
