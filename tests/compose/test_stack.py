"""docker-compose.yml under a real Docker engine: built, started, used and torn down.

Nothing is pulled: ``scripts/standins`` builds local stand-ins of the base images from
Debian's packages (debootstrap, then Python 3.11, PostgreSQL 15, RabbitMQ 3.10), and
``scripts/wheels`` downloads the project's locked wheels on the host, so the app's image builds
without a route to PyPI from the containers. The test checks that every image the stack names
is local before ``up``. The compose project, its ports and its image name are the run's own.

Runs where a Docker engine can run: it starts ``dockerd`` (Debian's ``docker.io``, installed by
``.ci/run``) if none answers, and is skipped, saying why, where none can start.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import tempfile
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import yaml
from filelock import FileLock

from tests.faults.cluster import free_port
from tests.support import ROOT, base_env, connect, eventually
from yandex.cloud.baremetal.v1alpha import image_pb2, image_service_pb2, image_service_pb2_grpc
from yandex.cloud.operation import operation_service_pb2, operation_service_pb2_grpc

pytestmark = pytest.mark.timeout(1800)

FOLDER = "my-folder"


def _engine_answers() -> bool:
    return subprocess.run(["docker", "info"], capture_output=True).returncode == 0


@pytest.fixture(scope="module")
def docker_engine(tmp_path_factory: pytest.TempPathFactory) -> None:
    """A Docker engine: the one running, or ``dockerd`` started here (left running)."""
    if shutil.which("docker") is None:
        pytest.skip("no docker command (Debian's docker.io, installed by .ci/run)")
    if not _engine_answers():
        if shutil.which("dockerd") is None:
            pytest.skip("no Docker engine answers and dockerd is not installed")
        log = tmp_path_factory.mktemp("dockerd") / "dockerd.log"
        with open(log, "ab") as out:
            subprocess.Popen(
                ["dockerd"], stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + 60
        while not _engine_answers():
            if time.monotonic() > deadline:
                pytest.skip(f"dockerd did not start here: {log.read_text()[-500:]}")
            time.sleep(0.5)


def compose_command() -> list[str]:
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    pytest.skip("neither `docker compose` nor docker-compose is installed")


@dataclass
class Stack:
    project: str
    env: dict[str, str]
    command: list[str]  # with the options: project, profiles
    grpc_address: str
    http_base: str

    def compose(self, *args: str, timeout: float = 600) -> str:
        result = subprocess.run(
            [*self.command, *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert result.returncode == 0, f"compose {' '.join(args)}:\n{result.stderr[-3000:]}"
        return result.stdout

    def containers(self, service: str | None = None) -> list[dict[str, object]]:
        """``docker inspect`` of the project's containers (of one service)."""
        labels = [f"label=com.docker.compose.project={self.project}"]
        if service:
            labels.append(f"label=com.docker.compose.service={service}")
        filters = [arg for label in labels for arg in ("--filter", label)]
        ids = subprocess.run(
            ["docker", "ps", "-aq", *filters], capture_output=True, text=True, check=True
        ).stdout.split()
        if not ids:
            return []
        out = subprocess.run(["docker", "inspect", *ids], capture_output=True, text=True)
        return list(json.loads(out.stdout)) if out.returncode == 0 else []

    def exec_api(self, *args: str, env: dict[str, str] | None = None) -> str:
        extra = [arg for k, v in (env or {}).items() for arg in ("-e", f"{k}={v}")]
        return self.compose("exec", "-T", *extra, "api", "python", "-m", "service", *args)

    async def healthy(self) -> None:
        """Every long-running service healthy, migrate exited 0."""

        async def ready() -> bool:
            states = await asyncio.to_thread(self.containers)
            if not states:
                return False
            for state in states:
                service = state["Config"]["Labels"]["com.docker.compose.service"]  # type: ignore[index]
                run = state["State"]  # type: ignore[index]
                if service == "migrate":
                    if run["Status"] != "exited":  # type: ignore[index]
                        return False
                    assert run["ExitCode"] == 0, "migrate failed"  # type: ignore[index]
                elif run.get("Health", {}).get("Status") != "healthy":  # type: ignore[union-attr]
                    return False
            return True

        await eventually(ready, timeout=300, interval=1, what="every service healthy")


def services_run(profiles: tuple[str, ...] = ()) -> dict[str, dict[str, object]]:
    """The services ``up`` starts with these profiles active."""
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    return {
        name: s
        for name, s in services.items()
        if "profiles" not in s or set(s["profiles"]) & set(profiles)
    }


def resolved_image(image: str, env: dict[str, str]) -> str:
    def substitute(match: re.Match[str]) -> str:
        return env.get(match.group(1)) or match.group(2)

    return re.sub(r"\$\{([A-Z_]+):-([^}]*)\}", substitute, image)


def _prepare(
    project: str, command: list[str], profiles: tuple[str, ...] = (), **settings: str
) -> Stack:
    """Stand-in base images, the locked wheels, the app's image (and the profiles' own);
    checks every image the stack runs is local (so nothing is pulled), then ``up``."""
    # One at a time: the modules of this folder may run side by side (xdist), and both
    # scripts fill caches (the Debian root, the images, wheels/).
    with FileLock(Path(tempfile.gettempdir()) / "image-service-compose-prepare.lock"):
        standins = subprocess.run(
            [str(ROOT / "scripts" / "standins")], capture_output=True, text=True, timeout=1200
        )
        assert standins.returncode == 0, standins.stderr
        subprocess.run([str(ROOT / "scripts" / "wheels")], check=True, timeout=600)
    grpc_port, http_port, management_port = free_port(), free_port(), free_port()
    env = base_env(
        **dict(line.split("=", 1) for line in standins.stdout.split()),
        IMAGE=f"baremetal-image-service:{project}",
        GRPC_PORT=str(grpc_port),
        HTTP_PORT=str(http_port),
        RABBITMQ_MANAGEMENT_PORT=str(management_port),
        PUBLIC_ENDPOINT=f"localhost:{grpc_port}",
        **settings,
    )
    options = ["-p", project, *(arg for p in profiles for arg in ("--profile", p))]
    stack = Stack(
        project,
        env,
        [*command, *options],
        f"127.0.0.1:{grpc_port}",
        f"http://127.0.0.1:{http_port}",
    )
    built = [name for name, s in services_run(profiles).items() if "build" in s]
    stack.compose("build", *built)
    images = {resolved_image(str(s["image"]), env) for s in services_run(profiles).values()}
    missing = [
        image
        for image in sorted(images)
        if subprocess.run(["docker", "image", "inspect", image], capture_output=True).returncode
    ]
    assert missing == [], f"not built locally: {missing}"
    stack.compose("up", "-d", "--no-build")
    return stack


def _remove(project: str, command: list[str], profiles: tuple[str, ...] = ()) -> None:
    env = base_env()
    options = ["-p", project, *(arg for p in profiles for arg in ("--profile", p))]
    subprocess.run(
        [*command, *options, "down", "-v"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=300,
    )
    subprocess.run(
        ["docker", "image", "rm", f"baremetal-image-service:{project}"], capture_output=True
    )


@pytest.fixture(scope="module")
async def stack(docker_engine: None) -> AsyncIterator[Stack]:
    command = compose_command()
    project = f"imgtest{uuid.uuid4().hex[:6]}"
    try:
        running = await asyncio.to_thread(_prepare, project, command)
        await running.healthy()
        yield running
    finally:
        await asyncio.to_thread(_remove, project, command)


def token_of(stack: Stack) -> str:
    created = stack.exec_api(
        "token", "create", "--subject", "me", "--folder", FOLDER, "--role", "editor"
    )
    return created.strip().splitlines()[-1]


def test_every_service_is_healthy_and_migrate_ran_once(stack: Stack):
    migrations = stack.containers("migrate")
    assert len(migrations) == 1
    assert migrations[0]["State"]["ExitCode"] == 0  # type: ignore[index]
    for service in ("postgres", "rabbitmq", "api", "workers", "files"):
        for state in stack.containers(service):
            assert state["State"]["Health"]["Status"] == "healthy", service  # type: ignore[index]
    assert len(stack.containers("workers")) == 2
    # The compose network holds this stack's containers and nothing else.
    network = f"{stack.project}_default"
    inspected = subprocess.run(
        ["docker", "network", "inspect", network], capture_output=True, text=True, check=True
    )
    members = {c["Name"] for c in json.loads(inspected.stdout)[0]["Containers"].values()}
    ours = {str(c["Name"]).lstrip("/") for c in stack.containers() if c["State"]["Running"]}  # type: ignore[index]
    assert members == ours


def test_the_readme_quickstart_then_rest_and_the_console_from_the_host(stack: Stack):
    readme = (ROOT / "README.md").read_text()
    assert "python -m service image create --name demo --uri http://files:8000/demo.img" in readme
    token = token_of(stack)
    as_user = {"IMAGES_TOKEN": token, "IMAGES_FOLDER": FOLDER}
    created = stack.exec_api(
        "image", "create", "--name", "demo", "--uri", "http://files:8000/demo.img", env=as_user
    )
    image_id = re.search(r"\b(img[a-z0-9]{17})\b", created)
    assert image_id, created
    stack.exec_api(
        "image", "update", image_id.group(1), "--description", "from compose", env=as_user
    )
    listed = stack.exec_api("image", "list", env=as_user)
    assert re.search(rf"{image_id.group(1)}\s+demo\s+READY", listed), listed

    request = urllib.request.Request(
        f"{stack.http_base}/baremetal/v1alpha/images/{image_id.group(1)}",
        headers={"Authorization": f"Bearer {token}"},
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        image = json.load(answer)
    assert image["description"] == "from compose"
    assert image["status"] == "READY"
    with urllib.request.urlopen(f"{stack.http_base}/console", timeout=10) as page:
        assert page.status == 200
        assert b"<html" in page.read().lower()


async def create_all(address: str, token: str, names: list[str]) -> dict[str, str]:
    """Creates, each with a key and retried with it while the stack recovers; name -> op."""
    accepted: dict[str, str] = {}
    async with connect(address, token) as channel:
        images = image_service_pb2_grpc.ImageServiceStub(channel)
        for name in names:
            key = str(uuid.uuid4())
            request = image_service_pb2.CreateImageRequest(
                folder_id=FOLDER, name=name, uri="http://files:8000/demo.img"
            )
            deadline = time.monotonic() + 180
            while True:
                try:
                    op = await images.Create(
                        request, metadata=(("idempotency-key", key),), timeout=10
                    )
                except grpc.aio.AioRpcError as exc:
                    retryable = exc.code() in (
                        grpc.StatusCode.UNAVAILABLE,
                        grpc.StatusCode.DEADLINE_EXCEEDED,
                    )
                    if not retryable or time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.5)
                    continue
                accepted[name] = op.id
                break
    return accepted


async def all_done(address: str, token: str, operation_ids: list[str]) -> bool:
    async with connect(address, token) as channel:
        operations = operation_service_pb2_grpc.OperationServiceStub(channel)
        for operation_id in operation_ids:
            try:
                op = await operations.Get(
                    operation_service_pb2.GetOperationRequest(operation_id=operation_id),
                    timeout=10,
                )
            except grpc.aio.AioRpcError:
                return False
            if not op.done:
                return False
            assert op.WhichOneof("result") == "response", op
    return True


async def each_created_once(stack: Stack, token: str, run: str, accepted: dict[str, str]) -> None:
    """Every accepted Create finishes with a response, and the run's images are exactly the
    names accepted, each once, READY."""
    await eventually(
        lambda: all_done(stack.grpc_address, token, list(accepted.values())),
        timeout=300,
        interval=1,
        what="every Create done",
    )
    async with connect(stack.grpc_address, token) as channel:
        images = image_service_pb2_grpc.ImageServiceStub(channel)
        listed = await images.List(
            image_service_pb2.ListImagesRequest(folder_id=FOLDER, page_size=1000)
        )
    mine = [i for i in listed.images if run in i.name]
    assert sorted(i.name for i in mine) == sorted(accepted)  # each once
    assert all(i.status == image_pb2.Image.READY for i in mine)


async def test_a_killed_worker_and_restarted_databases_lose_nothing(stack: Stack):
    token = token_of(stack)
    run = uuid.uuid4().hex[:6]
    accepted = await create_all(stack.grpc_address, token, [f"k{run}-{i}" for i in range(8)])

    async def faults() -> None:
        """While Creates go on: a worker SIGKILLed, then PostgreSQL and RabbitMQ restarted."""
        worker = stack.containers("workers")[0]
        await asyncio.to_thread(
            subprocess.run, ["docker", "kill", "--signal", "KILL", str(worker["Id"])], check=True
        )
        await asyncio.to_thread(stack.compose, "restart", "postgres", "rabbitmq")

    during, _ = await asyncio.gather(
        create_all(stack.grpc_address, token, [f"r{run}-{i}" for i in range(16)]), faults()
    )
    accepted |= during
    stack.compose("up", "-d", "--no-build")  # the killed worker back, as `restart:` would
    await each_created_once(stack, token, run, accepted)


async def test_down_then_up_keeps_everything_and_workers_scale(stack: Stack):
    token = token_of(stack)
    async with connect(stack.grpc_address, token) as channel:
        images = image_service_pb2_grpc.ImageServiceStub(channel)
        before = await images.List(image_service_pb2.ListImagesRequest(folder_id=FOLDER))
    assert before.images
    stack.compose("down")
    assert stack.containers() == []
    stack.compose("up", "-d", "--no-build", "--scale", "workers=3")
    await stack.healthy()
    assert len(stack.containers("workers")) == 3
    async with connect(stack.grpc_address, token) as channel:
        images = image_service_pb2_grpc.ImageServiceStub(channel)
        after = await images.List(image_service_pb2.ListImagesRequest(folder_id=FOLDER))
    assert [i.id for i in after.images] == [i.id for i in before.images]


def test_down_with_volumes_leaves_nothing(stack: Stack):
    stack.compose("down", "-v")
    label = f"label=com.docker.compose.project={stack.project}"
    for kind in ("ps -aq", "volume ls -q", "network ls -q"):
        left = subprocess.run(
            ["docker", *kind.split(), "--filter", label], capture_output=True, text=True
        ).stdout.split()
        assert left == [], f"{kind}: {left}"
    # Brought up again for nothing else: the fixture's own `down -v` then finds nothing either.
