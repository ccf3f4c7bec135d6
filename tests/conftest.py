"""Fixtures shared by the integration and end-to-end tests.

Every test run gets a database and queue names of its own (``imgsvc_test_<run>``,
``image-operations-test-<run>``), created here and removed at the end.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import aio_pika
import asyncpg
import grpc
import pytest

from tests import support
from tests.support import ROOT, BlobServer, ServiceProcess, base_env
from yandex.cloud.baremetal.v1alpha import image_service_pb2_grpc
from yandex.cloud.operation import operation_service_pb2_grpc

# The REST API's fixtures (``rest``), for the e2e, fuzz and console tests alike.
pytest_plugins = ("tests.e2e.rest",)

ADMIN_DATABASE_URL = os.environ.get(
    "TEST_DATABASE_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
AMQP_URL = os.environ.get("TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")


@pytest.fixture(scope="session")
def run_id() -> str:
    return uuid.uuid4().hex[:10]


def database_url_for(name: str) -> str:
    parts = urlsplit(ADMIN_DATABASE_URL)
    return urlunsplit(parts._replace(path=f"/{name}"))


async def drop_database(name: str) -> None:
    conn = await asyncpg.connect(ADMIN_DATABASE_URL)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def migrate(database_url: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "service", "migrate"],
        cwd=ROOT,
        env=base_env(DATABASE_URL=database_url),
        check=True,
        capture_output=True,
    )


@pytest.fixture(scope="session")
async def database_url(run_id: str) -> AsyncIterator[str]:
    """A fresh, migrated database for this test run."""
    name = f"imgsvc_test_{run_id}"
    url = database_url_for(name)
    migrate(url)
    yield url
    await drop_database(name)


@pytest.fixture(scope="session")
async def db(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
    yield pool
    await pool.close()


@pytest.fixture(scope="session")
async def queue_names(run_id: str) -> AsyncIterator[Callable[[str], str]]:
    """Makes queue names private to this run; deletes every queue it named at the end."""
    named: list[str] = []

    def name(suffix: str = "") -> str:
        queue = f"image-operations-test-{run_id}{suffix}"
        named.append(queue)
        return queue

    yield name
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        for queue in set(named):
            for victim in (queue, f"{queue}.dead"):
                channel = await connection.channel()
                try:
                    await channel.queue_delete(victim)
                except aio_pika.exceptions.AMQPError:
                    pass
                finally:
                    if not channel.is_closed:
                        await channel.close()


@pytest.fixture(scope="session")
def logs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="session")
def stack_env(database_url: str, queue_names: Callable[[str], str]) -> dict[str, str]:
    """Environment of the shared stack: short intervals so recovery paths run within a test."""
    return base_env(
        DATABASE_URL=database_url,
        AMQP_URL=AMQP_URL,
        AMQP_QUEUE=queue_names(""),
        GRPC_LISTEN="127.0.0.1:0",
        HTTP_LISTEN="127.0.0.1:0",  # the REST API and console (tests/e2e/rest.py finds its port)
        LOG_LEVEL="INFO",
        OUTBOX_INTERVAL_SECONDS="0.2",
        OUTBOX_GRACE_SECONDS="0.5",
        SWEEP_INTERVAL_SECONDS="0.5",
        LEASE_SECONDS="3",
        GRPC_GRACE_SECONDS="5",
        WORKER_GRACE_SECONDS="5",
        # The blob server the workers download from is on loopback.
        DOWNLOAD_ALLOWED_NETWORKS="127.0.0.0/8",
    )


class Processes:
    """Starts service processes for a test and stops whatever is left at the end."""

    def __init__(self, logs_dir: Path) -> None:
        self.logs_dir = logs_dir
        self.started: list[ServiceProcess] = []

    async def start(self, module: str, env: dict[str, str], label: str) -> ServiceProcess:
        path = self.logs_dir / f"{label}-{uuid.uuid4().hex[:6]}.log"
        process = ServiceProcess(module, env, path).start()
        self.started.append(process)
        return await process.wait_started()

    def stop_all(self) -> None:
        for process in self.started:
            process.stop()


@pytest.fixture(scope="session")
def session_processes(logs_dir: Path) -> Iterator[Processes]:
    processes = Processes(logs_dir)
    yield processes
    processes.stop_all()


@pytest.fixture
def processes(logs_dir: Path) -> Iterator[Processes]:
    processes = Processes(logs_dir)
    yield processes
    processes.stop_all()


@pytest.fixture(scope="session")
def admin_token(database_url: str) -> str:
    """An editor token for every folder, made with ``python -m service token create``."""
    token = support.create_token(
        database_url, "--subject", "test-admin", "--folder", "*", "--role", "editor"
    )
    support.ADMIN_TOKEN = token
    return token


@pytest.fixture(scope="session")
async def api(
    session_processes: Processes, stack_env: dict[str, str], admin_token: str
) -> ServiceProcess:
    return await session_processes.start("service", stack_env, "api")


@pytest.fixture(scope="session")
async def workers(session_processes: Processes, stack_env: dict[str, str]) -> list[ServiceProcess]:
    return [await session_processes.start("workers", stack_env, f"worker{i}") for i in range(2)]


@pytest.fixture(scope="session")
async def channel(
    api: ServiceProcess, workers: list[ServiceProcess]
) -> AsyncIterator[grpc.aio.Channel]:
    async with support.connect(api.address) as ch:
        yield ch


@pytest.fixture(scope="session")
def images(channel: grpc.aio.Channel) -> image_service_pb2_grpc.ImageServiceStub:
    return image_service_pb2_grpc.ImageServiceStub(channel)


@pytest.fixture(scope="session")
def operations(channel: grpc.aio.Channel) -> operation_service_pb2_grpc.OperationServiceStub:
    return operation_service_pb2_grpc.OperationServiceStub(channel)


@pytest.fixture(scope="session")
async def blobs() -> AsyncIterator[BlobServer]:
    server = await BlobServer().start()
    yield server
    await server.close()


@pytest.fixture
def own_stack_env(
    stack_env: dict[str, str], queue_names: Callable[[str], str], admin_token: str
) -> Callable[..., dict[str, str]]:
    """Environment for a test's private API and workers: the run's database, a queue of its own."""

    def make(**overrides: str) -> dict[str, str]:
        env = dict(stack_env)
        env["AMQP_QUEUE"] = queue_names(f"-{uuid.uuid4().hex[:6]}")
        env.update(overrides)
        return env

    return make
