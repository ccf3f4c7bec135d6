"""The operator's commands: ``doctor``, ``token list``, ``ops operations stuck`` and
``ops dead-letters``. Read-only: nothing here changes a row or a queue.

They reach PostgreSQL and RabbitMQ only through the ports ``OpsQueries``, ``Schema`` and
``QueueInspector``; the entry point opens the adapters and renders what these return.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from service.domain.errors import ServiceError
from service.domain.setup import SetupError
from service.usecases.ops_ports import (
    OperationRecord,
    OpsQueries,
    PeekedMessage,
    QueueInspector,
    QueueState,
    TokenRecord,
)
from service.usecases.schema import schema_state


@dataclass(frozen=True)
class Check:
    """One line of ``doctor``: what was checked, whether it holds, and the details."""

    name: str
    ok: bool
    detail: str


Opener = Callable[[], AbstractAsyncContextManager[Any]]


def _failure(exc: Exception) -> str:
    return exc.message if isinstance(exc, ServiceError) else str(exc)


async def check_database(open_schema: Opener, where: str) -> list[Check]:
    """Is PostgreSQL reachable, and does its schema have every shipped migration?"""
    try:
        async with open_schema() as schema:
            state = await schema_state(schema)
    except (SetupError, ServiceError) as exc:
        return [
            Check("database reachable", False, _failure(exc)),
            Check("migrations current", False, "not checked: the database is not reachable"),
        ]
    checks = [Check("database reachable", True, where)]
    problem = state.problem()
    if problem is not None:
        checks.append(Check("migrations current", False, str(problem)))
        return checks
    detail = f"{len(state.shipped)} of {len(state.shipped)} applied"
    if state.unknown:
        detail += f"; also applied, from a newer version: {', '.join(state.unknown)}"
    checks.append(Check("migrations current", True, detail))
    return checks


def _queue_check(state: QueueState, arguments: Mapping[str, Any]) -> Check:
    name = f"queue {state.name}"
    if not state.exists:
        return Check(
            name, False, "missing; the API and the workers declare it when they start: start one"
        )
    if not state.matches:
        return Check(
            name,
            False,
            f"declared with other arguments ({state.detail}); delete it while nothing runs"
            " and start the API or the workers to declare it again",
        )
    kind = arguments.get("x-queue-type", "classic")
    return Check(name, True, f"{kind}, {state.messages} ready, {state.consumers} consumer(s)")


async def check_broker(
    open_inspector: Opener, where: str, queues: Mapping[str, Mapping[str, Any]]
) -> list[Check]:
    """Is RabbitMQ reachable, and is each queue declared with the arguments it should have?"""
    try:
        async with open_inspector() as inspector:
            states = [
                (await inspector.queue_state(name, dict(arguments)), arguments)
                for name, arguments in queues.items()
            ]
    except (SetupError, ServiceError) as exc:
        return [
            Check("broker reachable", False, _failure(exc)),
            *(
                Check(f"queue {name}", False, "not checked: the broker is not reachable")
                for name in queues
            ),
        ]
    return [
        Check("broker reachable", True, where),
        *(_queue_check(state, arguments) for state, arguments in states),
    ]


async def list_tokens(queries: OpsQueries) -> list[TokenRecord]:
    return await queries.list_tokens()


async def stuck_operations(
    queries: OpsQueries, older_than_seconds: float, limit: int
) -> list[OperationRecord]:
    """Operations still unfinished ``older_than_seconds`` after they were accepted."""
    return await queries.unfinished_operations(older_than_seconds, limit)


def pipeline_state(record: OperationRecord, now: datetime) -> str:
    """Where an unfinished operation is in the pipeline, in words."""
    if record.done:
        return "done"
    if record.attempts == 0:
        if record.published_at is None:
            # The API marks what it sent a moment later; the relay sends what stays unmarked.
            return "not marked as sent yet (the outbox relay sends it if it stays so)"
        return "queued, not taken by a worker yet"
    # Taken by a worker: whether its published mark was written no longer matters.
    if record.lease_until is None:
        return f"taken {record.attempts} time(s), not held by a worker"
    if record.lease_until > now:
        return f"taken {record.attempts} time(s), held by a worker"
    return f"taken {record.attempts} time(s), lease expired (the sweeper hands it out again)"


def outcome(record: OperationRecord | None) -> str:
    """What became of an operation, in words."""
    if record is None:
        return "unknown operation (or removed by retention)"
    if not record.done:
        return "unfinished"
    if record.error_code is not None:
        return f"failed: {record.error_message or ''} (code {record.error_code})"
    return "succeeded"


@dataclass(frozen=True)
class DeadLetters:
    """What reached the dead-letter queue: the messages waiting in it now (with their
    operations), and the operations the workers already ended because of it."""

    waiting: list[tuple[PeekedMessage, OperationRecord | None]]
    ended: list[OperationRecord]


async def dead_letters(
    inspector: QueueInspector,
    queries: OpsQueries,
    queue: str,
    *,
    limit: int,
    since_seconds: float,
) -> DeadLetters:
    """Peek at the dead-letter ``queue`` (leaving every message in it) and look up the
    operations it names; also list what the workers ended after dead-lettering."""
    waiting = await inspector.peek(queue, limit)
    records = await queries.operation_records([m.operation_id for m in waiting])
    ended = await queries.dead_lettered_operations(since_seconds, limit)
    return DeadLetters(
        waiting=[(message, records.get(message.operation_id)) for message in waiting],
        ended=ended,
    )
