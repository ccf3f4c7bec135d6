"""The Prometheus metrics of the real API and worker processes, after real traffic.

The stack here has a database of its own: a worker's outbox relay sends whatever it finds
unpublished in its database, so on the run's shared database it would also carry out (and
count) the operations of other tests.
"""

from __future__ import annotations

import asyncio
import collections
import json
import shutil
import subprocess
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.runtime.metrics import GO_CODE_NAMES
from tests import support
from tests.conftest import AMQP_URL, Processes, database_url_for, drop_database, migrate
from tests.e2e.client import folder, rpc_error, wait_done
from tests.e2e.rest import http_port
from tests.faults.cluster import free_port
from tests.support import BearerAuth, ServiceProcess, eventually
from yandex.cloud.baremetal.v1alpha import image_service_pb2, image_service_pb2_grpc
from yandex.cloud.operation import operation_service_pb2_grpc

IMAGE_SERVICE = "yandex.cloud.baremetal.v1alpha.ImageService"
UPDATES_PER_IMAGE = 4
IMAGES = 3


class CallCounter(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Counts the calls a channel made, by method and the code they ended with."""

    def __init__(self) -> None:
        self.calls: collections.Counter[tuple[str, str]] = collections.Counter()

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        call = await continuation(details, request)
        code = await call.code()  # waits for the end, raises nothing
        method = details.method.decode() if isinstance(details.method, bytes) else details.method
        self.calls[(method, code.name)] += 1
        return call


@dataclass
class Stack:
    api: ServiceProcess
    worker: ServiceProcess
    api_metrics: int
    worker_metrics: int
    token: str


def metrics_port(process: ServiceProcess) -> int:
    [line] = process.logged("metrics.started")
    return int(line["port"])


@pytest.fixture(scope="module")
async def private_database(run_id: str) -> AsyncIterator[str]:
    name = f"imgsvc_test_{run_id}_metrics"
    url = database_url_for(name)
    await asyncio.to_thread(migrate, url)
    yield url
    await drop_database(name)


@pytest.fixture(scope="module")
def module_processes(logs_dir: Path) -> Iterator[Processes]:
    processes = Processes(logs_dir)
    yield processes
    processes.stop_all()


@pytest.fixture(scope="module")
async def stack(private_database: str, queue_names: Any, module_processes: Processes) -> Stack:
    env = support.base_env(
        DATABASE_URL=private_database,
        AMQP_URL=AMQP_URL,
        AMQP_QUEUE=queue_names(f"-metrics-{uuid.uuid4().hex[:6]}"),
        GRPC_LISTEN="127.0.0.1:0",
        HTTP_LISTEN="127.0.0.1:0",
        METRICS_LISTEN="127.0.0.1:0",
        METRICS_REFRESH_SECONDS="0.2",
        SWEEP_INTERVAL_SECONDS="0.5",  # the queue gauges are the sweeper's reading
        OUTBOX_INTERVAL_SECONDS="0.2",
        OUTBOX_GRACE_SECONDS="0.5",
        DOWNLOAD_ALLOWED_NETWORKS="127.0.0.0/8",
    )
    api = await module_processes.start("service", env, "metrics-api")
    worker = await module_processes.start("workers", env, "metrics-worker")
    token = support.create_token(
        private_database, "--subject", "metrics", "--folder", "*", "--role", "editor"
    )
    return Stack(api, worker, metrics_port(api), metrics_port(worker), token)


def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a /metrics endpoint, parsed by prometheus-client's own parser."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(
    scraped: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return scraped.get((name, frozenset(labels.items())), 0.0)


async def traffic(stack: Stack, blobs: support.BlobServer) -> tuple[CallCounter, list[str]]:
    """Creates, Updates (each waited for), failed calls; returns the calls made and the
    Updates' operation IDs."""
    counter = CallCounter()
    updates = []
    async with grpc.aio.insecure_channel(
        stack.api.address, interceptors=[BearerAuth(stack.token), counter]
    ) as channel:
        images = image_service_pb2_grpc.ImageServiceStub(channel)
        operations = operation_service_pb2_grpc.OperationServiceStub(channel)
        f = folder()
        for n in range(IMAGES):
            op = await images.Create(
                image_service_pb2.CreateImageRequest(
                    folder_id=f, name=f"img-{n}", uri=blobs.url("/blob/2000")
                )
            )
            await wait_done(operations, op.id)
        listed = await images.List(image_service_pb2.ListImagesRequest(folder_id=f))
        for image in listed.images:
            for n in range(UPDATES_PER_IMAGE):
                op = await images.Update(
                    image_service_pb2.UpdateImageRequest(image_id=image.id, description=f"d{n}")
                )
                updates.append(op.id)
                await wait_done(operations, op.id)
        for _ in range(2):
            await rpc_error(images.Get(image_service_pb2.GetImageRequest(image_id="bad id")))
            await rpc_error(
                images.Get(image_service_pb2.GetImageRequest(image_id="img" + "0" * 17))
            )
    return counter, updates


async def test_the_counters_match_the_calls_made_and_every_update_is_timed(stack, blobs):
    counter, updates = await traffic(stack, blobs)
    assert len(updates) == IMAGES * UPDATES_PER_IMAGE
    assert {code for _, code in counter.calls} >= {"OK", "INVALID_ARGUMENT", "NOT_FOUND"}

    # The server counts a call once its answer is sent, so the client can hear the last answer
    # a moment before it is counted: wait until every call made is counted, then compare.
    def handled(scraped: dict, method: str, code: str) -> float:
        service, name = method.lstrip("/").rsplit("/", 1)
        labels = {"grpc_type": "unary", "grpc_service": service, "grpc_method": name}
        return value(scraped, "grpc_server_handled_total", **labels, grpc_code=GO_CODE_NAMES[code])

    async def api_counted_every_call() -> dict | None:
        scraped = scrape(stack.api_metrics)
        counted = all(handled(scraped, m, c) >= n for (m, c), n in counter.calls.items())
        return scraped if counted else None

    api = await eventually(api_counted_every_call, what="the API to count every call")
    for (method, code), calls in counter.calls.items():
        assert handled(api, method, code) == calls, (method, code)
    for method in {method for method, _ in counter.calls}:
        service, name = method.lstrip("/").rsplit("/", 1)
        labels = {"grpc_type": "unary", "grpc_service": service, "grpc_method": name}
        made = sum(n for (m, _), n in counter.calls.items() if m == method)
        assert value(api, "grpc_server_started_total", **labels) == made, method
        assert value(api, "grpc_server_handling_seconds_count", **labels) == made, method
    assert value(api, "image_service_operations_accepted_total", kind="update_image") == len(
        updates
    )
    assert value(api, "image_service_operations_accepted_total", kind="create_image") == IMAGES
    assert value(api, "image_service_finished_operation_cache_requests_total", result="hit") > 0

    async def worker_counted_every_operation() -> dict | None:
        worker = scrape(stack.worker_metrics)
        timed = value(worker, "image_service_operation_duration_seconds_count", kind="update_image")
        return worker if timed == len(updates) else None

    worker = await eventually(worker_counted_every_operation, what="the Updates to be counted")
    # Update -> done: every Update in the histogram, each within the largest bucket.
    assert value(
        worker, "image_service_operation_duration_seconds_bucket", kind="update_image", le="+Inf"
    ) == len(updates)
    assert value(
        worker, "image_service_operations_finished_total", kind="update_image", outcome="OK"
    ) == len(updates)
    assert (
        value(worker, "image_service_operations_finished_total", kind="create_image", outcome="OK")
        == IMAGES
    )
    assert value(worker, "image_service_batch_size_count", batch="apply_updates") >= 1

    async def settled() -> bool:
        gauges = scrape(stack.worker_metrics)
        return (
            value(gauges, "image_service_operations_unfinished") == 0
            and value(gauges, "image_service_outbox_backlog") == 0
            and value(gauges, "image_service_db_pool_connections") >= 1
        )

    await eventually(settled, what="the worker's gauges to show nothing unfinished")


def family_names(port: int) -> set[str]:
    """The metric families a /metrics endpoint lists, with samples or not."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return {family.name for family in text_string_to_metric_families(response.read().decode())}


def http_get(url: str, token: str | None = None) -> int:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


async def test_rest_and_console_requests_are_counted_by_route_and_status(stack):
    base = f"http://127.0.0.1:{http_port(stack.api)}"
    images = "/baremetal/v1alpha/images"
    series = {
        (images, "200"): f"{base}{images}?folderId={folder()}",
        (images, "400"): f"{base}{images}?folderId=NOT%20A%20FOLDER",
        ("/operations/{operation_id}", "404"): f"{base}/operations/opn{'0' * 17}",
        ("(unmatched)", "404"): f"{base}/no/such/route",
        ("/console", "200"): f"{base}/console",
    }
    before = scrape(stack.api_metrics)
    for (_, code), url in series.items():
        for _ in range(2):
            assert await asyncio.to_thread(http_get, url, stack.token) == int(code), url
    after = scrape(stack.api_metrics)
    for route, code in series:
        labels = {"method": "GET", "route": route, "code": code}
        counted = value(after, "http_server_requests_total", **labels) - value(
            before, "http_server_requests_total", **labels
        )
        assert counted == 2, (route, code)
    timed = value(
        after, "http_server_request_duration_seconds_count", method="GET", route=images
    ) - value(before, "http_server_request_duration_seconds_count", method="GET", route=images)
    assert timed == 4
    # REST calls are not gRPC calls: the gRPC series did not move for them.
    grpc_list = {
        "grpc_type": "unary",
        "grpc_service": "yandex.cloud.baremetal.v1alpha.ImageService",
        "grpc_method": "List",
    }
    assert value(after, "grpc_server_started_total", **grpc_list) == value(
        before, "grpc_server_started_total", **grpc_list
    )


def test_the_workers_list_no_server_families(stack):
    """A worker serves no calls: its /metrics lists no gRPC or HTTP server family."""
    api, worker = family_names(stack.api_metrics), family_names(stack.worker_metrics)
    assert {"grpc_server_started", "http_server_requests"} <= api
    assert not {n for n in worker if n.startswith(("grpc_server_", "http_server_"))}, worker
    assert "image_service_operations_finished" in worker


async def test_several_api_processes_are_scraped_as_one_endpoint(processes, own_stack_env):
    """API_PROCESSES > 1: the parent serves the sum of its children's metrics."""
    port = free_port()
    env = own_stack_env(
        API_PROCESSES="2",
        GRPC_LISTEN=f"127.0.0.1:{port}",
        METRICS_LISTEN="127.0.0.1:0",
        HTTP_LISTEN="",  # the REST API is not what this test counts
        LOG_LEVEL="DEBUG",
    )
    api = await processes.start("service", env, "metrics-api-processes")

    async def both_started() -> bool:
        return len({line.get("pid") for line in api.logged("api.started")}) == 2

    await eventually(both_started, what="both API processes to start")
    calls = 40
    for _ in range(calls):  # a new connection each time: the kernel spreads them
        async with support.connect(f"127.0.0.1:{port}") as channel:
            await image_service_pb2_grpc.ImageServiceStub(channel).List(
                image_service_pb2.ListImagesRequest(folder_id="f")
            )
    served_by = {line.get("pid") for line in api.logged("rpc.done")}
    assert len(served_by) == 2, served_by

    scraped = scrape(metrics_port(api))
    labels = {"grpc_type": "unary", "grpc_service": IMAGE_SERVICE, "grpc_method": "List"}
    assert value(scraped, "grpc_server_handled_total", **labels, grpc_code="OK") == calls
    assert value(scraped, "grpc_server_handling_seconds_count", **labels) == calls


# --- a real Prometheus server -----------------------------------------------------------------


def prometheus_binary() -> str:
    binary = shutil.which("prometheus") or (
        "/usr/bin/prometheus" if Path("/usr/bin/prometheus").exists() else None
    )
    if binary is None:
        pytest.skip(
            "no prometheus binary: install Debian's package (apt-get install prometheus;"
            " .ci/run does) to run this test"
        )
    return binary


def query(port: int, promql: str) -> list[dict[str, Any]]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=5) as response:
        answer = json.load(response)
    assert answer["status"] == "success", answer
    return answer["data"]["result"]


@pytest.fixture
def prometheus(stack: Stack, tmp_path: Path) -> Iterator[int]:
    binary = prometheus_binary()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n"
        f"  - job_name: api\n    static_configs: [{{targets: ['127.0.0.1:{stack.api_metrics}']}}]\n"
        "  - job_name: workers\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{stack.worker_metrics}']}}]\n"
    )
    port = free_port()
    log = open(tmp_path / "prometheus.log", "wb")  # noqa: SIM115 - closed below
    server = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield port
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


async def test_prometheus_scrapes_the_api_and_the_worker_and_answers_the_update_rate(
    stack, prometheus, blobs
):
    async def both_targets_up() -> bool:
        try:
            up = await asyncio.to_thread(query, prometheus, "up")
        except OSError:
            return False  # not listening yet
        return {r["metric"]["job"]: r["value"][1] for r in up} == {"api": "1", "workers": "1"}

    await eventually(both_targets_up, timeout=60, what="Prometheus to scrape both targets")
    _, updates = await traffic(stack, blobs)
    updates_so_far = value(
        scrape(stack.api_metrics),
        "grpc_server_handled_total",
        grpc_type="unary",
        grpc_service=IMAGE_SERVICE,
        grpc_method="Update",
        grpc_code="OK",
    )
    assert updates_so_far >= len(updates)

    update_rate = (
        f'sum(rate(grpc_server_handled_total{{grpc_service="{IMAGE_SERVICE}",'
        'grpc_method="Update",grpc_code="OK"}[1m]))'
    )

    async def rate_answered() -> list[dict[str, Any]] | None:
        result = await asyncio.to_thread(query, prometheus, update_rate)
        return result if result and float(result[0]["value"][1]) > 0 else None

    [rate] = await eventually(rate_answered, timeout=60, what="the Update rate")
    assert float(rate["value"][1]) > 0

    async def all_updates_scraped() -> bool:
        total = 'sum(grpc_server_handled_total{grpc_method="Update",grpc_code="OK"})'
        timed = 'sum(image_service_operation_duration_seconds_count{kind="update_image"})'
        result = [await asyncio.to_thread(query, prometheus, q) for q in (total, timed)]
        return all(r and float(r[0]["value"][1]) == updates_so_far for r in result)

    # The API's count of Updates and the worker's Update -> done count, as Prometheus has them.
    await eventually(all_updates_scraped, timeout=60, what="Prometheus to have every Update")


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every query of the Grafana dashboard, with Grafana's
    ``$__rate_interval`` as the one minute Prometheus has here."""
    dashboard = json.loads(
        (support.ROOT / "deploy" / "grafana" / "dashboards" / "image-service.json").read_text()
    )
    return [
        (panel["title"], target["expr"].replace("$__rate_interval", "1m"))
        for panel in dashboard["panels"]
        for target in panel["targets"]
    ]


def answered(result: list[dict[str, Any]]) -> bool:
    """A query's answer holds a number (histogram_quantile of no traffic is NaN)."""
    return any(r["value"][1] not in ("NaN", "+Inf", "-Inf") for r in result)


async def test_every_query_of_the_dashboard_returns_data_after_traffic(stack, prometheus, blobs):
    queries = dashboard_queries()
    assert len(queries) >= 15
    exprs = " ".join(q for _, q in queries)
    for family in (
        "image_service_operations_accepted_total",
        "image_service_operations_finished_total",
        'image_service_operation_duration_seconds_bucket{kind="update_image"}',
        "image_service_operations_unfinished",
        "image_service_outbox_backlog",
        "image_service_queue_messages_ready",
        "image_service_dead_lettered_messages_total",
        'grpc_server_handled_total{grpc_code!="OK"}',
        "http_server_requests_total",
        "image_service_db_pool_connections_in_use",
    ):
        assert family in exprs, family  # what the issue asks an operator to watch

    async def both_targets_up() -> bool:
        try:
            return len(await asyncio.to_thread(query, prometheus, "up == 1")) == 2
        except OSError:
            return False

    await eventually(both_targets_up, timeout=60, what="Prometheus to scrape both targets")
    await traffic(stack, blobs)
    base = f"http://127.0.0.1:{http_port(stack.api)}"
    url = f"{base}/baremetal/v1alpha/images?folderId={folder()}"
    assert await asyncio.to_thread(http_get, url, stack.token) == 200

    async def all_answered() -> bool:
        results = [await asyncio.to_thread(query, prometheus, q) for _, q in queries]
        return all(answered(r) for r in results)

    try:
        await eventually(
            all_answered, timeout=60, interval=0.5, what="every dashboard query to return data"
        )
    except AssertionError:
        empty = [t for t, q in queries if not answered(query(prometheus, q))]
        raise AssertionError(f"panels without data: {empty}") from None


def test_the_compose_prometheus_config_is_valid_and_scrapes_the_metrics_port():
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("no promtool: it comes with Debian's prometheus package (.ci/run installs it)")
    config = support.ROOT / "deploy" / "prometheus.yml"
    checked = subprocess.run(
        [promtool, "check", "config", str(config)], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    compose = (support.ROOT / "docker-compose.yml").read_text()
    assert "METRICS_LISTEN: ${METRICS_LISTEN:-0.0.0.0:9100}" in compose
    assert config.read_text().count("port: 9100") == 2  # the API and the workers
