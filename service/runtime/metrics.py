"""Prometheus metrics: the one home of every metric's name, labels and buckets.

The gRPC server metrics keep the names and labels of go-grpc-middleware's Prometheus provider
(``grpc_server_started_total``, ``grpc_server_handled_total``,
``grpc_server_handling_seconds``; labels ``grpc_type``, ``grpc_service``, ``grpc_method``,
``grpc_code``, the code spelled as Go spells it: ``OK``, ``NotFound``, ``Unavailable``), so
dashboards and alerts written for gRPC services work unchanged. The service's own metrics
start with ``image_service_``.

Every metric is a module-level object updated in memory (a lock and an addition, no I/O);
``service.runtime.exposition`` serves them on ``METRICS_LISTEN``. With ``API_PROCESSES`` > 1
the API processes keep them in memory-mapped files (prometheus-client's multiprocess mode,
chosen by ``PROMETHEUS_MULTIPROC_DIR`` in their environment) and their parent serves the sum;
each gauge says how the processes' values combine.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import prometheus_client
from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

# ``*_created`` series (one more per counter and histogram) tell Prometheus nothing it uses.
prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]

# Go's names of the status codes (codes.Code.String()), keyed by google.rpc.Code names.
GO_CODE_NAMES = {
    "OK": "OK",
    "CANCELLED": "Canceled",
    "UNKNOWN": "Unknown",
    "INVALID_ARGUMENT": "InvalidArgument",
    "DEADLINE_EXCEEDED": "DeadlineExceeded",
    "NOT_FOUND": "NotFound",
    "ALREADY_EXISTS": "AlreadyExists",
    "PERMISSION_DENIED": "PermissionDenied",
    "RESOURCE_EXHAUSTED": "ResourceExhausted",
    "FAILED_PRECONDITION": "FailedPrecondition",
    "ABORTED": "Aborted",
    "OUT_OF_RANGE": "OutOfRange",
    "UNIMPLEMENTED": "Unimplemented",
    "INTERNAL": "Internal",
    "UNAVAILABLE": "Unavailable",
    "DATA_LOSS": "DataLoss",
    "UNAUTHENTICATED": "Unauthenticated",
}

_RPC_LABELS = ("grpc_type", "grpc_service", "grpc_method")
# A cached Get takes well under a millisecond; a WaitOperation up to a minute.
_RPC_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60,
)  # fmt: skip
# An Update is done in milliseconds; a Create downloads for up to DOWNLOAD_TIMEOUT_SECONDS.
_OPERATION_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800,
)  # fmt: skip
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)

# The server families (gRPC and HTTP) are registered by the first call counted, so that only
# a process that serves calls (the API) lists them: the workers' /metrics has none of them.
GRPC_STARTED = Counter(
    "grpc_server_started",
    "Total number of RPCs started on the server.",
    _RPC_LABELS,
    registry=None,
)
GRPC_HANDLED = Counter(
    "grpc_server_handled",
    "Total number of RPCs completed on the server, regardless of success or failure.",
    (*_RPC_LABELS, "grpc_code"),
    registry=None,
)
GRPC_HANDLING_SECONDS = Histogram(
    "grpc_server_handling_seconds",
    "Histogram of response latency (seconds) of gRPC that had been application-level "
    "handled by the server.",
    _RPC_LABELS,
    buckets=_RPC_BUCKETS,
    registry=None,
)
# REST/JSON requests (and the console's), by route template: a bounded set of label values.
HTTP_REQUESTS = Counter(
    "http_server_requests",
    "REST/JSON and console requests answered, by method, route template and HTTP status.",
    ("method", "route", "code"),
    registry=None,
)
HTTP_REQUEST_SECONDS = Histogram(
    "http_server_request_duration_seconds",
    "Histogram of REST/JSON and console request latency (seconds), by method and route.",
    ("method", "route"),
    buckets=_RPC_BUCKETS,
    registry=None,
)
_SERVER_FAMILIES = (
    GRPC_STARTED,
    GRPC_HANDLED,
    GRPC_HANDLING_SECONDS,
    HTTP_REQUESTS,
    HTTP_REQUEST_SECONDS,
)
_server_families_registered: list[bool] = []


def register_server_metrics() -> None:
    """List the gRPC and HTTP server families in this process's /metrics (once)."""
    if not _server_families_registered:
        for family in _SERVER_FAMILIES:
            REGISTRY.register(family)
        _server_families_registered.append(True)


HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def http_request(method: str, route: str, status: int, seconds: float) -> None:
    """One REST or console request answered; ``route`` is its template (or ``(unmatched)``),
    an unknown method counted as ``other``."""
    register_server_metrics()
    method = method if method in HTTP_METHODS else "other"
    HTTP_REQUESTS.labels(method, route, str(status)).inc()
    HTTP_REQUEST_SECONDS.labels(method, route).observe(seconds)


OPERATIONS_ACCEPTED = Counter(
    "image_service_operations_accepted",
    "Operations accepted by the API (recorded and enqueued), by kind.",
    ("kind",),
)
OPERATIONS_FINISHED = Counter(
    "image_service_operations_finished",
    "Operations finished, by kind and outcome (OK, or the code of the operation's error).",
    ("kind", "outcome"),
)
OPERATION_DURATION = Histogram(
    "image_service_operation_duration_seconds",
    "Seconds from an operation's acceptance to its end (done), by the database's clock; "
    "kind=update_image is the Update -> done latency.",
    ("kind",),
    buckets=_OPERATION_BUCKETS,
)
BATCH_SIZE = Histogram(
    "image_service_batch_size",
    "Items handled by one statement of a micro-batch: accept_updates (API group commit), "
    "read_operations (API polls), publish (operations in one message the API sends), "
    "apply_updates (worker).",
    ("batch",),
    buckets=_BATCH_BUCKETS,
)
RETRIES = Counter(
    "image_service_retries",
    "Retries of a failed step, by step and cause (the exception's class).",
    ("name", "cause"),
)
RECEIVED_MESSAGES = Counter(
    "image_service_received_messages",
    "Messages a worker received from a queue, redeliveries included.",
    ("queue",),
)
RECEIVED_OPERATIONS = Counter(
    "image_service_received_operations",
    "Operations carried by the messages a worker received (a message carries several), "
    "redeliveries and copies included.",
    ("queue",),
)
DEAD_LETTERED = Counter(
    "image_service_dead_lettered_messages",
    "Messages taken from the dead-letter queue; each one's operations end with an error.",
)
FINISHED_CACHE = Counter(
    "image_service_finished_operation_cache_requests",
    "Operation reads of the API answered from memory (hit) or not (miss).",
    ("result",),
)
DB_POOL_IN_USE = Gauge(
    "image_service_db_pool_connections_in_use",
    "Database connections taken from the pool (sampled every METRICS_REFRESH_SECONDS).",
    multiprocess_mode="livesum",
)
DB_POOL_SIZE = Gauge(
    "image_service_db_pool_connections",
    "Database connections the pool holds open (sampled every METRICS_REFRESH_SECONDS).",
    multiprocess_mode="livesum",
)

CACHE_HIT = FINISHED_CACHE.labels("hit")
CACHE_MISS = FINISHED_CACHE.labels("miss")


def call_metrics(full_method: str) -> tuple[Callable[[], None], Callable[[str, float], None]]:
    """The gRPC server metrics of one method (``/package.Service/Method``): ``started()`` when
    a call begins, ``handled(code, seconds)`` when it ends (``code``: a ``google.rpc.Code``
    name). The label children are looked up here, once per method, so a call only adds."""
    register_server_metrics()
    service, method = full_method.lstrip("/").rsplit("/", 1)
    labels = ("unary", service, method)
    observe = GRPC_HANDLING_SECONDS.labels(*labels).observe
    count_by_code = {"OK": GRPC_HANDLED.labels(*labels, "OK").inc}

    def handled(code: str, seconds: float) -> None:
        count = count_by_code.get(code)
        if count is None:
            count = count_by_code[code] = GRPC_HANDLED.labels(
                *labels, GO_CODE_NAMES.get(code, code)
            ).inc
        count()
        observe(seconds)

    return GRPC_STARTED.labels(*labels).inc, handled


def operation_accepted(kind: str) -> None:
    OPERATIONS_ACCEPTED.labels(kind).inc()


def operation_finished(kind: str, outcome: str, seconds: float) -> None:
    """One operation ended (committed): ``outcome`` is ``OK`` or its error's code name."""
    OPERATIONS_FINISHED.labels(kind, outcome).inc()
    OPERATION_DURATION.labels(kind).observe(max(seconds, 0.0))


def batch_size(batch: str) -> Callable[[float], None]:
    """Records the size of each batch of the micro-batch ``batch``."""
    return BATCH_SIZE.labels(batch).observe


def message_received(queue: str, operations: int) -> None:
    RECEIVED_MESSAGES.labels(queue).inc()
    RECEIVED_OPERATIONS.labels(queue).inc(operations)


def retried(name: str, cause: str) -> None:
    RETRIES.labels(name, cause).inc()


class OperationCounts(Collector):
    """Unfinished operations and the outbox backlog, as last counted in the database, and the
    operation queue's depth as the sweeper last asked the broker.

    A collector rather than two gauges: only the workers count (``register`` is called
    there), and a gauge defined here would also show up, as zero, from every API process.
    """

    def __init__(self) -> None:
        self._counts: tuple[int, int] | None = None
        self._queue: tuple[int, int] | None = None

    def update(self, unfinished: int, unpublished: int) -> None:
        self._counts = (unfinished, unpublished)

    def update_queue(self, ready: int, consumers: int) -> None:
        self._queue = (ready, consumers)

    def collect(self) -> Iterable[Metric]:
        if self._queue is not None:
            ready, consumers = self._queue
            yield GaugeMetricFamily(
                "image_service_queue_messages_ready",
                "Messages waiting in the operation queue for a consumer, as the sweeper last "
                "asked the broker (every SWEEP_INTERVAL_SECONDS).",
                value=ready,
            )
            yield GaugeMetricFamily(
                "image_service_queue_consumers",
                "Consumers subscribed to the operation queue, as the sweeper last asked.",
                value=consumers,
            )
        if self._counts is None:
            return
        unfinished, unpublished = self._counts
        yield GaugeMetricFamily(
            "image_service_operations_unfinished",
            "Operations not done yet (counted every METRICS_REFRESH_SECONDS).",
            value=unfinished,
        )
        yield GaugeMetricFamily(
            "image_service_outbox_backlog",
            "Unfinished operations whose message the broker has not confirmed yet: what the "
            "outbox relay still has to send (counted every METRICS_REFRESH_SECONDS).",
            value=unpublished,
        )

    def register(self) -> None:
        """Expose the counts in this process's metrics (once; later calls change nothing)."""
        if self not in _registered:
            REGISTRY.register(self)
            _registered.append(self)


_registered: list[OperationCounts] = []
OPERATION_COUNTS = OperationCounts()
