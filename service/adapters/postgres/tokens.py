"""API tokens: only the SHA-256 hash of each secret is stored.

A revocation sends ``NOTIFY credentials_revoked`` with its commit: every API process drops
the tokens it trusted at once, rather than after ``AUTH_CACHE_SECONDS``.
"""

from __future__ import annotations

from service.adapters.postgres.database import Database
from service.domain.auth import Role, StoredToken

REVOKED_CHANNEL = "credentials_revoked"


class PostgresTokens:
    """``usecases.ports.Tokens`` over PostgreSQL."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def insert_token(self, token: StoredToken) -> None:
        async with self._db.connection() as conn:
            await conn.execute(
                "INSERT INTO api_tokens (id, subject, role, folders, secret_hash, expires_at)"
                " VALUES ($1, $2, $3, $4, $5, $6)",
                token.id,
                token.subject,
                token.role.value,
                sorted(token.folders),
                token.secret_hash,
                token.expires_at,
            )

    async def revoke_token(self, token_id: str) -> bool:
        async with self._db.transaction() as conn:
            status = await conn.execute(
                "UPDATE api_tokens SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL",
                token_id,
            )
            await conn.execute(f"SELECT pg_notify('{REVOKED_CHANNEL}', '')")
        return status.endswith(" 1")

    async def find_token(self, token_id: str) -> StoredToken | None:
        async with self._db.connection() as conn:
            row = await conn.fetchrow(
                "SELECT id, subject, role, folders, secret_hash, expires_at, revoked_at, key_id"
                " FROM api_tokens WHERE id = $1",
                token_id,
            )
        if row is None:
            return None
        return StoredToken(
            id=row["id"],
            subject=row["subject"],
            role=Role(row["role"]),
            folders=frozenset(row["folders"]),
            secret_hash=bytes(row["secret_hash"]),
            expires_at=row["expires_at"],
            revoked_at=row["revoked_at"],
            key_id=row["key_id"],
        )
