"""Serving the metrics (``METRICS_LISTEN``) over HTTP, for one process or for several.

One process (a worker, or the API with ``API_PROCESSES`` = 1) serves its own metrics. Several
API processes share one endpoint instead of one port each, so Prometheus needs one target per
host whatever ``API_PROCESSES`` is: the parent makes a directory, names it in
``PROMETHEUS_MULTIPROC_DIR`` before it starts its children (prometheus-client reads the
variable when it is first imported, so only processes started afterwards use it), the
children keep their values in memory-mapped files there, and the parent serves their sum
(counters and histograms add up; each gauge has its own rule, see ``metrics``).

The server is prometheus-client's own, in a daemon thread: a scrape every few seconds takes
the GIL for a millisecond or two and leaves the event loop alone otherwise. This module
defines no metric, so the parent, which records nothing, creates no files of its own.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from wsgiref.simple_server import WSGIServer

import structlog
from prometheus_client import REGISTRY, CollectorRegistry, start_http_server
from prometheus_client.multiprocess import MultiProcessCollector

log = structlog.get_logger(__name__)

MULTIPROCESS_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"


def parse_listen(listen: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port``; an empty host is every interface) as host and port."""
    host, colon, port = listen.rpartition(":")
    if not colon or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"METRICS_LISTEN must be host:port, not {listen!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


class MetricsServer:
    """A running metrics endpoint; ``port`` is the one bound (``METRICS_LISTEN`` may say 0)."""

    def __init__(self, server: WSGIServer, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread

    @property
    def port(self) -> int:
        return self._server.server_port

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


def start_metrics_server(listen: str, *, multiprocess_dir: str | None = None) -> MetricsServer:
    """Serve ``/metrics`` on ``listen``: this process's metrics, or with ``multiprocess_dir``
    the sum of the processes writing there. A port that cannot be bound ends the process with
    a one-line reason."""
    host, port = parse_listen(listen)
    registry = REGISTRY
    if multiprocess_dir is not None:
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=multiprocess_dir)  # type: ignore[no-untyped-call]
    try:
        server, thread = start_http_server(port, host, registry)
    except OSError as exc:
        reason = f"error: cannot serve metrics on METRICS_LISTEN={listen}: {exc.strerror}"
        raise SystemExit(reason) from exc
    log.info("metrics.started", listen=listen, port=server.server_port)
    return MetricsServer(server, thread)


@contextlib.contextmanager
def shared_metrics_dir() -> Iterator[str]:
    """A directory where the metrics of the processes started inside the block meet.

    A ``PROMETHEUS_MULTIPROC_DIR`` set by the operator is used (its files from an earlier run
    removed first, as prometheus-client requires); otherwise a temporary directory is made,
    named in the environment, and removed at the end.
    """
    given = os.environ.get(MULTIPROCESS_DIR_VARIABLE)
    if given:
        for stale in Path(given).glob("*.db"):
            stale.unlink(missing_ok=True)
        yield given
        return
    path = tempfile.mkdtemp(prefix="image-service-metrics-")
    os.environ[MULTIPROCESS_DIR_VARIABLE] = path
    try:
        yield path
    finally:
        os.environ.pop(MULTIPROCESS_DIR_VARIABLE, None)
        shutil.rmtree(path, ignore_errors=True)
