"""The fault suite's checks catch what they claim to catch: the ledger check, the tally of
what clients were told, and the deadlock count."""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
import uuid
from datetime import timedelta
from pathlib import Path

import asyncpg
import grpc
import pytest
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2

from tests.conftest import ADMIN_DATABASE_URL, create_database, drop_database
from tests.faults.cluster import PG_BIN
from tests.faults.load import (
    Accepted,
    Answers,
    DeadlockCount,
    Ledger,
    count_logged_deadlocks,
    failures,
    has_retry_info,
    ledger_check,
    replay,
)
from tests.support import blob, eventually


def test_replay_applies_changes_in_order_and_replaces_labels():
    create = {"name": "a", "description": "d", "labels": {"x": "1"}}
    updates = [{"description": "e"}, {"labels": {"y": "2"}}, {"name": "b"}]
    assert replay(create, updates) == {"name": "b", "description": "e", "labels": {"y": "2"}}


@pytest.fixture
async def ledger_db():
    name = f"imgsvc_ledger_{uuid.uuid4().hex[:8]}"
    url = await asyncio.to_thread(create_database, name)
    conn = await asyncpg.connect(url)
    yield url, conn
    await conn.close()
    await drop_database(name)


async def add_image(conn, image_id, *, status=2, revision=1, description="d"):
    await conn.execute(
        "INSERT INTO images (id, folder_id, name, description, status, revision, checksum)"
        " VALUES ($1, 'f', $1, $2, $3, $4, $5)",
        image_id,
        description,
        status,
        revision,
        hashlib.md5(blob(1)).hexdigest(),
    )


def created(image_id: str) -> dict:
    return {"name": image_id, "description": "d", "labels": {}, "size": 1}


async def add_operation(conn, op_id, image_id, kind="create_image", request="{}", done=True):
    await conn.execute(
        "INSERT INTO operations (id, kind, image_id, folder_id, description, request, done,"
        " response) VALUES ($1, $2, $3, 'f', 'x', $4::jsonb, $5, $6::jsonb)",
        op_id,
        kind,
        image_id,
        request,
        done,
        '{"x": 1}' if done else None,
    )


async def test_the_ledger_check_counts_a_change_applied_twice_and_a_stuck_image(ledger_db):
    url, conn = ledger_db
    ledger = Ledger()
    await add_image(conn, "imgtwice", revision=2)  # one finished operation, two revisions
    await add_operation(conn, "opn1", "imgtwice")
    await add_image(conn, "imgstuck", status=5, revision=1)
    await add_operation(conn, "opn2", "imgstuck")
    ledger.add(Accepted("opn1", "create_image", "imgtwice", created("imgtwice")))
    figures = await ledger_check(url, ledger, done_timeout=1)
    assert figures["applied_twice"] == 1
    assert figures["stuck"] == 1
    assert figures["lost"] == 0


async def test_the_ledger_check_counts_an_acknowledged_operation_that_never_finished(ledger_db):
    url, conn = ledger_db
    ledger = Ledger()
    await add_image(conn, "imglost", revision=0)
    await add_operation(conn, "opn3", "imglost", done=False)
    ledger.add(Accepted("opn3", "create_image", "imglost", created("imglost")))
    ledger.add(Accepted("opnmissing", "update_image", "imglost", {}))
    figures = await ledger_check(url, ledger, done_timeout=1)
    assert figures["lost"] == 2


async def test_the_ledger_check_counts_an_image_that_differs_from_its_replay(ledger_db):
    url, conn = ledger_db
    ledger = Ledger()
    await add_image(conn, "imgdrift", revision=2, description="not what was asked")
    await add_operation(conn, "opn4", "imgdrift")
    await add_operation(
        conn, "opn5", "imgdrift", kind="update_image", request='{"description": "asked"}'
    )
    ledger.add(Accepted("opn4", "create_image", "imgdrift", created("imgdrift")))
    figures = await ledger_check(url, ledger, done_timeout=1)
    assert figures["replay_mismatches"] == 1
    assert figures["applied_twice"] == 0


async def test_the_ledger_check_replays_a_seeded_image_from_its_seeded_values(ledger_db):
    url, conn = ledger_db
    ledger = Ledger()
    await add_image(conn, "imgseeded", revision=1, description="asked")
    await add_operation(
        conn, "opn6", "imgseeded", kind="update_image", request='{"description": "asked"}'
    )
    ledger.add(Accepted("opn6", "update_image", "imgseeded", {"description": "asked"}))
    seeded = {"imgseeded": {"name": "imgseeded", "description": "seeded", "labels": {}}}
    figures = await ledger_check(url, ledger, done_timeout=1, seeded=seeded)
    assert figures["replay_mismatches"] == 0
    seeded["imgseeded"]["name"] = "other"
    figures = await ledger_check(url, ledger, done_timeout=1, seeded=seeded)
    assert figures["replay_mismatches"] == 1


# --- what the clients were told


def rpc_error(code: grpc.StatusCode, *details: object) -> grpc.aio.AioRpcError:
    """A failed call as a client sees it, with a rich status holding ``details``."""
    status = status_pb2.Status(code=code.value[0], message="failed")
    for detail in details:
        packed = any_pb2.Any()
        packed.Pack(detail)
        status.details.append(packed)
    trailing = grpc.aio.Metadata(("grpc-status-details-bin", status.SerializeToString()))
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailing, details="failed")


def retry_info(seconds: float) -> error_details_pb2.RetryInfo:
    delay = duration_pb2.Duration()
    delay.FromTimedelta(timedelta(seconds=seconds))
    return error_details_pb2.RetryInfo(retry_delay=delay)


def test_an_aborted_answer_counts_as_a_fault_only_with_retry_info():
    assert has_retry_info(rpc_error(grpc.StatusCode.ABORTED, retry_info(0.1)))
    assert not has_retry_info(rpc_error(grpc.StatusCode.ABORTED))
    assert not has_retry_info(
        rpc_error(grpc.StatusCode.ABORTED, error_details_pb2.RequestInfo(request_id="r"))
    )
    answers = Answers()
    answers.record("Update", rpc_error(grpc.StatusCode.ABORTED, retry_info(0.1)))
    answers.record("Update", rpc_error(grpc.StatusCode.ABORTED))
    assert answers.figures()["aborted_without_retry_info"] == 1


def test_every_answer_is_tallied_and_internal_unknown_or_unexpected_ones_fail_the_run():
    answers = Answers()
    answers.record("Update", None)
    answers.record("Update", None)
    answers.record("Update", rpc_error(grpc.StatusCode.UNAVAILABLE))
    answers.record("Update", rpc_error(grpc.StatusCode.FAILED_PRECONDITION))
    answers.record("OperationService.Get", rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED))
    clean = answers.figures()
    assert clean["answers"] == {
        "OK": 2,
        "UNAVAILABLE": 1,
        "FAILED_PRECONDITION": 1,
        "DEADLINE_EXCEEDED": 1,
    }
    assert not failures(clean)

    answers.record("Update", rpc_error(grpc.StatusCode.INTERNAL))
    answers.record("OperationService.Get", rpc_error(grpc.StatusCode.UNKNOWN))
    answers.record("OperationService.Get", rpc_error(grpc.StatusCode.NOT_FOUND))
    figures = answers.figures()
    assert (figures["internal"], figures["unknown"], figures["unexpected"]) == (1, 1, 3)
    assert answers.by_method["Update INTERNAL"] == 1
    assert answers.examples["INTERNAL"] == ["Update: failed"]
    assert failures(figures) == ["internal: 1", "unknown: 1", "unexpected: 3"]


# --- deadlocks


class FakeStatistics:
    """pg_stat_database.deadlocks as a server that restarts shows it: a value per read."""

    def __init__(self, *values: int | None) -> None:
        self.values = list(values)

    def psql(self, sql: str) -> str:
        assert "pg_stat_database" in sql
        value = self.values.pop(0)
        if value is None:
            raise RuntimeError("server down")
        return f"{value}\n"


def test_deadlocks_are_counted_across_a_clean_restart_and_a_crash():
    # start 5; 7 before a clean stop (2); kept: 7 after the start; 8 before a kill (1);
    # reset by crash recovery: 0 after the start; 2 at the end (2); then the final read.
    stats = FakeStatistics(5, 7, 7, 8, 0, 2, 2)
    count = DeadlockCount(stats.psql, log_file=None)
    count.start()
    count.before_outage()
    count.start()
    count.before_outage()
    count.start()
    assert count.from_statistics() == 5
    assert count.figures()["deadlocks"] == 5


def test_a_server_unreachable_before_a_kill_loses_only_that_epoch_statistics():
    stats = FakeStatistics(0, None, 0, 1, 1)
    count = DeadlockCount(stats.psql, log_file=None)
    count.start()
    count.before_outage()  # unreachable: that epoch is left to the log
    count.start()
    assert count.from_statistics() == 1


def test_the_server_log_counts_the_deadlocks_of_the_run_database_only(tmp_path: Path):
    log = tmp_path / "postgres.log"
    log.write_text("2024-01-01 [1] postgres@images ERROR:  deadlock detected\n")
    count = DeadlockCount(FakeStatistics(0, 0, 0).psql, log_file=log)
    count.start()  # what was logged before the run does not count
    with log.open("a") as more:
        more.write(
            "2024-01-01 [2] postgres@images ERROR:  deadlock detected\n"
            "2024-01-01 [2] postgres@images DETAIL:  Process 2 waits for ShareLock\n"
            "2024-01-01 [3] postgres@other ERROR:  deadlock detected\n"
        )
    assert count.figures() == {
        "deadlocks": 1,
        "deadlocks_in_pg_stat_database": 0,
        "deadlocks_in_server_log": 1,
    }
    assert count.excerpts() == [
        "2024-01-01 [2] postgres@images ERROR:  deadlock detected\n"
        "2024-01-01 [2] postgres@images DETAIL:  Process 2 waits for ShareLock"
    ]
    assert count_logged_deadlocks("x@images ERROR:  deadlock detected", "images") == 1
    assert count_logged_deadlocks("x@imagesx ERROR:  deadlock detected", "images") == 0


def shared_psql(sql: str) -> str:
    """psql against the shared server's admin URL, as PrivatePostgres.psql runs it."""
    result = subprocess.run(
        [str(PG_BIN / "psql"), "-X", "-At", "-v", "ON_ERROR_STOP=1", ADMIN_DATABASE_URL],
        input=sql,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return result.stdout


async def test_a_real_deadlock_shows_in_pg_stat_database(ledger_db):
    url, _ = ledger_db
    dbname = url.rsplit("/", 1)[1]
    count = DeadlockCount(shared_psql, log_file=None, dbname=dbname)
    await asyncio.to_thread(count.start)
    first, second = await asyncpg.connect(url), await asyncpg.connect(url)
    try:
        await first.execute(
            "CREATE TABLE locks (id int PRIMARY KEY); INSERT INTO locks VALUES (1), (2)"
        )
        one, two = first.transaction(), second.transaction()
        await one.start()
        await two.start()
        await first.execute("UPDATE locks SET id = id WHERE id = 1")
        await second.execute("UPDATE locks SET id = id WHERE id = 2")
        crossing = asyncio.gather(
            first.execute("UPDATE locks SET id = id WHERE id = 2"),
            second.execute("UPDATE locks SET id = id WHERE id = 1"),
            return_exceptions=True,
        )
        outcomes = await asyncio.wait_for(crossing, 30)
        assert sum(isinstance(o, asyncpg.DeadlockDetectedError) for o in outcomes) == 1
        await one.rollback()
        await two.rollback()
    finally:
        # A backend reports its statistics when it ends, at the latest.
        await first.close()
        await second.close()

    async def counted() -> bool:
        return await asyncio.to_thread(count.from_statistics) == 1

    await eventually(counted, timeout=30, interval=0.2, what="the deadlock in pg_stat_database")
