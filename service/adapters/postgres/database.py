"""The connection pool, and the one place driver errors become domain errors.

A lost or refused connection, or a write refused by a read-only server (a standby, a demoted
primary), becomes ``Unavailable`` (retryable), a broken unique name
constraint ``AlreadyExists`` (naming the name, where a statement passes it), a value the
database cannot store ``InvalidArgument``. Callers above the adapters see domain types only.
The other adapter modules catch a driver error only to take another path (a batch that hits
one handed back to be done one by one), never to make a domain error of it.

A connection the server ended while it sat idle in the pool is one of the lost ones, though
asyncpg does not say so: PostgreSQL sends it a FATAL error (a terminated backend, an idle
transaction timed out) and closes it a moment later. asyncpg, receiving an error while no
statement runs, leaves the connection in its "consume the error" state without taking it for
closed until the socket's end arrives, and a statement started in between fails with
``InternalClientError: cannot switch to state N; another operation (2) is in progress``
(MagicStack/asyncpg#1069, #784) before anything is sent. It is translated as the lost
connection it is, and that connection is terminated so the pool never hands it out again
(tests/integration/test_lost_connections.py).
"""

from __future__ import annotations

import contextlib
import functools
import json
import socket
from collections.abc import AsyncIterator, Iterator
from importlib import resources
from typing import Any, TypeAlias, cast
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import structlog
from asyncpg.pool import PoolConnectionProxy

from service.domain.errors import (
    AlreadyExists,
    FieldViolation,
    InvalidArgument,
    Unavailable,
    image_name_taken,
)

log = structlog.get_logger(__name__)

TRANSIENT_ERRORS = (
    # A write on a server that is read-only (SQLSTATE 25006): a standby, or a primary demoted
    # under a pooled connection (MagicStack/asyncpg#253). The connection is dropped
    # (``Database.connection``), so the next one goes where ``target_session_attrs`` finds the
    # primary; the call is retryable.
    asyncpg.ReadOnlySQLTransactionError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
    asyncpg.exceptions.TransactionRollbackError,
    asyncpg.exceptions.CannotConnectNowError,
    ConnectionError,
    OSError,
    TimeoutError,
)

Connection: TypeAlias = "PoolConnectionProxy[asyncpg.Record]"

# A connection lost under a statement: its server died, restarted or became unreachable.
_SERVER_GONE = (
    asyncpg.PostgresConnectionError,  # ConnectionDoesNotExistError among them
    asyncpg.exceptions.AdminShutdownError,
    ConnectionError,
    OSError,
)


def load_sql(name: str) -> str:
    """A statement kept in a ``.sql`` file of this package, beside the code that runs it.

    Comment lines and indentation stay in the file: sent with every statement they would only
    cost bytes, and push the statement's substance (the tables it locks and waits on) out of
    the 1 KiB that ``pg_stat_activity`` shows of it. (No statement of ours continues a string
    literal over a line.)
    """
    text = resources.files(__package__).joinpath(name).read_text(encoding="utf-8")
    lines = (line.strip() for line in text.splitlines())
    return "\n".join(line for line in lines if line and not line.startswith("--"))


# The unique (folder_id, name) of migrations/0001.
IMAGE_NAME_CONSTRAINT = "images_folder_name_key"
# The unique name of a live service account (migrations/0013).
ACCOUNT_NAME_INDEX = "service_accounts_live_name_idx"


@contextlib.contextmanager
def translate_errors(image_name: str | None = None) -> Iterator[None]:
    """Driver errors raised inside become the domain's errors. ``image_name``: the name a
    statement inside gives an image, for the error to say which name is taken."""
    try:
        yield
    except asyncpg.UniqueViolationError as exc:
        if exc.constraint_name == IMAGE_NAME_CONSTRAINT:
            if image_name is not None:
                raise image_name_taken(image_name) from exc
            raise AlreadyExists("Image with that name already exists") from exc
        if exc.constraint_name == ACCOUNT_NAME_INDEX:
            raise AlreadyExists("A service account with that name already exists") from exc
        raise
    except asyncpg.DataError as exc:
        # Validation keeps such values out; should one slip through, it is still the
        # client's input, not a server fault.
        raise InvalidArgument(
            [FieldViolation("request", "contains a value that cannot be stored or compared")]
        ) from exc
    except asyncpg.ReadOnlySQLTransactionError as exc:
        raise Unavailable("database unavailable: the server is read-only (a standby)") from exc
    except TRANSIENT_ERRORS as exc:
        raise Unavailable(f"database unavailable: {type(exc).__name__}") from exc
    except asyncpg.InternalClientError as exc:
        # The protocol out of step with the server: a connection broken underneath (see the
        # module's docstring). Logged, in case it ever is a driver bug instead.
        log.warning("database.connection_broken", error=str(exc))
        raise Unavailable("database unavailable: connection lost") from exc


# How long one host of DATABASE_URL has to accept a connection before the next is tried. A
# host that died refuses at once; one that hangs (frozen, or cut off without a reset) would
# otherwise take a connect's whole timeout and leave the hosts after it untried
# (MagicStack/asyncpg#1155), so a failover to a standby listed second would never be found.
CONNECT_TIMEOUT_PER_HOST_SECONDS = 2.0


def single_host_dsns(dsn: str) -> list[str]:
    """One DSN per host of ``dsn`` (``postgresql://u@h1:p1,h2:p2/db?...``), in its order, each
    with the rest of ``dsn`` (user, database, parameters such as ``target_session_attrs``)."""
    parts = urlsplit(dsn)
    userinfo, at, hosts = parts.netloc.rpartition("@")
    if "," not in hosts:
        return [dsn]
    return [
        urlunsplit(parts._replace(netloc=f"{userinfo}{at}{host.strip()}"))
        for host in hosts.split(",")
        if host.strip()
    ]


class HostByHost:
    """Connects to the hosts of a DSN one at a time, each given
    ``CONNECT_TIMEOUT_PER_HOST_SECONDS``, starting with the one that last accepted: a hung
    host costs a connect that long, not the whole timeout, and is then passed over. A host
    that did not answer (timed out, refused, unreachable) is tried last until it answers
    again, so a primary that hung or was cut off does not cost every later connect its
    timeout while a standby is promoted. Each host's connection is checked against the DSN's
    ``target_session_attrs`` (asyncpg's own check), so with ``read-write`` only the primary
    is taken. The pool's ``connect``."""

    def __init__(self) -> None:
        self._last_good: str | None = None
        self._unanswered: set[str] = set()

    def _order(self, hosts: list[str]) -> list[str]:
        if self._last_good in hosts:
            hosts.remove(self._last_good)
            hosts.insert(0, self._last_good)
        answered = [host for host in hosts if host not in self._unanswered]
        return answered + [host for host in hosts if host in self._unanswered]

    async def __call__(self, dsn: str, **kwargs: Any) -> asyncpg.Connection:
        hosts = single_host_dsns(dsn)
        if len(hosts) == 1:
            alone: asyncpg.Connection = await asyncpg.connect(dsn, **kwargs)
            return alone
        timeout = min(kwargs.pop("timeout", 60.0), CONNECT_TIMEOUT_PER_HOST_SECONDS)
        error: BaseException | None = None
        for host in self._order(hosts):
            try:
                conn: asyncpg.Connection = await asyncpg.connect(host, timeout=timeout, **kwargs)
            except asyncpg.TargetServerAttributeNotMatched as exc:
                error = exc  # it answered: a standby
                self._unanswered.discard(host)
                continue
            except TRANSIENT_ERRORS as exc:
                error = exc
                self._unanswered.add(host)
                continue
            self._last_good = host
            self._unanswered.discard(host)
            return conn
        assert error is not None
        raise error


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Released connections need no reset: nothing here changes session state (no SET, no
    LISTEN, no advisory locks), so asyncpg's default reset would be a wasted round trip."""


def _drop_when_unacknowledged(conn: asyncpg.Connection, seconds: float) -> None:
    """A TCP connection to the server is dropped by the kernel once what it sent (a statement,
    or a keepalive probe after ``seconds`` idle) goes unacknowledged for ``seconds``: a server
    that vanished (a dead host, a partition: no reset ever comes) ends a call then, not at
    the command timeout, and an idle pooled connection to it is found before a call takes it.
    A Unix socket, or ``seconds`` 0, is left as it is."""
    if seconds <= 0:
        return
    # asyncpg keeps its transport private; the socket is asyncio's public extra.
    transport = getattr(conn, "_transport", None)
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    whole = max(1, round(seconds))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, whole)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, max(1, whole // 3))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, round(seconds * 1000))


async def _init_connection(conn: asyncpg.Connection, tcp_user_timeout: float = 0.0) -> None:
    _drop_when_unacknowledged(conn, tcp_user_timeout)
    await conn.set_type_codec(
        "jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog", format="text"
    )


class Database:
    """A pool of connections; every use of one is bounded in time and has its errors
    translated."""

    def __init__(self, pool: asyncpg.Pool, acquire_timeout: float = 30.0) -> None:
        self._pool = pool
        self._acquire_timeout = acquire_timeout

    @classmethod
    async def connect(
        cls,
        dsn: str,
        *,
        min_size: int,
        max_size: int,
        command_timeout: float,
        tcp_user_timeout: float = 0.0,
        generic_plans: bool = False,
    ) -> Database:
        """A pool of connections. ``generic_plans``: each prepared statement is planned once
        per connection (``plan_cache_mode = force_generic_plan``), for a process whose
        statements look rows up by key (the API), never for one whose statements select by
        ranges of time (the worker's retention and sweeper), where a plan for the values at
        hand can be much better. ``tcp_user_timeout``: see ``_drop_when_unacknowledged``."""
        plans = {"plan_cache_mode": "force_generic_plan"} if generic_plans else {}
        with translate_errors():
            pool = await asyncpg.create_pool(
                dsn,
                # The stubs' protocol spells out every keyword of asyncpg.connect, which
                # HostByHost passes on as they come.
                connect=cast(Any, HostByHost()),
                min_size=min_size,
                max_size=max_size,
                command_timeout=command_timeout,
                init=functools.partial(_init_connection, tcp_user_timeout=tcp_user_timeout),
                reset=_keep_session,
                timeout=min(command_timeout, 10.0),  # to establish one connection
                server_settings={
                    # A backend waiting on a lock notices a dead client (a killed worker) and
                    # rolls back, instead of holding its row locks until the lock is granted.
                    "client_connection_check_interval": "1000",
                    "idle_in_transaction_session_timeout": "60000",
                    **plans,
                },
            )
        return cls(pool, acquire_timeout=command_timeout)

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[Connection]:
        """A pooled connection, waited for at most the command timeout; errors translated.

        A connection that shows its server gone or changed drops every other connection of
        the pool as well (each is replaced when next taken): they lead to the same server, and
        a primary that vanished under them (a dead host, a partition) would otherwise cost one
        call the whole command timeout per pooled connection before the pool found the new
        primary (tests/integration/test_lost_connections.py)."""
        with translate_errors():
            async with self._pool.acquire(timeout=self._acquire_timeout) as conn:
                try:
                    yield conn
                except (
                    asyncpg.InternalClientError,
                    asyncpg.ReadOnlySQLTransactionError,
                    TimeoutError,
                ):
                    # Broken underneath, on a server that no longer takes writes, or on one
                    # that stopped answering (a statement past the command timeout): never
                    # back into the pool.
                    conn.terminate()
                    await self._pool.expire_connections()
                    raise
                except _SERVER_GONE:
                    await self._pool.expire_connections()
                    raise

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Connection]:
        """A connection in a transaction that commits when the block ends without error."""
        async with self.connection() as conn, conn.transaction():
            yield conn

    def pool_usage(self) -> tuple[int, int]:
        """Connections taken from the pool, and connections it holds open."""
        size = self._pool.get_size()
        return size - self._pool.get_idle_size(), size

    async def ping(self) -> None:
        async with self.connection() as conn:
            await conn.fetchval("SELECT 1")

    async def close(self) -> None:
        await self._pool.close()
