"""OpenTelemetry traces: one trace per operation, from the API call through the queue message
to the worker's apply and download.

Off unless ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set. Off, every helper returns at once (a shared
no-op context manager, ``None``) and OpenTelemetry is not even imported; on, spans go to the
OTLP endpoint in batches from a background thread.

The W3C trace context (``traceparent``) carries the trace across each boundary:

- client -> API: the ``traceparent`` gRPC metadata of the call, if the client sends one;
- API -> worker: the AMQP message's headers (``publishing`` -> ``consuming``);
- through the outbox: the ``trace_context`` column of the operation row, written when the call
  accepts it (``traceparent``); the relay sends an operation the API could not publish under
  that context (``resumed``), so its worker's spans still join the call's trace.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span, Tracer
    from opentelemetry.util.types import AttributeValue

    from service.runtime.settings import Settings

Attributes = Mapping[str, "AttributeValue"]

TRACER_NAME = "baremetal-image-service"
# Codes that are the server's fault: only these mark a server span as an error (OpenTelemetry's
# gRPC conventions); NOT_FOUND and the like are the caller's answer, not a failure.
SERVER_FAULT_CODES = frozenset({2, 4, 12, 13, 14, 15})

_NO_SPAN: AbstractContextManager[None] = contextlib.nullcontext()


class _Tracing:
    """What is set while tracing is on."""

    def __init__(self, provider: TracerProvider) -> None:
        from opentelemetry import trace
        from opentelemetry.context import Context
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.provider = provider
        self.tracer: Tracer = provider.get_tracer(TRACER_NAME)
        self.propagator = TraceContextTextMapPropagator()
        self.trace = trace
        self.empty_context = Context

    def parent(self, traceparent: str | None) -> Context:
        """The context a W3C ``traceparent`` names; an empty one (a new trace) without."""
        carrier = {"traceparent": traceparent} if traceparent else {}
        return self.propagator.extract(carrier, context=self.empty_context())


_on: _Tracing | None = None


def configure(settings: Settings, component: str) -> None:
    """Send traces to the OTLP endpoint of the settings, if there is one (entry points call
    this once, before serving)."""
    endpoint = settings.otel_exporter_otlp_endpoint
    if not endpoint:
        return
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    name = settings.otel_service_name or f"baremetal-image-{component}"
    provider = TracerProvider(resource=Resource.create({"service.name": name}))
    provider.add_span_processor(BatchSpanProcessor(_exporter(endpoint, settings)))
    use(provider)


def _exporter(endpoint: str, settings: Settings) -> SpanExporter:
    if settings.otel_exporter_otlp_protocol == "grpc":
        # Imported only when chosen: it loads grpc, which the worker otherwise never does.
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcExporter,
        )

        return GrpcExporter(endpoint=endpoint)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    # As the OTLP specification says of OTEL_EXPORTER_OTLP_ENDPOINT: the base URL of all
    # signals, traces under /v1/traces.
    return OTLPSpanExporter(endpoint=endpoint.rstrip("/") + "/v1/traces")


def use(provider: TracerProvider | None) -> None:
    """Trace with ``provider`` from now on (``None``: tracing off). Tests pass one with an
    in-memory exporter."""
    global _on
    _on = None if provider is None else _Tracing(provider)


def enabled() -> bool:
    return _on is not None


def shutdown() -> None:
    """Send the spans still buffered, then stop (at process exit)."""
    if _on is not None:
        _on.provider.shutdown()


def span(name: str, attributes: Attributes | None = None) -> AbstractContextManager[Span | None]:
    """An internal span, child of the current one."""
    if _on is None:
        return _NO_SPAN
    return _on.tracer.start_as_current_span(name, attributes=attributes)


def server_span(
    name: str, traceparent: str | None, attributes: Attributes
) -> AbstractContextManager[Span | None]:
    """The span of a call the API serves, continuing the client's trace if it sent one.

    Exceptions do not set its status: the caller reports the call's code (``rpc_ended``).
    """
    if _on is None:
        return _NO_SPAN
    from opentelemetry.trace import SpanKind

    return _on.tracer.start_as_current_span(
        name,
        context=_on.parent(traceparent),
        kind=SpanKind.SERVER,
        attributes=attributes,
        record_exception=False,
        set_status_on_exception=False,
    )


def rpc_ended(span: Span | None, code: int) -> None:
    """Record a call's status code (``google.rpc.Code``) on its server span."""
    if span is None:
        return
    span.set_attribute("rpc.grpc.status_code", code)
    if code in SERVER_FAULT_CODES:
        from opentelemetry.trace import Status, StatusCode

        span.set_status(Status(StatusCode.ERROR))


def publishing(
    queue: str, operation_id: str, traceparent: str | None
) -> AbstractContextManager[dict[str, str] | None]:
    """A producer span around sending an operation in a message, in the trace ``traceparent``
    names (the call that accepted it; a new trace without one); yields the headers that carry
    its context to the consumer (``None`` while tracing is off)."""
    if _on is None:
        return _NO_SPAN
    return _publishing(_on, queue, operation_id, traceparent)


@contextlib.contextmanager
def _publishing(
    on: _Tracing, queue: str, operation_id: str, traceparent: str | None
) -> Iterator[dict[str, str]]:
    from opentelemetry.trace import SpanKind

    with on.tracer.start_as_current_span(
        f"{queue} publish",
        context=on.parent(traceparent),
        kind=SpanKind.PRODUCER,
        attributes=_message(queue, operation_id),
    ):
        headers: dict[str, str] = {}
        on.propagator.inject(headers)
        yield headers


def consuming(
    queue: str, operation_id: str, traceparent: str | None
) -> AbstractContextManager[Span | None]:
    """A consumer span around handling a message, in the trace its headers name."""
    if _on is None:
        return _NO_SPAN
    from opentelemetry.trace import SpanKind

    return _on.tracer.start_as_current_span(
        f"{queue} process",
        context=_on.parent(traceparent),
        kind=SpanKind.CONSUMER,
        attributes=_message(queue, operation_id),
    )


def resumed(
    name: str, traceparent: str | None, attributes: Attributes | None = None
) -> AbstractContextManager[Span | None]:
    """A span in the trace a stored ``traceparent`` names (a new trace without one): work
    done later for a call, such as the relay publishing what the call could not."""
    if _on is None:
        return _NO_SPAN
    return _on.tracer.start_as_current_span(
        name, context=_on.parent(traceparent), attributes=attributes
    )


def traceparent() -> str | None:
    """The current span's context as a W3C ``traceparent`` (``None``: no span, or off)."""
    if _on is None:
        return None
    carrier: dict[str, str] = {}
    _on.propagator.inject(carrier)
    return carrier.get("traceparent")


def set_attribute(key: str, value: str) -> None:
    """Name something on the current span (nothing while tracing is off)."""
    if _on is not None:
        _on.trace.get_current_span().set_attribute(key, value)


def _message(queue: str, operation_id: str) -> dict[str, str]:
    return {
        "messaging.system": "rabbitmq",
        "messaging.destination.name": queue,
        "messaging.message.id": operation_id,
        "image.operation.id": operation_id,
    }
