"""Service accounts: the operator's commands (``sa``, ``sa key``) and the exchange of a JWT
signed with an account's key for an IAM token (``IamTokenService.Create``)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from service.domain.accounts import (
    BAD_SIGNATURE,
    JWT_ALGORITHM,
    MALFORMED,
    KeyOfAccount,
    NewKey,
    ServiceAccount,
    StoredKey,
    check_claims,
    check_size,
    key_id,
    new_key,
    new_service_account,
)
from service.domain.auth import Role, StoredToken, hash_secret, new_token
from service.domain.errors import NotFound, Unauthenticated
from service.domain.model import utcnow
from service.runtime import signing
from service.runtime.ratelimit import RateLimiter
from service.usecases.ports import ServiceAccounts


@dataclass(frozen=True)
class IssuedToken:
    text: str
    expires_at: datetime


class TokenExchange:
    """Checks a service account's JWT and makes an IAM token carrying the account's role and
    folders, valid ``lifetime_seconds``. ``limiter`` bounds the exchanges per source address."""

    def __init__(
        self,
        accounts: ServiceAccounts,
        *,
        audiences: frozenset[str],
        lifetime_seconds: float,
        limiter: RateLimiter,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._accounts = accounts
        self._audiences = frozenset(audiences)
        self._lifetime = timedelta(seconds=lifetime_seconds)
        self._limiter = limiter
        self._clock = clock

    def accept_audience(self, audience: str) -> None:
        """Accept ``audience`` too: the one derived from the address the API announces,
        known once its port is bound."""
        self._audiences |= {audience}

    async def create(self, jwt_text: str, source: str) -> IssuedToken:
        self._limiter.acquire(source)
        found = await self._verify(jwt_text)
        account = found.account
        token = new_token()
        expires_at = utcnow() + self._lifetime
        stored = await self._accounts.insert_iam_token(
            StoredToken(
                id=token.id,
                subject=account.id,
                role=account.role,
                folders=account.folders,
                secret_hash=hash_secret(token.secret),
                expires_at=expires_at,
                revoked_at=None,
                key_id=found.key.id,
            )
        )
        if not stored:  # revoked, or its account deleted, since it was read
            raise Unauthenticated("The key is revoked")
        return IssuedToken(token.text, expires_at)

    async def _verify(self, jwt_text: str) -> KeyOfAccount:
        """The key a JWT is signed with, and its account, once every rule holds."""
        check_size(jwt_text)
        try:
            header = signing.unverified_header(jwt_text)
        except signing.MalformedJws as exc:
            raise Unauthenticated(MALFORMED) from exc
        found = await self._accounts.find_key(key_id(header))
        if found is None:
            raise Unauthenticated("Unknown key ID (kid): no authorized key has this ID")
        try:
            claims = signing.verified_payload(jwt_text, found.key.public_key, JWT_ALGORITHM)
        except signing.BadSignature as exc:
            raise Unauthenticated(BAD_SIGNATURE) from exc
        except signing.MalformedJws as exc:
            raise Unauthenticated(MALFORMED) from exc
        check_claims(claims, found, self._audiences, self._clock())
        return found


async def create_service_account(
    accounts: ServiceAccounts, name: str, role: Role, folders: frozenset[str]
) -> ServiceAccount:
    account = new_service_account(name, role, folders)
    await accounts.insert_account(account)
    return account


async def create_key(accounts: ServiceAccounts, account_id: str, description: str) -> NewKey:
    """A new key of a live account; its private half is in the returned value only."""
    made = new_key(account_id, signing.new_rsa_key_pair(), description)
    if not await accounts.insert_key(made.key):
        raise NotFound(f"Service account {account_id} not found")
    return made


async def list_keys(accounts: ServiceAccounts, account_id: str | None) -> list[StoredKey]:
    return await accounts.list_keys(account_id)
