"""The ledger check of the fault suite catches what it claims to catch."""

from __future__ import annotations

import hashlib
import uuid

import asyncpg
import pytest

from tests.conftest import database_url_for, drop_database, migrate
from tests.faults.test_fault_injection import Accepted, Ledger, ledger_check, replay
from tests.support import blob


def test_replay_applies_changes_in_order_and_replaces_labels():
    create = {"name": "a", "description": "d", "labels": {"x": "1"}}
    updates = [{"description": "e"}, {"labels": {"y": "2"}}, {"name": "b"}]
    assert replay(create, updates) == {"name": "b", "description": "e", "labels": {"y": "2"}}


@pytest.fixture
async def ledger_db():
    name = f"imgsvc_ledger_{uuid.uuid4().hex[:8]}"
    url = database_url_for(name)
    migrate(url)
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
