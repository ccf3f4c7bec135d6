"""The operator's use cases over in-memory fakes: the schema check, doctor's checks, where an
operation is in the pipeline, and the dead-letter report."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from service.domain.errors import Unavailable
from service.domain.setup import SchemaBehind, SchemaMissing, Unreachable
from service.usecases.execute import dead_letter_reason
from service.usecases.ops import (
    check_broker,
    check_database,
    dead_letters,
    outcome,
    pipeline_state,
)
from service.usecases.ops_ports import OperationRecord, PeekedMessage, QueueState, TokenRecord
from service.usecases.schema import SchemaState, ensure_schema_current

SHIPPED = ("0001_a", "0002_b", "0003_c")
NOW = datetime(2026, 1, 1, tzinfo=UTC)


class FakeSchema:
    def __init__(self, applied: frozenset[str] | None, error: Exception | None = None) -> None:
        self.applied = applied
        self.error = error

    def shipped_migrations(self) -> Sequence[str]:
        return SHIPPED

    async def applied_migrations(self) -> frozenset[str] | None:
        if self.error is not None:
            raise self.error
        return self.applied


def record(**fields: Any) -> OperationRecord:
    base = OperationRecord(
        id="opn1",
        kind="create_image",
        image_id="img1",
        folder_id="f",
        created_at=NOW - timedelta(hours=1),
        modified_at=NOW - timedelta(hours=1),
        done=False,
        attempts=0,
        published_at=NOW - timedelta(hours=1),
        lease_until=None,
        error_code=None,
        error_message=None,
        image_status=1,
    )
    return replace(base, **fields)


# --- the schema -----------------------------------------------------------------------------


async def test_a_database_without_the_migration_table_has_no_schema():
    with pytest.raises(SchemaMissing, match=r"run `python -m service migrate`"):
        await ensure_schema_current(FakeSchema(None))


async def test_a_database_lacking_a_shipped_migration_is_behind_and_names_the_first():
    with pytest.raises(SchemaBehind, match=r"2 migrations behind .*first missing: 0002_b"):
        await ensure_schema_current(FakeSchema(frozenset({"0001_a"})))


async def test_a_database_ahead_of_the_code_is_accepted():
    state = SchemaState(SHIPPED, frozenset({*SHIPPED, "0004_newer"}))
    assert state.problem() is None
    assert state.unknown == ("0004_newer",)
    await ensure_schema_current(FakeSchema(frozenset({*SHIPPED, "0004_newer"})))


async def test_the_schema_check_retries_an_unreachable_database_within_its_timeout():
    schema = FakeSchema(frozenset(SHIPPED), error=Unavailable("refused"))
    with pytest.raises(Unavailable):
        await ensure_schema_current(schema, timeout=0.05)


# --- doctor ---------------------------------------------------------------------------------


def opener(value: Any = None, error: Exception | None = None) -> Any:
    @contextlib.asynccontextmanager
    async def open_it() -> AsyncIterator[Any]:
        if error is not None:
            raise error
        yield value

    return open_it


async def test_doctor_passes_a_reachable_database_with_every_migration():
    checks = await check_database(opener(FakeSchema(frozenset(SHIPPED))), "db:5432/images")
    assert [(c.name, c.ok) for c in checks] == [
        ("database reachable", True),
        ("migrations current", True),
    ]
    assert checks[1].detail == "3 of 3 applied"


async def test_doctor_fails_migrations_behind_and_says_to_migrate():
    checks = await check_database(opener(FakeSchema(frozenset({"0001_a"}))), "db")
    assert checks[0].ok
    assert not checks[1].ok
    assert "python -m service migrate" in checks[1].detail


async def test_doctor_fails_both_database_checks_when_it_is_unreachable():
    checks = await check_database(opener(error=Unreachable("cannot reach PostgreSQL")), "db")
    assert [c.ok for c in checks] == [False, False]
    assert checks[0].detail == "cannot reach PostgreSQL"
    assert checks[1].detail.startswith("not checked")


class FakeInspector:
    def __init__(self, states: dict[str, QueueState], messages: list[PeekedMessage] = []) -> None:  # noqa: B006
        self.states = states
        self.messages = messages
        self.asked: list[tuple[str, dict[str, Any]]] = []

    async def queue_state(self, queue: str, arguments: dict[str, Any]) -> QueueState:
        self.asked.append((queue, arguments))
        return self.states[queue]

    async def peek(self, queue: str, limit: int) -> list[PeekedMessage]:
        return self.messages[:limit]


def state(name: str, *, exists: bool = True, matches: bool = True, detail: str = "") -> QueueState:
    return QueueState(name, exists, matches, detail, messages=3, consumers=2)


async def test_doctor_checks_each_queue_with_its_expected_arguments():
    inspector = FakeInspector({"q": state("q"), "q.dead": state("q.dead")})
    queues = {"q": {"x-queue-type": "quorum", "x-delivery-limit": 5}, "q.dead": {}}
    checks = await check_broker(opener(inspector), "mq:5672", queues)
    assert [(c.name, c.ok) for c in checks] == [
        ("broker reachable", True),
        ("queue q", True),
        ("queue q.dead", True),
    ]
    assert inspector.asked[0] == ("q", queues["q"])
    assert checks[1].detail == "quorum, 3 ready, 2 consumer(s)"


async def test_doctor_fails_a_missing_queue_and_one_with_other_arguments():
    inspector = FakeInspector(
        {
            "q": state("q", matches=False, detail="inequivalent arg 'x-delivery-limit'"),
            "q.dead": state("q.dead", exists=False),
        }
    )
    checks = await check_broker(opener(inspector), "mq", {"q": {}, "q.dead": {}})
    assert [c.ok for c in checks] == [True, False, False]
    assert "inequivalent arg 'x-delivery-limit'" in checks[1].detail
    assert "missing" in checks[2].detail


async def test_doctor_fails_every_broker_check_when_the_broker_is_unreachable():
    checks = await check_broker(opener(error=Unreachable("cannot reach RabbitMQ")), "mq", {"q": {}})
    assert [(c.name, c.ok) for c in checks] == [("broker reachable", False), ("queue q", False)]


# --- stuck operations and dead letters -------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"published_at": None}, "not marked as sent yet"),
        # Taken by a worker before its mark was written (the mark skips a row a worker holds).
        (
            {"published_at": None, "attempts": 1, "lease_until": NOW + timedelta(seconds=10)},
            "taken 1 time(s), held by a worker",
        ),
        ({"attempts": 0}, "queued, not taken by a worker yet"),
        ({"attempts": 2, "lease_until": NOW + timedelta(seconds=10)}, "held by a worker"),
        ({"attempts": 2, "lease_until": NOW - timedelta(seconds=10)}, "lease expired"),
        ({"attempts": 1}, "not held by a worker"),
    ],
)
def test_progress_says_where_an_unfinished_operation_is(fields, words):
    assert words in pipeline_state(record(**fields), NOW)


def test_outcome_says_what_became_of_an_operation():
    assert outcome(None).startswith("unknown operation")
    assert outcome(record()) == "unfinished"
    assert outcome(record(done=True)) == "succeeded"
    failed = record(done=True, error_code=13, error_message="boom")
    assert outcome(failed) == "failed: boom (code 13)"


class FakeQueries:
    def __init__(self, records: dict[str, OperationRecord], ended: list[OperationRecord]) -> None:
        self.records = records
        self.ended = ended
        self.asked: tuple[float, int] | None = None

    async def list_tokens(self) -> list[TokenRecord]:
        return []

    async def unfinished_operations(self, older: float, limit: int) -> list[OperationRecord]:
        return []

    async def operation_records(self, ids: Sequence[str]) -> dict[str, OperationRecord]:
        return {i: self.records[i] for i in ids if i in self.records}

    async def dead_lettered_operations(self, since: float, limit: int) -> list[OperationRecord]:
        self.asked = (since, limit)
        return self.ended


async def test_dead_letters_pairs_each_waiting_message_with_its_operation():
    known = record(id="opnknown")
    inspector = FakeInspector(
        {},
        [
            PeekedMessage("opnknown", 5, "delivery_limit"),
            PeekedMessage("opngone", 5, ""),
        ],
    )
    ended = [record(id="opnended", done=True, error_code=13, error_message=dead_letter_reason(5))]
    queries = FakeQueries({"opnknown": known}, ended)
    report = await dead_letters(inspector, queries, "q.dead", limit=10, since_seconds=60)
    assert [(m.operation_id, r) for m, r in report.waiting] == [
        ("opnknown", known),
        ("opngone", None),
    ]
    assert report.ended == ended
    assert queries.asked == (60, 10)
