"""Whether the database has the schema this version of the code needs.

The API and the workers check it at start-up, and so do the operator's commands: a database
that was never migrated, or that lacks a migration this version ships, is a one-line error
that says to run ``python -m service migrate``, not a traceback from the first query.

A database *ahead* of the code (a migration applied that this version does not ship) is
accepted: during a rolling upgrade the new version migrates first while old processes still
run.
"""

from __future__ import annotations

from dataclasses import dataclass

from service.domain.errors import Unavailable
from service.domain.setup import MIGRATE_HINT, SchemaBehind, SchemaMissing
from service.runtime.retry import retrying
from service.usecases.ports import Schema


@dataclass(frozen=True)
class SchemaState:
    """Shipped migrations compared with those the migration tool recorded as applied."""

    shipped: tuple[str, ...]
    applied: frozenset[str] | None  # None: the migration tool's table does not exist

    @property
    def pending(self) -> tuple[str, ...]:
        """Shipped migrations not applied, in order."""
        applied = self.applied or frozenset()
        return tuple(m for m in self.shipped if m not in applied)

    @property
    def unknown(self) -> tuple[str, ...]:
        """Applied migrations this version does not ship (a newer version applied them)."""
        return tuple(sorted((self.applied or frozenset()) - set(self.shipped)))

    def problem(self) -> SchemaMissing | SchemaBehind | None:
        """What keeps this code from running on the database, if anything."""
        if not self.applied:
            return SchemaMissing(f"the database has no schema; {MIGRATE_HINT}")
        if self.pending:
            count = len(self.pending)
            return SchemaBehind(
                f"the database schema is {count} migration{'s' if count > 1 else ''} behind"
                f" this version (first missing: {self.pending[0]}); {MIGRATE_HINT}"
            )
        return None


async def schema_state(schema: Schema) -> SchemaState:
    return SchemaState(
        shipped=tuple(schema.shipped_migrations()), applied=await schema.applied_migrations()
    )


async def ensure_schema_current(schema: Schema, *, timeout: float | None = None) -> None:
    """Raise ``SchemaMissing`` or ``SchemaBehind`` unless every shipped migration is applied.

    With ``timeout``, an unreachable database is retried that long (a process starting while
    the database restarts); without, it raises ``Unavailable`` at once.
    """
    if timeout is None:
        state = await schema_state(schema)
    else:
        async for attempt in retrying("schema.check", on=Unavailable, timeout=timeout):
            with attempt:
                state = await schema_state(schema)
    problem = state.problem()
    if problem is not None:
        raise problem
