"""The two implementations every contract test runs against: the in-memory fake of
``tests/unit/fakes.py`` and the PostgreSQL adapters.

Each offers the ports as ``accepts``, ``reads``, ``finishes``, ``outbox``, ``retention`` and
``tokens``, and the few things a test needs that no port does: rows put in place (an image
already ``READY``), the per-folder quota set, and time moved on. Moving time on is how a test
lets a lease, a relay's claim or a row's age run out, without sleeping: the fake moves its
clock, the database has every stored moment moved back by as much.
"""

from __future__ import annotations

from typing import Protocol

import asyncpg

from service.adapters.postgres import Postgres
from service.domain import ids
from service.domain.model import Image, ImageStatus
from service.usecases.ports import Accepts, Finishes, Outbox, Reads, Retention, Tokens
from tests.unit.fakes import FakeStore


class Implementation(Protocol):
    """The ports of one implementation, and its test-only set-up."""

    @property
    def accepts(self) -> Accepts: ...

    @property
    def reads(self) -> Reads: ...

    @property
    def finishes(self) -> Finishes: ...

    @property
    def outbox(self) -> Outbox: ...

    @property
    def retention(self) -> Retention: ...

    @property
    def tokens(self) -> Tokens: ...

    async def add_image(
        self, folder_id: str, *, name: str | None = None, status: ImageStatus = ImageStatus.READY
    ) -> Image:
        """An image stored as it is, with no operation (what a finished Create leaves)."""
        ...

    def limit_unfinished_per_folder(self, limit: int) -> None: ...

    async def pass_time(self, seconds: float) -> None:
        """Everything stored becomes ``seconds`` older: its times, leases and claims."""
        ...


class FakeImplementation:
    def __init__(self, store: FakeStore) -> None:
        self.store = store

    @property
    def accepts(self) -> Accepts:
        return self.store

    @property
    def reads(self) -> Reads:
        return self.store

    @property
    def finishes(self) -> Finishes:
        return self.store

    @property
    def outbox(self) -> Outbox:
        return self.store

    @property
    def retention(self) -> Retention:
        return self.store

    @property
    def tokens(self) -> Tokens:
        return self.store

    async def add_image(
        self, folder_id: str, *, name: str | None = None, status: ImageStatus = ImageStatus.READY
    ) -> Image:
        return self.store.add_image(folder_id, name=name, status=status)

    def limit_unfinished_per_folder(self, limit: int) -> None:
        self.store.max_unfinished_per_folder = limit

    async def pass_time(self, seconds: float) -> None:
        self.store.advance(seconds)


# Every moment the clock wrote, moved back together ($1: seconds).
_BACK = "- make_interval(secs => $1)"
_PASS_TIME = (
    f"UPDATE operations SET created_at = created_at {_BACK}, modified_at = modified_at {_BACK},"
    f" published_at = published_at {_BACK}, lease_until = lease_until {_BACK},"
    f" relay_claimed_until = relay_claimed_until {_BACK}",
    f"UPDATE images SET created_at = created_at {_BACK}",
    f"UPDATE idempotency_keys SET created_at = created_at {_BACK}",
    f"UPDATE api_tokens SET created_at = created_at {_BACK}, revoked_at = revoked_at {_BACK},"
    f" expires_at = expires_at {_BACK}",
)


class PostgresImplementation:
    """The adapters over a database of the contract tests' own (``db``: a pool over it)."""

    def __init__(self, postgres: Postgres, db: asyncpg.Pool) -> None:
        self.postgres = postgres
        self.db = db

    @property
    def accepts(self) -> Accepts:
        return self.postgres.accepts

    @property
    def reads(self) -> Reads:
        return self.postgres.reads

    @property
    def finishes(self) -> Finishes:
        return self.postgres.finishes

    @property
    def outbox(self) -> Outbox:
        return self.postgres.outbox

    @property
    def retention(self) -> Retention:
        return self.postgres.retention

    @property
    def tokens(self) -> Tokens:
        return self.postgres.tokens

    async def add_image(
        self, folder_id: str, *, name: str | None = None, status: ImageStatus = ImageStatus.READY
    ) -> Image:
        image_id = ids.new_id(ids.IMAGE_PREFIX)
        await self.db.execute(
            "INSERT INTO images (id, folder_id, name, status) VALUES ($1, $2, $3, $4)",
            image_id,
            folder_id,
            name or f"img-{image_id[3:]}",
            int(status),
        )
        image = await self.postgres.reads.get_image(image_id)
        assert image is not None
        return image

    def limit_unfinished_per_folder(self, limit: int) -> None:
        self.postgres.accepts.max_unfinished_per_folder = limit

    async def pass_time(self, seconds: float) -> None:
        async with self.db.acquire() as conn, conn.transaction():
            for statement in _PASS_TIME:
                await conn.execute(statement, seconds)

    async def forget_everything(self) -> None:
        """Every table emptied: each test starts from an empty database, as from a new fake."""
        await self.db.execute(
            "TRUNCATE images, operations, idempotency_keys, api_tokens, folder_quotas,"
            " folder_releases"
        )
