"""Fixtures shared by the integration and end-to-end tests.

Every test session (each xdist worker has one) gets a database and queue names of its own
(``imgsvc_test_<run>``, ``image-operations-test-<run>``), created here and removed at the end.
A database is a copy of the run's migrated template (``CREATE DATABASE ... TEMPLATE``): the
migrations run once per ``pytest`` run, however many databases and workers it has.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import aio_pika
import asyncpg
import grpc
import psycopg
import pytest
from filelock import FileLock

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

# The ID of one `pytest` run, set by the process that starts it (the xdist controller, or the
# only process) and inherited by the xdist workers: it names the run's template database.
RUN_ENV = "IMGSVC_TEST_RUN"
# Where the workers take turns making the template (the lock) and record that it exists.
TEMPLATE_DIR = Path(tempfile.gettempdir())

# Where each test belongs, from its folder: `scripts/test --quick` leaves out the `slow` ones.
SUITES = {"unit", "contract", "integration", "e2e", "faults", "fuzz", "compat", "compose"}
SLOW_SUITES = {"e2e", "faults", "fuzz", "compat", "compose"}
# ... and the modules of the other suites that take more than a few seconds: this one installs
# the project and its dependencies into a fresh venv.
SLOW_MODULES = {("integration", "test_installed_package.py")}
TESTS = Path(__file__).resolve().parent


def pytest_configure(config: pytest.Config) -> None:
    if not hasattr(config, "workerinput"):
        os.environ[RUN_ENV] = uuid.uuid4().hex[:10]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Marks each test with its suite (its folder under tests/), and `slow` for the suites that
    start processes or private servers."""
    for item in items:
        path = item.path.resolve()
        parts = path.relative_to(TESTS).parts if path.is_relative_to(TESTS) else ()
        suite = parts[0] if len(parts) > 1 else ""
        if suite in SUITES:
            item.add_marker(suite)
        if suite in SLOW_SUITES or parts in SLOW_MODULES:
            item.add_marker("slow")


def pytest_sessionfinish(session: pytest.Session) -> None:
    if not hasattr(session.config, "workerinput"):
        drop_template()


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


def admin_execute(*statements: str) -> list[tuple[object, ...]]:
    """Runs statements on the admin database, each on its own (CREATE and DROP DATABASE cannot
    run in a transaction); the rows of the last."""
    with psycopg.connect(ADMIN_DATABASE_URL, autocommit=True) as conn:
        rows: list[tuple[object, ...]] = []
        for statement in statements:
            cursor = conn.execute(statement)
            rows = cursor.fetchall() if cursor.description else []
        return rows


def template_name() -> str:
    return f"imgsvc_template_{os.environ[RUN_ENV]}"


def migrated_template() -> str:
    """The run's migrated template database; the first process that asks makes it.

    It accepts no connections once made: ``CREATE DATABASE ... TEMPLATE`` fails while anyone
    is connected to the template, and nothing but the copies is ever used.
    """
    name = template_name()
    with FileLock(TEMPLATE_DIR / f"{name}.lock"):
        made = admin_execute(f"SELECT datistemplate FROM pg_database WHERE datname = '{name}'")
        if made == [(True,)]:
            return name
        # Absent, or left half-migrated by a process that failed: make it (again).
        admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        (TEMPLATE_DIR / f"{name}.made").touch()
        migrate(database_url_for(name))
        admin_execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false IS_TEMPLATE true')
    return name


def drop_template() -> None:
    """Drops the run's template, if any process of the run made one."""
    name = template_name()
    made = TEMPLATE_DIR / f"{name}.made"
    if not made.exists():
        return
    if admin_execute(f"SELECT 1 FROM pg_database WHERE datname = '{name}'"):
        admin_execute(f'ALTER DATABASE "{name}" WITH IS_TEMPLATE false', f'DROP DATABASE "{name}"')
    made.unlink()
    (TEMPLATE_DIR / f"{name}.lock").unlink(missing_ok=True)


def create_database(name: str) -> str:
    """A fresh, migrated database (a copy of the run's template); its URL."""
    admin_execute(f'CREATE DATABASE "{name}" TEMPLATE "{migrated_template()}"')
    return database_url_for(name)


@pytest.fixture(scope="session")
async def database_url(run_id: str) -> AsyncIterator[str]:
    """A fresh, migrated database for this test session."""
    name = f"imgsvc_test_{run_id}"
    url = await asyncio.to_thread(create_database, name)
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
        # Every test exchanges its JWTs from 127.0.0.1: one address, many clients. The limit
        # itself is tested on an API of its own.
        IAM_TOKEN_EXCHANGES_PER_SECOND="1000",
        IAM_TOKEN_EXCHANGE_BURST="1000",
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
