"""The tracing helpers: nothing at all while off; on, one trace across every hand-over."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from service.runtime import tracing
from service.runtime.settings import Settings
from service.usecases.outbox import publish_pending
from service.usecases.ports import OutgoingMessage, Unpublished

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use(provider)
    yield exporter
    tracing.use(None)


def trace_id(span: ReadableSpan) -> str:
    assert span.context is not None
    return f"{span.context.trace_id:032x}"


def by_name(exporter: InMemorySpanExporter) -> dict[str, ReadableSpan]:
    return {span.name: span for span in exporter.get_finished_spans()}


def test_off_every_helper_is_a_shared_no_op():
    assert not tracing.enabled()
    no_span = tracing.span("x")
    assert tracing.consuming("q", "opn", CALLER) is no_span
    assert tracing.resumed("x", CALLER) is no_span
    assert tracing.server_span("x", CALLER, {}) is no_span
    with tracing.publishing("q", "opn", CALLER) as headers:
        assert headers is None
    assert tracing.traceparent() is None
    tracing.set_attribute("k", "v")  # nothing to set it on, nothing raised
    tracing.rpc_ended(None, 13)


def test_off_without_an_endpoint_configure_leaves_tracing_off():
    tracing.configure(Settings(), component="api")
    assert not tracing.enabled()


def test_an_endpoint_turns_tracing_on_with_the_otlp_exporter():
    settings = Settings(otel_exporter_otlp_endpoint="http://127.0.0.1:1")
    tracing.configure(settings, component="workers")
    try:
        assert tracing.enabled()
    finally:
        tracing.use(None)  # shutdown would try to send the (no) spans to the endpoint


def test_a_message_carries_the_trace_from_the_publisher_to_the_consumer(spans):
    with (
        tracing.server_span("svc/Update", CALLER, {"rpc.system": "grpc"}),
        tracing.publishing("queue", "opn1", tracing.traceparent()) as headers,
    ):
        assert headers is not None
        sent = headers["traceparent"]
    with tracing.consuming("queue", "opn1", sent), tracing.span("operation.apply"):
        pass

    named = by_name(spans)
    assert set(named) == {"svc/Update", "queue publish", "queue process", "operation.apply"}
    assert {trace_id(span) for span in named.values()} == {TRACE_ID}  # the client's trace
    assert named["svc/Update"].kind is SpanKind.SERVER
    assert named["queue publish"].kind is SpanKind.PRODUCER
    assert named["queue process"].kind is SpanKind.CONSUMER
    assert named["queue process"].parent.span_id == named["queue publish"].context.span_id
    assert named["queue process"].attributes["messaging.message.id"] == "opn1"


def test_a_message_without_a_trace_context_starts_a_new_trace(spans):
    # Whatever is current around the consumer is not its parent: only the headers are.
    with tracing.server_span("svc/Update", None, {}), tracing.consuming("queue", "opn1", None):
        pass
    named = by_name(spans)
    assert named["queue process"].parent is None
    assert trace_id(named["queue process"]) != trace_id(named["svc/Update"])


def test_the_stored_trace_context_is_the_current_span(spans):
    with tracing.span("call") as span:
        stored = tracing.traceparent()
    assert stored is not None
    assert stored.startswith(f"00-{trace_id(span)}-{span.context.span_id:016x}-")


def test_only_the_codes_that_are_the_servers_fault_make_a_server_span_an_error(spans):
    for code in (0, 5, 13):
        with tracing.server_span(f"svc/{code}", None, {}) as span:
            tracing.rpc_ended(span, code)
    named = by_name(spans)
    assert named["svc/0"].status.status_code is StatusCode.UNSET
    assert named["svc/5"].status.status_code is StatusCode.UNSET  # NOT_FOUND: an answer
    assert named["svc/13"].status.status_code is StatusCode.ERROR
    assert named["svc/5"].attributes["rpc.grpc.status_code"] == 5


class RecordingPublisher:
    """Records the trace context each operation is sent with."""

    def __init__(self) -> None:
        self.contexts: dict[str, str | None] = {}

    async def publish(self, message: OutgoingMessage, timeout: float) -> None:
        for operation in message.operations:
            self.contexts[operation.operation_id] = operation.trace_context

    def is_healthy(self) -> bool:
        return True


class OneBatchOutbox:
    """Hands the relay one batch, then nothing; records what it was told was sent."""

    def __init__(self, batch: list[Unpublished]) -> None:
        self.batches = [batch]
        self.marked: list[str] = []

    async def claim_unpublished(
        self, older_than_seconds: float, limit: int, claim_seconds: float
    ) -> list[Unpublished]:
        return self.batches.pop() if self.batches else []

    async def mark_published(self, messages: list[OutgoingMessage]) -> None:
        self.marked.extend(i for message in messages for i in message.operation_ids)

    async def release_claims(self, operation_ids: list[str]) -> None:
        raise AssertionError(f"nothing was left unsent: {operation_ids}")


async def test_the_relay_publishes_a_late_operation_in_the_trace_of_its_call(spans):
    outbox = OneBatchOutbox([Unpublished("opn-traced", CALLER), Unpublished("opn-untraced")])
    publisher = RecordingPublisher()

    await publish_pending(outbox, publisher, older_than=0, publish_timeout=1)

    assert outbox.marked == ["opn-traced", "opn-untraced"]
    assert publisher.contexts["opn-traced"].split("-")[1] == TRACE_ID
    assert publisher.contexts["opn-untraced"].split("-")[1] != TRACE_ID  # a trace of its own
    relayed = [span for span in spans.get_finished_spans() if span.name == "outbox.relay"]
    assert [span.attributes["image.operation.id"] for span in relayed] == [
        "opn-traced",
        "opn-untraced",
    ]
    # Each is sent as a child of its relay span, whose parent is the call's (where it had one).
    for span in relayed:
        sent = publisher.contexts[span.attributes["image.operation.id"]]
        assert sent.split("-")[2] == f"{span.context.span_id:016x}"
    assert f"{relayed[0].parent.span_id:016x}" == CALLER.split("-")[2]
