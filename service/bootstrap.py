"""The composition root: the one place that builds adapters and use cases and wires them.

Both processes start here: the API (``entrypoints/api.py``) and the workers
(``entrypoints/worker.py``) call ``start_infrastructure`` and then ``build_api`` or
``build_executor``; every background task runs under the returned ``Supervisor``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic

from service.adapters.download import HttpDownloader
from service.adapters.postgres import Postgres
from service.adapters.postgres.accept import PostgresAccepts
from service.adapters.postgres.gauges import DatabaseGauges
from service.adapters.postgres.listener import DoneListener
from service.adapters.postgres.schema import connect_database, with_current_schema
from service.adapters.rabbitmq import Broker
from service.domain.model import Operation
from service.domain.network import NetworkPolicy, parse_networks
from service.runtime.exposition import MetricsServer, start_metrics_server
from service.runtime.ratelimit import RateLimiter
from service.runtime.settings import Settings
from service.runtime.startup import unless_stopped
from service.runtime.supervisor import Supervisor
from service.runtime.waiters import OperationWaiters
from service.usecases.accounts import TokenExchange
from service.usecases.auth import Authenticator
from service.usecases.execute import Executor
from service.usecases.images import Images
from service.usecases.operations import Encoded, Operations
from service.usecases.outbox import PublishedMarks, published_marks_interval
from service.usecases.recent import RecentOperations

# How long the workers wait for the broker at start-up before they go on (the database's
# wait is STARTUP_TIMEOUT_SECONDS).
STARTUP_DEADLINE_SECONDS = 60.0


@dataclass(frozen=True)
class Infrastructure:
    """What both processes hold: the database, the broker, and the supervisor of their
    background tasks."""

    settings: Settings
    postgres: Postgres
    broker: Broker
    supervisor: Supervisor

    async def close(self) -> None:
        """Stop the background tasks, then close the broker and the database."""
        await self.supervisor.stop()
        await self.broker.close()
        with contextlib.suppress(Exception):
            await self.postgres.close()


async def start_infrastructure(
    settings: Settings,
    *,
    broker_wait: float,
    stop: asyncio.Event | None = None,
    generic_plans: bool = False,
) -> Infrastructure | None:
    """Connect to the database (retrying until ``STARTUP_TIMEOUT_SECONDS``), check that it
    has this version's schema (``SetupError`` if not), and start
    connecting to the broker, waiting for it at most ``broker_wait`` seconds.
    ``generic_plans``: see ``Database.connect`` (the API's processes, not the workers).

    ``None`` once ``stop`` is set before that is done (a SIGTERM during start-up): whatever
    was started is closed again, and the process can exit at once.
    """
    timeout = settings.startup_timeout_seconds
    postgres = await unless_stopped(
        stop,
        with_current_schema(
            connect_database(settings, deadline=timeout, generic_plans=generic_plans),
            retry_for=timeout,
        ),
    )
    if postgres is None:
        return None
    broker = Broker(settings.amqp_url, settings.amqp_queue, settings.amqp_delivery_limit)
    supervisor = Supervisor()
    infra = Infrastructure(settings, postgres, broker, supervisor)
    if stop is None or not stop.is_set():
        supervisor.start("broker-connect", broker.keep_connected)
        with contextlib.suppress(TimeoutError):
            await unless_stopped(stop, broker.wait_connected(broker_wait))
    if stop is not None and stop.is_set():
        await infra.close()
        return None
    return infra


def network_policy(settings: Settings) -> NetworkPolicy:
    return NetworkPolicy(parse_networks(settings.download_allowed_networks))


@dataclass(frozen=True)
class ApiUseCases(Generic[Encoded]):
    """The API's use cases, and what its call frame needs; ``Encoded`` is the entry point's
    form of an operation on the wire."""

    images: Images
    operations: Operations[Encoded]
    marks: PublishedMarks
    authenticator: Authenticator
    limiter: RateLimiter
    recent: RecentOperations  # the operations console's read
    exchange: TokenExchange  # IamTokenService.Create


def build_api(
    infra: Infrastructure, encode: Callable[[Operation], Encoded]
) -> ApiUseCases[Encoded]:
    """The API's use cases over the infrastructure, with their background tasks started.

    ``encode`` is the entry point's form of an operation on the wire (finished ones are kept
    encoded).
    """
    settings, postgres = infra.settings, infra.postgres
    marks = PublishedMarks(postgres.outbox, published_marks_interval(settings.outbox_grace_seconds))
    infra.supervisor.start("published-marks", marks.run)
    waiters = OperationWaiters()
    # The per-folder quota is the API's setting: the workers accept nothing.
    accepts = PostgresAccepts(postgres.db, settings.max_unfinished_operations_per_folder)
    images = Images(
        accepts,
        postgres.reads,
        infra.broker,
        marks,
        publish_timeout=settings.publish_timeout_seconds,
        network_policy=network_policy(settings),
        page_bytes=settings.grpc_max_message_bytes // 2,
    )
    operations = Operations(
        postgres.reads,
        postgres.finishes,
        waiters,
        encode=encode,
        cache_size=settings.operation_cache_size,
        retention_seconds=settings.operation_retention_seconds,
    )
    authenticator = Authenticator(postgres.tokens, settings.auth_cache_seconds)
    listener = DoneListener(
        str(settings.database_url),
        operations.operation_finished,
        waiters.wake_all,
        on_revoked=authenticator.forget,
    )
    infra.supervisor.start("done-listener", listener.run)
    audiences = (a.strip() for a in settings.iam_token_audiences.split(","))
    exchange = TokenExchange(
        postgres.accounts,
        audiences=frozenset(a for a in audiences if a),
        lifetime_seconds=settings.iam_token_lifetime_seconds,
        limiter=RateLimiter(
            settings.iam_token_exchanges_per_second, settings.iam_token_exchange_burst
        ),
    )
    return ApiUseCases(
        images=images,
        operations=operations,
        marks=marks,
        authenticator=authenticator,
        limiter=RateLimiter(settings.rate_limit_per_second, settings.rate_limit_burst),
        recent=RecentOperations(postgres.reads),
        exchange=exchange,
    )


def build_executor(infra: Infrastructure) -> Executor:
    """What a worker does with each message."""
    settings = infra.settings
    downloader = HttpDownloader(
        network_policy(settings),
        timeout=settings.download_timeout_seconds,
        max_bytes=settings.download_max_bytes,
        stall_timeout=settings.download_stall_seconds,
    )
    return Executor(
        infra.postgres.finishes,
        downloader,
        lease_seconds=settings.lease_seconds,
        max_attempts=settings.max_attempts,
        max_creates=settings.worker_concurrency,
    )


def start_metrics(
    infra: Infrastructure, *, serve: bool = True, count_operations: bool = False
) -> MetricsServer | None:
    """With ``METRICS_LISTEN`` set: refresh the sampled gauges under the supervisor (the
    operation counts too with ``count_operations``: the workers) and, with ``serve``, serve
    ``/metrics`` (returned, to stop at exit). ``serve`` is False in the processes of
    ``API_PROCESSES`` > 1, whose parent serves their sum."""
    settings = infra.settings
    if not settings.metrics_listen:
        return None
    gauges = DatabaseGauges(infra.postgres.db, count_operations=count_operations)
    infra.supervisor.every("metrics-gauges", settings.metrics_refresh_seconds, gauges.refresh)
    return start_metrics_server(settings.metrics_listen) if serve else None
