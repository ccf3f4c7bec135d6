"""How the API's and the workers' connections have their statements planned."""

from __future__ import annotations

from service.adapters.postgres.database import Database


async def plan_cache_mode(database_url: str, *, generic_plans: bool) -> str:
    db = await Database.connect(
        database_url, min_size=1, max_size=1, command_timeout=10, generic_plans=generic_plans
    )
    try:
        async with db.connection() as conn:
            return str(await conn.fetchval("SHOW plan_cache_mode"))
    finally:
        await db.close()


async def test_the_api_plans_each_statement_once_per_connection(database_url: str):
    assert await plan_cache_mode(database_url, generic_plans=True) == "force_generic_plan"


async def test_the_workers_plan_for_the_values_at_hand(database_url: str):
    """Retention and the sweeper select by ranges of time: PostgreSQL's own choice stays."""
    assert await plan_cache_mode(database_url, generic_plans=False) == "auto"
