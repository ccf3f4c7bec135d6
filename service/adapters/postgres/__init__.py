"""PostgreSQL: the only package that imports asyncpg. One module per concern, each class
satisfying a port of ``service.usecases.ports`` over one shared ``Database``."""

from __future__ import annotations

from dataclasses import dataclass

from service.adapters.postgres.accept import PostgresAccepts
from service.adapters.postgres.accounts import PostgresServiceAccounts
from service.adapters.postgres.database import Database
from service.adapters.postgres.finish import PostgresFinishes
from service.adapters.postgres.outbox import PostgresOutbox, PostgresRetention
from service.adapters.postgres.reads import PostgresReads
from service.adapters.postgres.tokens import PostgresTokens
from service.domain.errors import Unavailable
from service.runtime.retry import retrying
from service.runtime.settings import Settings


@dataclass(frozen=True)
class Postgres:
    """Every port PostgreSQL serves, over one pool.

    ``accepts`` holds the quota it is built with (``over``; 1000 from ``connect``): only the
    API accepts operations, and ``bootstrap.build_api`` builds its own ``PostgresAccepts``
    with ``MAX_UNFINISHED_OPERATIONS_PER_FOLDER``, so that the workers do not read it.
    """

    db: Database
    accepts: PostgresAccepts
    reads: PostgresReads
    finishes: PostgresFinishes
    outbox: PostgresOutbox
    retention: PostgresRetention
    tokens: PostgresTokens
    accounts: PostgresServiceAccounts

    @classmethod
    def over(cls, db: Database, max_unfinished_per_folder: int = 1000) -> Postgres:
        return cls(
            db=db,
            accepts=PostgresAccepts(db, max_unfinished_per_folder),
            reads=PostgresReads(db),
            finishes=PostgresFinishes(db),
            outbox=PostgresOutbox(db),
            retention=PostgresRetention(db),
            tokens=PostgresTokens(db),
            accounts=PostgresServiceAccounts(db),
        )

    @classmethod
    async def connect(
        cls, settings: Settings, *, deadline: float, generic_plans: bool = False
    ) -> Postgres:
        """Connect, retrying while the database is unreachable, for ``deadline`` seconds
        (``generic_plans``: see ``Database.connect``)."""
        async for attempt in retrying("database.connect", on=Unavailable, timeout=deadline):
            with attempt:
                db = await Database.connect(
                    str(settings.database_url),
                    min_size=settings.db_pool_min,
                    max_size=settings.db_pool_max,
                    command_timeout=settings.db_command_timeout_seconds,
                    tcp_user_timeout=settings.db_tcp_user_timeout_seconds,
                    generic_plans=generic_plans,
                )
                return cls.over(db)
        raise AssertionError("retrying returned without a result or an error")

    async def close(self) -> None:
        await self.db.close()
