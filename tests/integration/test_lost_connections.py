"""A database connection lost under a call reaches the caller as ``Unavailable``, never as a
driver error (which the API would answer INTERNAL).

What was seen under the fault suite: ``InternalClientError: cannot switch to state 12; another
operation (2) is in progress`` from the group commit and from a worker. Its cause: when a
backend is terminated while its connection sits idle in the pool, PostgreSQL sends the
connection a FATAL error and only then closes it. asyncpg, receiving an error while no
statement runs, puts the connection in its "consume the error" state but does not take it for
closed until the socket's end arrives; a call given that connection by the pool in between
fails with that message before anything is sent. The first test holds the socket's end back
to make that moment last; the second terminates backends under batched calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from service.adapters.postgres import Postgres
from service.adapters.postgres.database import Database
from service.domain import ids
from service.domain.auth import Principal, Role
from service.domain.errors import Code, FailedPrecondition, ServiceError, Unavailable
from service.runtime.waiters import OperationWaiters
from service.usecases.images import Images
from service.usecases.operations import Operations
from service.usecases.outbox import PublishedMarks
from tests.integration.rows import add_image, folder
from tests.support import eventually
from tests.unit.fakes import FakePublisher

APPLICATION = "lost-connections-test"


class ClosingHeldBack:
    """A TCP forwarder to PostgreSQL that passes every byte at once but holds back the
    server's end of a connection (its FIN) until ``let_close()``."""

    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self._server: asyncio.Server | None = None
        self._held: list[asyncio.StreamWriter] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0
        self.server_closed = asyncio.Event()
        self._holding = True

    async def start(self) -> ClosingHeldBack:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection(*self._target)

        async def upstream() -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while data := await client_r.read(65536):
                    server_w.write(data)
                    await server_w.drain()
            server_w.close()

        async def downstream() -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while data := await server_r.read(65536):
                    client_w.write(data)
                    await client_w.drain()
            if self._holding:
                self._held.append(client_w)  # the client is not told yet
                self.server_closed.set()
            else:
                client_w.close()

        task = asyncio.create_task(upstream())
        self._tasks.add(task)
        await downstream()

    def let_close(self) -> None:
        """Pass the held ends on, and every one from now on."""
        self._holding = False
        for writer in self._held:
            writer.close()
        self._held.clear()

    async def close(self) -> None:
        self.let_close()
        for task in self._tasks:
            task.cancel()
        if self._server is not None:
            self._server.close()


def url_with(database_url: str, *, port: int | None = None) -> str:
    """The run's database URL, through another port, its sessions named for this test."""
    parts = urlsplit(database_url)
    netloc = parts.netloc if port is None else f"{parts.netloc.rsplit(':', 1)[0]}:{port}"
    return urlunsplit(parts._replace(netloc=netloc, query=f"application_name={APPLICATION}"))


@pytest.fixture
async def held_back(database_url: str) -> AsyncIterator[ClosingHeldBack]:
    parts = urlsplit(database_url)
    proxy = await ClosingHeldBack(parts.hostname or "127.0.0.1", parts.port or 5432).start()
    yield proxy
    await proxy.close()


async def test_a_connection_ended_by_the_server_while_idle_is_unavailable_not_internal(
    database_url: str, db: asyncpg.Pool, held_back: ClosingHeldBack
) -> None:
    database = await Database.connect(
        url_with(database_url, port=held_back.port), min_size=1, max_size=1, command_timeout=10
    )
    store = Postgres.over(database)
    try:
        assert await store.reads.get_image(ids.new_id(ids.IMAGE_PREFIX)) is None
        async with database.connection() as conn:
            pid = conn.get_server_pid()
        await db.execute("SELECT pg_terminate_backend($1)", pid)
        await asyncio.wait_for(held_back.server_closed.wait(), 10)
        for _ in range(20):  # turns of the loop: the client reads the FATAL error it was sent
            await asyncio.sleep(0)

        with pytest.raises(Unavailable):
            await store.reads.get_image(ids.new_id(ids.IMAGE_PREFIX))

        held_back.let_close()

        async def answers_again() -> bool:
            with contextlib.suppress(Unavailable):
                return await store.reads.get_image(ids.new_id(ids.IMAGE_PREFIX)) is None
            return False

        await eventually(answers_again, timeout=10, what="a fresh connection")
    finally:
        await store.close()


async def terminate_backends(db: asyncpg.Pool, stop: asyncio.Event) -> int:
    """Terminate this test's sessions again and again until ``stop``; how many were ended."""
    ended = 0
    while not stop.is_set():
        ended += await db.fetchval(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = current_database() AND application_name = $1",
            APPLICATION,
        )
        await asyncio.sleep(random.uniform(0.05, 0.2))
    return ended


async def test_terminated_backends_under_batched_calls_give_only_unavailable(
    database_url: str, db: asyncpg.Pool
) -> None:
    """Updates (group commit), the worker's one-statement apply and polls (batched reads, some
    given up on by their callers midway), while every session of the pool is terminated
    every few dozen milliseconds: each call succeeds or is UNAVAILABLE."""
    database = await Database.connect(
        url_with(database_url), min_size=4, max_size=8, command_timeout=10
    )
    store = Postgres.over(database)
    f = folder()
    caller = Principal(subject="tester", role=Role.EDITOR, folders=frozenset({f}))
    images = Images(
        store.accepts, store.reads, FakePublisher(), PublishedMarks(store.outbox), publish_timeout=1
    )
    operations = Operations(
        store.reads, store.finishes, OperationWaiters(), encode=lambda _: b"", cache_size=0
    )
    outcomes: Counter[str] = Counter()
    stop = asyncio.Event()

    def record(exc: BaseException) -> None:
        if isinstance(exc, ServiceError):
            outcomes[exc.code.name] += 1
        else:
            outcomes[f"{type(exc).__name__}: {exc}"] += 1

    async def put_back(image_id: str) -> None:
        """A lost answer may leave the image UPDATING: the worker's part puts it back."""
        async with database.connection() as conn:  # the store's pool: its errors translated
            pending = await conn.fetch(
                "SELECT id FROM operations WHERE image_id = $1 AND NOT done", image_id
            )
        await store.finishes.apply_updates([r["id"] for r in pending])

    async def user(image_id: str) -> None:
        while not stop.is_set():
            try:
                try:
                    operation = await images.update_image(
                        image_id, ["description"], "", "d", {}, caller
                    )
                except FailedPrecondition:
                    await put_back(image_id)
                    continue
                outcomes["accepted"] += 1
                # Some polls are given up on by their caller in the middle of the statement.
                poll = operations.get_operation(operation.id, caller)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(poll, random.choice([0.0005, 0.002, 10]))
                await store.finishes.apply_updates([operation.id])
            except Exception as exc:
                record(exc)

    try:
        users = [asyncio.create_task(user(await add_image(db, f))) for _ in range(24)]
        killer = asyncio.create_task(terminate_backends(db, stop))
        await asyncio.sleep(4)  # the duration of the load, not a wait for a condition
        stop.set()
        await asyncio.gather(*users)
        ended = await killer
    finally:
        stop.set()
        await store.close()
    assert ended > 20, "the backends were terminated"
    assert outcomes["accepted"] > 20, outcomes
    assert set(outcomes) <= {"accepted", Code.UNAVAILABLE.name}, json.dumps(outcomes, indent=1)


async def pids_of_every_connection(database: Database, size: int) -> set[int]:
    """The server PIDs of all ``size`` connections of the pool (all taken at once)."""
    async with contextlib.AsyncExitStack() as stack:
        taken = [await stack.enter_async_context(database.connection()) for _ in range(size)]
        return {conn.get_server_pid() for conn in taken}


async def fail_on_one_connection(database: Database, failure: str) -> None:
    """``failure``, then a write, on one connection of the pool."""
    async with database.connection() as conn:
        await conn.execute(failure)
        await conn.execute("CREATE TABLE lost_connections_probe (i int)")


@pytest.mark.parametrize(
    "failure",
    [
        "SELECT pg_sleep(5)",  # past the command timeout: a server that stopped answering
        # a server that no longer takes writes (a demoted primary), as this session sees it
        "SET default_transaction_read_only = on",  # then a write: see below
        "SELECT pg_terminate_backend(pg_backend_pid())",  # the connection lost under a call
    ],
)
async def test_a_connection_that_shows_its_server_gone_replaces_the_whole_pool(
    database_url: str, failure: str
) -> None:
    """The other connections lead to the same server: none of them is handed out again, so a
    primary that vanished costs one call its timeout, not one per pooled connection."""
    size = 3
    database = await Database.connect(
        url_with(database_url), min_size=size, max_size=size, command_timeout=0.5
    )
    try:
        before = await pids_of_every_connection(database, size)
        assert len(before) == size

        with pytest.raises(Unavailable):
            await fail_on_one_connection(database, failure)

        after = await pids_of_every_connection(database, size)
        assert len(after) == size
        assert not after & before
    finally:
        await database.close()


@pytest.fixture
def drop_packets_to() -> Iterator[Callable[[int], None]]:
    """Makes the loopback drop every packet sent to a port: what a host that vanished, or a
    partition, looks like to the client (no reset, no refusal: nothing is acknowledged)."""
    binary = shutil.which("iptables")
    if binary is None or os.geteuid() != 0:
        pytest.skip("needs iptables and root, to drop packets")
    rules: list[list[str]] = []

    def drop(port: int) -> None:
        rule = ["INPUT", "-i", "lo", "-p", "tcp", "--dport", str(port), "-j", "DROP"]
        added = subprocess.run([binary, "-I", *rule], capture_output=True, text=True)
        if added.returncode != 0:
            pytest.skip(f"iptables cannot add a rule here: {added.stderr.strip()}")
        rules.append(rule)

    yield drop
    for rule in rules:
        subprocess.run([binary, "-D", *rule], capture_output=True, check=False)


async def select_one(database: Database) -> object:
    async with database.connection() as conn:
        return await conn.fetchval("SELECT 1")


async def test_a_call_to_a_server_that_stopped_acknowledging_ends_at_the_tcp_user_timeout(
    database_url: str, held_back: ClosingHeldBack, drop_packets_to: Callable[[int], None]
) -> None:
    """The call ends UNAVAILABLE about DB_TCP_USER_TIMEOUT_SECONDS after the server went
    silent, long before the command timeout."""
    held_back.let_close()  # a plain forwarder: its port is the server's address here
    database = await Database.connect(
        url_with(database_url, port=held_back.port),
        min_size=1,
        max_size=1,
        command_timeout=60,
        tcp_user_timeout=1.0,
    )
    try:
        assert await select_one(database) == 1
        drop_packets_to(held_back.port)
        started = time.monotonic()
        with pytest.raises(Unavailable):
            await select_one(database)
        assert time.monotonic() - started < 10  # the command timeout is 60 s
    finally:
        await asyncio.wait_for(database.close(), 30)
