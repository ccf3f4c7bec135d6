"""Connecting to a DATABASE_URL of several hosts one host at a time (``HostByHost``): each
host has its own short timeout, a host that fails is passed over, and the host that last
accepted is tried first."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest

from service.adapters.postgres import database
from service.adapters.postgres.database import (
    CONNECT_TIMEOUT_PER_HOST_SECONDS,
    HostByHost,
    single_host_dsns,
)

URL = "postgresql://app:secret@db1:5432,db2:5433/images?target_session_attrs=read-write"


def test_a_url_of_several_hosts_is_split_into_one_url_per_host():
    assert single_host_dsns(URL) == [
        "postgresql://app:secret@db1:5432/images?target_session_attrs=read-write",
        "postgresql://app:secret@db2:5433/images?target_session_attrs=read-write",
    ]


def test_a_url_of_one_host_is_left_as_it_is():
    assert single_host_dsns("postgresql://app@db1/images") == ["postgresql://app@db1/images"]


class Hosts:
    """Stands in for ``asyncpg.connect``: each host answers as the test says."""

    def __init__(self, failing: set[str]) -> None:
        self.failing = failing
        self.standbys: set[str] = set()
        self.tried: list[tuple[str, float]] = []

    async def connect(self, dsn: str, **kwargs: Any) -> str:
        host = dsn.split("@")[1].split("/")[0]
        self.tried.append((host, kwargs["timeout"]))
        if host in self.failing:
            raise TimeoutError
        if host in self.standbys:
            raise asyncpg.TargetServerAttributeNotMatched("not a primary")
        return host


@pytest.fixture
def hosts(monkeypatch: pytest.MonkeyPatch) -> Hosts:
    fake = Hosts(set())
    monkeypatch.setattr(database.asyncpg, "connect", fake.connect)
    return fake


async def test_a_host_that_hangs_is_passed_over_after_its_own_timeout(hosts: Hosts):
    hosts.failing = {"db1:5432"}
    connected = await HostByHost()(URL, timeout=30)
    assert connected == "db2:5433"
    assert hosts.tried == [
        ("db1:5432", CONNECT_TIMEOUT_PER_HOST_SECONDS),
        ("db2:5433", CONNECT_TIMEOUT_PER_HOST_SECONDS),
    ]


async def test_the_host_that_last_accepted_is_tried_first(hosts: Hosts):
    connect = HostByHost()
    hosts.failing = {"db1:5432"}
    await connect(URL, timeout=30)
    hosts.failing = set()
    hosts.tried.clear()
    assert await connect(URL, timeout=30) == "db2:5433"
    assert [host for host, _ in hosts.tried] == ["db2:5433"]


async def test_a_standby_refused_by_target_session_attrs_is_passed_over(
    monkeypatch: pytest.MonkeyPatch,
):
    async def connect(dsn: str, **kwargs: Any) -> str:
        if "db1" in dsn:
            raise asyncpg.TargetServerAttributeNotMatched("not a primary")
        return "primary"

    monkeypatch.setattr(database.asyncpg, "connect", connect)
    assert await HostByHost()(URL, timeout=30) == "primary"


async def test_when_every_host_fails_the_last_error_is_raised(hosts: Hosts):
    hosts.failing = {"db1:5432", "db2:5433"}
    with pytest.raises(TimeoutError):
        await HostByHost()(URL, timeout=30)


async def test_a_host_that_did_not_answer_is_tried_last_until_it_answers(hosts: Hosts):
    connect = HostByHost()
    assert await connect(URL, timeout=30) == "db1:5432"  # the primary, last good
    # It hangs (or is cut off) while db2 is still a standby: nothing takes writes.
    hosts.failing, hosts.standbys = {"db1:5432"}, {"db2:5433"}
    with pytest.raises(asyncpg.TargetServerAttributeNotMatched):
        await connect(URL, timeout=30)
    # db2 promoted: found at once, without waiting for db1 first.
    hosts.standbys = set()
    hosts.tried.clear()
    assert await connect(URL, timeout=30) == "db2:5433"
    assert [host for host, _ in hosts.tried] == ["db2:5433"]
