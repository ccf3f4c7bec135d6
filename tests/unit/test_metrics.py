"""The metrics' definitions and where they are recorded, read back from the registry."""

from __future__ import annotations

import asyncio
import socket
import urllib.request
from types import SimpleNamespace

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from service.adapters.rabbitmq import Delivery
from service.domain.errors import FieldViolation, InvalidArgument, Unavailable
from service.domain.model import IdempotencyKey, OperationKind
from service.entrypoints.grpc.convert import encode_operation
from service.entrypoints.worker import WorkerPool
from service.runtime import metrics
from service.runtime.batching import MicroBatcher
from service.runtime.exposition import (
    parse_listen,
    start_metrics_server,
)
from service.runtime.retry import retrying
from service.runtime.settings import Settings
from service.runtime.waiters import OperationWaiters
from service.usecases.images import Images
from service.usecases.operations import Operations
from service.usecases.outbox import PublishedMarks
from service.usecases.ports import Unpublished
from tests.unit.fakes import FOLDER, SUBJECT, FakePublisher, FakeStore, editor, viewer

SERVICE = "yandex.cloud.operation.OperationService"
CACHE = "image_service_finished_operation_cache_requests_total"


def sample(metric: str, /, **labels: str) -> float:
    return REGISTRY.get_sample_value(metric, labels) or 0.0


def rpc(method: str, **more: str) -> dict[str, str]:
    return {"grpc_type": "unary", "grpc_service": SERVICE, "grpc_method": method, **more}


def test_a_call_is_counted_started_and_handled_with_its_code_and_time():
    started, handled = metrics.call_metrics(f"/{SERVICE}/Cancel")
    before = {
        "started": sample("grpc_server_started_total", **rpc("Cancel")),
        "ok": sample("grpc_server_handled_total", **rpc("Cancel", grpc_code="OK")),
        "not_found": sample("grpc_server_handled_total", **rpc("Cancel", grpc_code="NotFound")),
        "count": sample("grpc_server_handling_seconds_count", **rpc("Cancel")),
        "fast": sample("grpc_server_handling_seconds_bucket", **rpc("Cancel", le="0.001")),
    }
    for _ in range(3):
        started()
    handled("OK", 0.0002)
    handled("NOT_FOUND", 0.2)
    handled("NOT_FOUND", 0.3)

    assert sample("grpc_server_started_total", **rpc("Cancel")) == before["started"] + 3
    assert sample("grpc_server_handled_total", **rpc("Cancel", grpc_code="OK")) == before["ok"] + 1
    # Codes are spelled as go-grpc-middleware spells them, for the dashboards written for it.
    assert (
        sample("grpc_server_handled_total", **rpc("Cancel", grpc_code="NotFound"))
        == before["not_found"] + 2
    )
    assert sample("grpc_server_handling_seconds_count", **rpc("Cancel")) == before["count"] + 3
    assert (
        sample("grpc_server_handling_seconds_bucket", **rpc("Cancel", le="0.001"))
        == before["fast"] + 1
    )


def test_every_rpc_code_has_its_go_name():
    assert set(metrics.GO_CODE_NAMES) == {
        "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
        "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
        "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
        "UNAUTHENTICATED",
    }  # fmt: skip
    assert metrics.GO_CODE_NAMES["CANCELLED"] == "Canceled"  # Go's spelling


def test_a_finished_operation_is_counted_with_its_time_since_acceptance():
    labels = {"kind": "delete_image"}
    count = sample("image_service_operation_duration_seconds_count", **labels)
    total = sample("image_service_operation_duration_seconds_sum", **labels)
    failed = sample("image_service_operations_finished_total", kind="delete_image", outcome="X")

    metrics.operation_finished("delete_image", "X", 1.5)
    metrics.operation_finished("delete_image", "X", -0.001)  # clocks of two statements

    assert sample("image_service_operation_duration_seconds_count", **labels) == count + 2
    assert sample("image_service_operation_duration_seconds_sum", **labels) == total + 1.5
    assert (
        sample("image_service_operations_finished_total", kind="delete_image", outcome="X")
        == failed + 2
    )


async def test_a_named_micro_batch_records_the_size_of_each_batch():
    async def echo(items):
        return list(items)

    batcher = MicroBatcher(echo, max_batch=4, max_in_flight=1, name="unit_test_batch")
    before = sample("image_service_batch_size_count", batch="unit_test_batch")
    total = sample("image_service_batch_size_sum", batch="unit_test_batch")

    assert await asyncio.gather(*(batcher.submit(i) for i in range(6))) == list(range(6))

    assert sample("image_service_batch_size_count", batch="unit_test_batch") == before + 2
    assert sample("image_service_batch_size_sum", batch="unit_test_batch") == total + 6


async def test_every_retry_is_counted_by_name_and_cause():
    before = sample("image_service_retries_total", name="unit.retry", cause="Unavailable")
    attempts = 0
    async for attempt in retrying("unit.retry", on=Unavailable, attempts=3, wait_initial=0.001):
        with attempt:
            attempts += 1
            if attempts < 3:
                raise Unavailable("not yet")
    assert sample("image_service_retries_total", name="unit.retry", cause="Unavailable") == (
        before + 2
    )


def test_the_operation_counts_appear_once_counted():
    counts = metrics.OperationCounts()
    assert list(counts.collect()) == []  # not counted yet: nothing rather than a false zero
    counts.update(unfinished=7, unpublished=2)
    values = {family.name: family.samples[0].value for family in counts.collect()}
    assert values == {"image_service_operations_unfinished": 7, "image_service_outbox_backlog": 2}


@pytest.mark.parametrize(
    ("listen", "expected"),
    [
        ("127.0.0.1:9100", ("127.0.0.1", 9100)),
        (":9100", ("0.0.0.0", 9100)),
        ("[::1]:0", ("::1", 0)),
    ],
)
def test_metrics_listen_is_a_host_and_a_port(listen, expected):
    assert parse_listen(listen) == expected


@pytest.mark.parametrize("listen", ["9100", "host:", "host:port", "host:70000"])
def test_a_metrics_listen_that_is_not_host_port_is_refused_at_start(listen):
    with pytest.raises(ValueError, match="METRICS_LISTEN must be host:port"):
        Settings(metrics_listen=listen)


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        f"{s.name}{sorted(s.labels.items())}": s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_the_endpoint_serves_this_process_metrics():
    metrics.DEAD_LETTERED.inc()
    server = start_metrics_server("127.0.0.1:0")
    try:
        scraped = scrape(server.port)
    finally:
        server.stop()
    assert scraped["image_service_dead_lettered_messages_total[]"] == (
        REGISTRY.get_sample_value("image_service_dead_lettered_messages_total")
    )


def test_a_metrics_port_in_use_ends_the_process_with_the_reason():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(
            SystemExit, match=f"^error: cannot serve metrics on METRICS_LISTEN=127.0.0.1:{port}"
        ):
            start_metrics_server(f"127.0.0.1:{port}")


async def test_operation_reads_count_hits_and_misses_of_the_finished_operations():
    store = FakeStore()
    operations = Operations(store, store, OperationWaiters(), encode=encode_operation, cache_size=9)
    image = store.add_image(FOLDER)
    done = store.add_operation(OperationKind.UPDATE_IMAGE, image.id, FOLDER, done=True)
    hits, misses = sample(CACHE, result="hit"), sample(CACHE, result="miss")

    for _ in range(3):
        await operations.get_operation(done.id, viewer())

    # Read once (a miss), then kept: every later read is a hit.
    assert (sample(CACHE, result="hit"), sample(CACHE, result="miss")) == (hits + 2, misses + 1)


async def test_an_accepted_operation_is_counted_by_kind_but_a_replayed_one_is_not():
    store = FakeStore()
    images = Images(store, store, FakePublisher(), PublishedMarks(store), publish_timeout=1.0)
    image = store.add_image(FOLDER)
    before = sample("image_service_operations_accepted_total", kind="update_image")
    key = IdempotencyKey(caller=SUBJECT, key="k-1", fingerprint="f")

    for _ in range(2):
        await images.update_image(image.id, None, "", "new", {}, editor(), key)

    assert sample("image_service_operations_accepted_total", kind="update_image") == before + 1


class DeadLetterExecutor:
    """An executor whose ``end_dead_lettered`` fails with ``error`` (or succeeds without one)."""

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error

    async def end_dead_lettered(self, operation_id: str, delivery_limit: int) -> None:
        if self.error is not None:
            raise self.error


@pytest.mark.parametrize(
    ("error", "counted"), [(None, 1), (InvalidArgument([FieldViolation("x", "y")]), 0)]
)
async def test_a_dead_letter_is_counted_once_its_operations_are_ended(error, counted):
    infra = SimpleNamespace(settings=Settings(retry_max_seconds=0.01))
    pool = WorkerPool(infra, DeadLetterExecutor(error))
    before = sample("image_service_dead_lettered_messages_total")

    operations = (Unpublished("opn" + "d" * 17), Unpublished("opn" + "e" * 17))
    handled = await pool.abandon_dead_letter(Delivery(operations, delivery_count=5))

    assert handled is bool(counted)  # not handled: handed back, counted when it is
    assert sample("image_service_dead_lettered_messages_total") == before + counted
