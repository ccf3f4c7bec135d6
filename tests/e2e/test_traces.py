"""One trace per operation: the API call, the publish, the worker's consume and apply, and the
download of a Create, all in one trace; also when the relay sends the operation late.

The API and the worker run here in the test's own process and event loop (their real
``serve``, over the real PostgreSQL, RabbitMQ and gRPC channel), so that an in-memory exporter
sees the spans of both. The database is private: the worker's relay would otherwise also send
what other tests left unpublished.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from service.entrypoints import api as api_process
from service.entrypoints import worker as worker_process
from service.runtime import tracing
from service.runtime.settings import Settings
from tests import support
from tests.conftest import AMQP_URL, create_database, drop_database
from tests.e2e.client import create_ready_image, folder, wait_done
from tests.faults.cluster import free_port
from tests.support import BearerAuth, eventually
from yandex.cloud.baremetal.v1alpha import image_service_pb2, image_service_pb2_grpc
from yandex.cloud.operation import operation_service_pb2_grpc

IMAGE_SERVICE = "yandex.cloud.baremetal.v1alpha.ImageService"


@pytest.fixture(scope="module")
async def private_database(run_id: str) -> AsyncIterator[str]:
    name = f"imgsvc_test_{run_id}_traces"
    url = await asyncio.to_thread(create_database, name)
    yield url
    await drop_database(name)


@pytest.fixture(scope="module")
def spans() -> Iterator[InMemorySpanExporter]:
    """Tracing on in this process, every span kept in memory (set before the servers start:
    the call frame wraps its handlers in server spans only when tracing is on)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use(provider)
    yield exporter
    tracing.use(None)


class InProcess:
    """Runs API and worker ``serve`` coroutines in this loop; stops them all at the end."""

    def __init__(self) -> None:
        self.running: list[tuple[asyncio.Event, asyncio.Task[None]]] = []

    def start(self, serve: Any, settings: Settings) -> None:
        stop = asyncio.Event()
        self.running.append((stop, asyncio.create_task(serve(settings, stop))))

    async def stop_all(self) -> None:
        for stop, _ in self.running:
            stop.set()
        for _, task in self.running:
            await asyncio.wait_for(task, 60)
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):  # serve() took them over
            loop.remove_signal_handler(signum)


@pytest.fixture(scope="module")
async def in_process(spans: InMemorySpanExporter) -> AsyncIterator[InProcess]:
    servers = InProcess()
    yield servers
    await servers.stop_all()


def settings_for(database_url: str, queue: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "amqp_url": AMQP_URL,
        "amqp_queue": queue,
        "grpc_listen": f"127.0.0.1:{free_port()}",
        "grpc_grace_seconds": 1,
        "worker_grace_seconds": 2,
        "outbox_interval_seconds": 0.2,
        "outbox_grace_seconds": 0.5,
        "download_allowed_networks": "127.0.0.0/8",
        **overrides,
    }
    return Settings(**values)


async def serving(settings: Settings) -> None:
    """Until the API answers on its port."""

    async def answers() -> bool:
        async with grpc.aio.insecure_channel(settings.grpc_listen) as channel:
            try:
                await asyncio.wait_for(channel.channel_ready(), 1)
            except TimeoutError:
                return False
        return True

    await eventually(answers, timeout=60, what=f"the API on {settings.grpc_listen}")


@pytest.fixture(scope="module")
async def stack(
    private_database: str, queue_names: Any, in_process: InProcess
) -> tuple[Settings, str]:
    """An API and a worker in this process; their settings and an editor's token."""
    settings = settings_for(private_database, queue_names(f"-traces-{uuid.uuid4().hex[:6]}"))
    in_process.start(worker_process.serve, settings)
    in_process.start(api_process.serve, settings)
    await serving(settings)
    token = support.create_token(
        private_database, "--subject", "tracer", "--folder", "*", "--role", "editor"
    )
    return settings, token


@contextlib.asynccontextmanager
async def stubs(address: str, token: str) -> AsyncIterator[tuple[Any, Any]]:
    async with grpc.aio.insecure_channel(address, interceptors=[BearerAuth(token)]) as channel:
        yield (
            image_service_pb2_grpc.ImageServiceStub(channel),
            operation_service_pb2_grpc.OperationServiceStub(channel),
        )


def trace_of(span: ReadableSpan) -> int:
    assert span.context is not None
    return span.context.trace_id


def call_span(spans: InMemorySpanExporter, method: str, operation_id: str) -> ReadableSpan:
    [call] = [
        span
        for span in spans.get_finished_spans()
        if span.name == f"{IMAGE_SERVICE}/{method}"
        and (span.attributes or {}).get("image.operation.id") == operation_id
    ]
    return call


async def whole_trace(
    spans: InMemorySpanExporter, call: ReadableSpan, names: set[str]
) -> dict[str, ReadableSpan]:
    """The spans of the call's trace by name, once every one of ``names`` has ended."""

    async def ended() -> dict[str, ReadableSpan] | None:
        found = {s.name: s for s in spans.get_finished_spans() if trace_of(s) == trace_of(call)}
        return found if names <= set(found) else None

    return await eventually(ended, timeout=30, what=f"the spans {sorted(names)}")


def parent_of(span: ReadableSpan) -> int | None:
    return None if span.parent is None else span.parent.span_id


def span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return span.context.span_id


async def test_a_create_is_one_trace_from_the_call_to_the_download(stack, spans, blobs):
    settings, token = stack
    queue = settings.amqp_queue
    async with stubs(settings.grpc_listen, token) as (images, operations):
        op = await images.Create(
            image_service_pb2.CreateImageRequest(
                folder_id=folder(), name="traced", uri=blobs.url("/blob/5000")
            )
        )
        done = await wait_done(operations, op.id)
    assert done.WhichOneof("result") == "response", done

    call = call_span(spans, "Create", op.id)
    names = {f"{queue} publish", f"{queue} process", "operation.apply", "image.download"}
    trace = await whole_trace(spans, call, names)

    assert call.kind is SpanKind.SERVER
    assert call.attributes["rpc.grpc.status_code"] == 0
    publish, process = trace[f"{queue} publish"], trace[f"{queue} process"]
    assert (publish.kind, process.kind) == (SpanKind.PRODUCER, SpanKind.CONSUMER)
    assert parent_of(publish) == span_id(call)
    assert parent_of(process) == span_id(publish)  # through the message's headers
    assert parent_of(trace["operation.apply"]) == span_id(process)
    assert parent_of(trace["image.download"]) == span_id(trace["operation.apply"])
    assert process.attributes["messaging.message.id"] == op.id


async def test_an_update_is_one_trace_from_the_call_to_the_apply(stack, spans, blobs):
    settings, token = stack
    queue = settings.amqp_queue
    async with stubs(settings.grpc_listen, token) as (images, operations):
        image = await create_ready_image(images, operations, blobs.url("/blob/100"), folder())
        op = await images.Update(
            image_service_pb2.UpdateImageRequest(image_id=image.id, description="traced")
        )
        done = await wait_done(operations, op.id)
    assert done.WhichOneof("result") == "response", done

    call = call_span(spans, "Update", op.id)
    trace = await whole_trace(
        spans, call, {f"{queue} publish", f"{queue} process", "operation.apply"}
    )
    assert parent_of(trace[f"{queue} publish"]) == span_id(call)
    assert parent_of(trace[f"{queue} process"]) == span_id(trace[f"{queue} publish"])
    assert parent_of(trace["operation.apply"]) == span_id(trace[f"{queue} process"])
    assert "image.download" not in trace


async def test_an_update_the_relay_sends_late_stays_in_the_trace_of_its_call(
    stack, spans, blobs, in_process
):
    """The API cannot reach the broker: the Update is accepted, its trace context kept on
    the row, and the worker's relay sends it later in that trace."""
    settings, token = stack
    queue = settings.amqp_queue
    cut_off = settings_for(
        str(settings.database_url), queue, amqp_url="amqp://guest:guest@127.0.0.1:1/"
    )
    in_process.start(api_process.serve, cut_off)
    await serving(cut_off)
    async with stubs(settings.grpc_listen, token) as (images, operations):
        image = await create_ready_image(images, operations, blobs.url("/blob/100"), folder())
    async with stubs(cut_off.grpc_listen, token) as (images, operations):
        op = await images.Update(
            image_service_pb2.UpdateImageRequest(image_id=image.id, description="late")
        )
        done = await wait_done(operations, op.id)
    assert done.WhichOneof("result") == "response", done

    call = call_span(spans, "Update", op.id)
    trace = await whole_trace(
        spans,
        call,
        {"outbox.relay", f"{queue} publish", f"{queue} process", "operation.apply"},
    )
    relay = trace["outbox.relay"]
    assert parent_of(relay) == span_id(call)  # from the trace context stored on the row
    assert parent_of(trace[f"{queue} publish"]) == span_id(relay)
    assert parent_of(trace[f"{queue} process"]) == span_id(trace[f"{queue} publish"])
