"""JSON Web Signatures and RSA keys, over PyJWT and ``cryptography``: what the rules of
``service.domain.accounts`` need done to bytes, kept out of the domain, which imports nothing
but the standard library."""

from __future__ import annotations

import json
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa


class MalformedJws(ValueError):
    """Not a compact JWS whose header and payload are JSON objects."""


class BadSignature(ValueError):
    """A well-formed JWS whose signature does not verify with the key given."""


def new_rsa_key_pair(bits: int = 2048) -> tuple[str, str]:
    """A fresh key pair: the public key (PEM, SubjectPublicKeyInfo) and the private key (PEM,
    PKCS#8, unencrypted)."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    private_pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return public_pem.decode(), private_pem.decode()


def unverified_header(text: str) -> dict[str, Any]:
    """The header of a compact JWS, read without checking anything else."""
    if text.count(".") != 2:
        raise MalformedJws("not three parts")
    try:
        header = jwt.get_unverified_header(text)
    except Exception as exc:  # whatever PyJWT raises for bytes that are not a JWS
        raise MalformedJws(str(exc)) from exc
    return dict(header)


def verified_payload(text: str, public_key_pem: str, algorithm: str) -> Any:
    """The JSON payload of a JWS whose signature verifies with the key by ``algorithm``."""
    try:
        signed = jwt.PyJWS().decode_complete(text, key=public_key_pem, algorithms=[algorithm])
    except jwt.InvalidSignatureError as exc:
        raise BadSignature(str(exc)) from exc
    except Exception as exc:
        raise MalformedJws(str(exc)) from exc
    try:
        return json.loads(signed["payload"])
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedJws("payload is not JSON") from exc
