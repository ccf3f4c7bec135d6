"""Service accounts, their authorized keys, and the rules a JWT an SDK signs with a key must
follow to get an IAM token. Pure: the bytes are signed and checked by ``runtime.signing``, the
records stored elsewhere.

What the official SDK sends (yandexcloud's ``ServiceAccountAuth``): a JWT signed PS256 with
the key's private key, header ``kid`` = the key's ID, claims ``iss`` = the service account's
ID, ``aud`` = ``https://iam.<the SDK's endpoint>/iam/v1/tokens``, ``iat`` = now and ``exp`` =
now + 1 h. Every check below refuses with ``Unauthenticated``; what a message says about a key
or an account (revoked, deleted, whose it is) is said only once the signature has shown that
the caller holds that key.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from service.domain import ids
from service.domain.auth import Principal, Role
from service.domain.errors import Unauthenticated

SERVICE_ACCOUNT_PREFIX = "sva"
KEY_PREFIX = "key"
KEY_ALGORITHM = "RSA_2048"
JWT_ALGORITHM = "PS256"
# A JWT of the SDK is about 700 bytes; anything much larger is not one.
MAX_JWT_BYTES = 8192
MAX_KEY_ID_LENGTH = 64
# The longest lifetime (exp - iat) a JWT may claim: the SDK's is exactly one hour.
MAX_JWT_LIFETIME_SECONDS = 3600
# How far the caller's clock may be ahead of or behind ours.
CLOCK_SKEW_SECONDS = 30
AUDIENCE_TEMPLATE = "https://iam.{endpoint}/iam/v1/tokens"


@dataclass(frozen=True)
class ServiceAccount:
    id: str
    name: str
    role: Role
    folders: frozenset[str]
    created_at: datetime | None = None
    deleted_at: datetime | None = None

    def principal(self) -> Principal:
        return Principal(self.id, self.role, self.folders)


@dataclass(frozen=True)
class StoredKey:
    """An authorized key as the service keeps it: its public half only."""

    id: str
    service_account_id: str
    public_key: str  # PEM, SubjectPublicKeyInfo
    key_algorithm: str = KEY_ALGORITHM
    description: str = ""
    created_at: datetime | None = None
    revoked_at: datetime | None = None


@dataclass(frozen=True)
class KeyOfAccount:
    """A key with the account it belongs to: what checking a JWT needs."""

    key: StoredKey
    account: ServiceAccount


@dataclass(frozen=True)
class NewKey:
    """A key just made: the private half exists only here, to be shown once."""

    key: StoredKey
    private_key: str  # PEM, PKCS#8, unencrypted

    def authorized_key(self, created_at: datetime) -> dict[str, str]:
        """The authorized-key file the official SDKs and the public CLI read."""
        return {
            "id": self.key.id,
            "service_account_id": self.key.service_account_id,
            "created_at": created_at.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "key_algorithm": self.key.key_algorithm,
            "public_key": self.key.public_key,
            "private_key": self.private_key,
        }


def new_service_account(name: str, role: Role, folders: frozenset[str]) -> ServiceAccount:
    return ServiceAccount(ids.new_id(SERVICE_ACCOUNT_PREFIX), name, role, folders)


def new_key(service_account_id: str, keys: tuple[str, str], description: str = "") -> NewKey:
    """A key of the account from a fresh key pair (public PEM, private PEM)."""
    public_pem, private_pem = keys
    key = StoredKey(
        id=ids.new_id(KEY_PREFIX),
        service_account_id=service_account_id,
        public_key=public_pem,
        description=description,
    )
    return NewKey(key, private_pem)


def audience_for(endpoint: str) -> str:
    """The ``aud`` the SDK writes when its endpoint is ``endpoint`` (host:port)."""
    return AUDIENCE_TEMPLATE.format(endpoint=endpoint)


MALFORMED = "Malformed JWT: expected a signed JWT in compact form (header.payload.signature)"
BAD_SIGNATURE = "JWT signature does not verify with the key its kid names"


def check_size(text: str) -> None:
    if len(text.encode()) > MAX_JWT_BYTES:
        raise Unauthenticated(f"JWT too long: at most {MAX_JWT_BYTES} bytes")


def key_id(header: dict[str, Any]) -> str:
    """The key ID (``kid``) of a JWT's header, once its algorithm passes."""
    if header.get("alg") != JWT_ALGORITHM:
        raise Unauthenticated(f"JWT algorithm not accepted: sign with {JWT_ALGORITHM}")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid or len(kid) > MAX_KEY_ID_LENGTH:
        raise Unauthenticated("JWT header has no key ID (kid): name the authorized key's id")
    return kid


def _time(claims: dict[str, Any], name: str) -> float | None:
    """A time claim in seconds since the epoch; ``None`` when absent."""
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise Unauthenticated(f"JWT claim {name} must be a number of seconds since the epoch")
    return float(value)


def check_claims(
    claims: object, found: KeyOfAccount, audiences: frozenset[str], now: float
) -> ServiceAccount:
    """The service account a JWT authenticates, or ``Unauthenticated`` saying why not.

    ``claims``: its payload, whose signature verified with ``found``'s key (the key its
    ``kid`` names, with its account): the caller holds that key.
    """
    if not isinstance(claims, dict):
        raise Unauthenticated("JWT claims are not a JSON object")
    key, account = found.key, found.account
    if claims.get("iss") != key.service_account_id:
        raise Unauthenticated("JWT issuer (iss) is not the service account the key belongs to")
    if account.deleted_at is not None:  # its keys were revoked with it: say why
        raise Unauthenticated("The service account is deleted")
    if key.revoked_at is not None:
        raise Unauthenticated("The key is revoked")
    aud = claims.get("aud")
    presented = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
    if not any(isinstance(a, str) and a in audiences for a in presented):
        expected = " or ".join(sorted(audiences))
        raise Unauthenticated(f"JWT audience (aud) not accepted here: expected {expected}")
    issued, expires, not_before = _time(claims, "iat"), _time(claims, "exp"), _time(claims, "nbf")
    if issued is None or expires is None:
        raise Unauthenticated("JWT must have the claims iat and exp")
    if expires <= now - CLOCK_SKEW_SECONDS:
        raise Unauthenticated("JWT expired (exp): sign a new one")
    if issued > now + CLOCK_SKEW_SECONDS or (
        not_before is not None and not_before > now + CLOCK_SKEW_SECONDS
    ):
        raise Unauthenticated("JWT not yet valid (iat or nbf is in the future)")
    if expires - issued > MAX_JWT_LIFETIME_SECONDS:
        raise Unauthenticated(
            f"JWT lifetime (exp - iat) over {MAX_JWT_LIFETIME_SECONDS} s: sign a shorter one"
        )
    return account
