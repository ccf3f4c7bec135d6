"""Service accounts and their keys; the IAM tokens exchanged for a JWT signed with a key.

Revoking a key, or deleting an account, revokes every IAM token made with its keys in the
same transaction and sends ``NOTIFY credentials_revoked``, on which every API process drops
the tokens it trusted (``usecases.auth.Authenticator.forget``).
"""

from __future__ import annotations

from typing import Any

from service.adapters.postgres.database import Database
from service.adapters.postgres.tokens import REVOKED_CHANNEL
from service.domain.accounts import KeyOfAccount, ServiceAccount, StoredKey
from service.domain.auth import Role, StoredToken

_NOTIFY = f"SELECT pg_notify('{REVOKED_CHANNEL}', '')"

# The token is made only while its key is active and its account not deleted; the rows are
# locked (FOR SHARE) so that a revocation running meanwhile waits for this insert and then
# revokes the new token too, or this insert waits for the revocation and makes nothing.
_INSERT_IAM_TOKEN = """
INSERT INTO api_tokens (id, subject, role, folders, secret_hash, expires_at, key_id)
SELECT $1, a.id, a.role, a.folders, $2, $3, k.id
  FROM service_account_keys k
  JOIN service_accounts a ON a.id = k.service_account_id
 WHERE k.id = $4 AND k.revoked_at IS NULL AND a.deleted_at IS NULL
   FOR SHARE OF k, a
"""


def _account(row: Any) -> ServiceAccount:
    return ServiceAccount(
        id=row["id"],
        name=row["name"],
        role=Role(row["role"]),
        folders=frozenset(row["folders"]),
        created_at=row["created_at"],
        deleted_at=row["deleted_at"],
    )


def _key(row: Any) -> StoredKey:
    return StoredKey(
        id=row["id"],
        service_account_id=row["service_account_id"],
        public_key=row["public_key"],
        key_algorithm=row["key_algorithm"],
        description=row["description"],
        created_at=row["created_at"],
        revoked_at=row["revoked_at"],
    )


class PostgresServiceAccounts:
    """``usecases.ports.ServiceAccounts`` over PostgreSQL."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def find_key(self, key_id: str) -> KeyOfAccount | None:
        async with self._db.connection() as conn:
            row = await conn.fetchrow(
                "SELECT k.id, k.service_account_id, k.public_key, k.key_algorithm,"
                " k.description, k.created_at, k.revoked_at,"
                " a.name, a.role, a.folders, a.created_at AS account_created_at,"
                " a.deleted_at FROM service_account_keys k"
                " JOIN service_accounts a ON a.id = k.service_account_id WHERE k.id = $1",
                key_id,
            )
        if row is None:
            return None
        account = ServiceAccount(
            id=row["service_account_id"],
            name=row["name"],
            role=Role(row["role"]),
            folders=frozenset(row["folders"]),
            created_at=row["account_created_at"],
            deleted_at=row["deleted_at"],
        )
        return KeyOfAccount(_key(row), account)

    async def insert_iam_token(self, token: StoredToken) -> bool:
        async with self._db.connection() as conn:
            status = await conn.execute(
                _INSERT_IAM_TOKEN, token.id, token.secret_hash, token.expires_at, token.key_id
            )
        return status.endswith(" 1")

    async def insert_account(self, account: ServiceAccount) -> None:
        async with self._db.connection() as conn:
            await conn.execute(
                "INSERT INTO service_accounts (id, name, role, folders) VALUES ($1, $2, $3, $4)",
                account.id,
                account.name,
                account.role.value,
                sorted(account.folders),
            )

    async def list_accounts(self) -> list[ServiceAccount]:
        async with self._db.connection() as conn:
            rows = await conn.fetch(
                "SELECT id, name, role, folders, created_at, deleted_at FROM service_accounts"
                " ORDER BY created_at, id"
            )
        return [_account(row) for row in rows]

    async def delete_account(self, account_id: str) -> bool:
        async with self._db.transaction() as conn:
            deleted = await conn.fetchval(
                "UPDATE service_accounts SET deleted_at = now()"
                " WHERE id = $1 AND deleted_at IS NULL RETURNING id",
                account_id,
            )
            if deleted is None:
                return False
            await conn.execute(
                "UPDATE service_account_keys SET revoked_at = now()"
                " WHERE service_account_id = $1 AND revoked_at IS NULL",
                account_id,
            )
            await conn.execute(
                "UPDATE api_tokens SET revoked_at = now() WHERE revoked_at IS NULL AND key_id IN"
                " (SELECT id FROM service_account_keys WHERE service_account_id = $1)",
                account_id,
            )
            await conn.execute(_NOTIFY)
        return True

    async def insert_key(self, key: StoredKey) -> bool:
        async with self._db.connection() as conn:
            status = await conn.execute(
                "INSERT INTO service_account_keys"
                " (id, service_account_id, key_algorithm, public_key, description)"
                " SELECT $1, id, $3, $4, $5 FROM service_accounts"
                " WHERE id = $2 AND deleted_at IS NULL",
                key.id,
                key.service_account_id,
                key.key_algorithm,
                key.public_key,
                key.description,
            )
        return status.endswith(" 1")

    async def list_keys(self, account_id: str | None) -> list[StoredKey]:
        async with self._db.connection() as conn:
            rows = await conn.fetch(
                "SELECT id, service_account_id, public_key, key_algorithm, description,"
                " created_at, revoked_at FROM service_account_keys"
                " WHERE $1::text IS NULL OR service_account_id = $1 ORDER BY created_at, id",
                account_id,
            )
        return [_key(row) for row in rows]

    async def revoke_key(self, key_id: str) -> bool:
        async with self._db.transaction() as conn:
            revoked = await conn.fetchval(
                "UPDATE service_account_keys SET revoked_at = now()"
                " WHERE id = $1 AND revoked_at IS NULL RETURNING id",
                key_id,
            )
            if revoked is None:
                return False
            await conn.execute(
                "UPDATE api_tokens SET revoked_at = now() WHERE key_id = $1 AND revoked_at IS NULL",
                key_id,
            )
            await conn.execute(_NOTIFY)
        return True
