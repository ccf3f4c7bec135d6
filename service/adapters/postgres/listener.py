"""Finished operations as the database announces them (``NOTIFY operation_finished``).

The trigger of migration 0006 sends the operation's columns (``rows.OPERATION_COLUMNS``) as
JSON, or its ID alone when that would not fit in a notification; ``finished_operation`` reads
them with the same row mapping as every other read.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Callable
from datetime import datetime

import asyncpg
import structlog

from service.adapters.postgres.database import HostByHost, single_host_dsns, translate_errors
from service.adapters.postgres.rows import operation_from_row
from service.adapters.postgres.tokens import REVOKED_CHANNEL
from service.domain.errors import Unavailable
from service.domain.model import Operation
from service.runtime.retry import retrying

log = structlog.get_logger(__name__)

CHANNEL = "operation_finished"
# With several hosts in DATABASE_URL (a primary and its standbys), how often the listening
# connection is asked whether its server still answers and still takes writes, and how long
# it may take: a server that hung (its socket open and silent) or was demoted to a standby no
# longer sends the primary's notifications, so the listener moves to the server DATABASE_URL
# now finds (the promoted standby), and waiters look again. With one host there is nowhere
# else to go, and the listener sends nothing while it waits (a closed connection is noticed
# without asking).
CHECK_INTERVAL_SECONDS = 2.0
CHECK_TIMEOUT_SECONDS = 2.0


def finished_operation(payload: str) -> tuple[str, Operation | None]:
    """The ID and, when the notification carries it whole, the finished operation."""
    if not payload.startswith("{"):
        return payload, None  # too large to send: announced by its ID
    data = json.loads(payload)
    for column in ("created_at", "modified_at"):
        data[column] = datetime.fromisoformat(data[column])
    return data["id"], operation_from_row(data)


def _set_event(event: asyncio.Event, *_: object) -> None:
    event.set()


class DoneListener:
    """Listens for finished operations on a connection of its own.

    ``on_done(operation_id, operation)`` runs for each one, with the finished operation when
    the notification carries it (``None`` when it was too large to send). Notifications sent
    while the connection is down are lost, so after every (re)connection ``on_reconnect()``
    runs: listeners re-check whatever they wait for.

    ``on_revoked()`` runs on each ``NOTIFY credentials_revoked`` (a token, a key or a service
    account revoked) and after every (re)connection, since one may have been missed.
    """

    def __init__(
        self,
        dsn: str,
        on_done: Callable[[str, Operation | None], None],
        on_reconnect: Callable[[], None],
        on_revoked: Callable[[], None] = lambda: None,
    ) -> None:
        self._dsn = dsn
        self._on_done = on_done
        self._on_reconnect = on_reconnect
        self._on_revoked = on_revoked
        self._connect_host = HostByHost()

    def _notified(self, payload: str) -> None:
        try:
            operation_id, operation = finished_operation(payload)
        except (ValueError, KeyError, TypeError) as exc:
            # Whose it was is unknown: every waiter looks again.
            log.warning("listener.bad_payload", error=type(exc).__name__)
            self._on_reconnect()
            return
        self._on_done(operation_id, operation)

    async def _connect(self) -> asyncpg.Connection:
        async for attempt in retrying("listener.connect", on=(Unavailable, asyncpg.PostgresError)):
            with attempt, translate_errors():
                return await self._connect_host(self._dsn, timeout=10)
        raise AssertionError("retrying forever returned")

    async def run(self) -> None:
        """Listen for ever, connecting again whenever the connection is lost."""
        while True:
            conn = await self._connect()
            lost = asyncio.Event()
            try:
                conn.add_termination_listener(functools.partial(_set_event, lost))
                with translate_errors():
                    await conn.add_listener(
                        CHANNEL, lambda _c, _p, _ch, payload: self._notified(payload)
                    )
                    await conn.add_listener(
                        REVOKED_CHANNEL, lambda _c, _p, _ch, _payload: self._on_revoked()
                    )
                self._on_revoked()
                self._on_reconnect()
                reason = await _until_lost(conn, lost, checked=len(single_host_dsns(self._dsn)) > 1)
                log.warning("listener.connection_lost", reason=reason)
            except Unavailable as exc:
                log.warning("listener.failed", error=exc.message)
            finally:
                if not conn.is_closed():
                    conn.terminate()


async def _until_lost(conn: asyncpg.Connection, lost: asyncio.Event, *, checked: bool) -> str:
    """Wait until the connection closes or, ``checked``, stops answering or its server
    becomes a standby; returns which."""
    if not checked:
        await lost.wait()
        return "closed"
    while True:
        try:
            await asyncio.wait_for(lost.wait(), CHECK_INTERVAL_SECONDS)
        except TimeoutError:
            pass
        else:
            return "closed"
        try:
            in_recovery = await conn.fetchval(
                "SELECT pg_is_in_recovery()", timeout=CHECK_TIMEOUT_SECONDS
            )
        except (TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
            return "not answering"
        if in_recovery:
            return "a standby"
