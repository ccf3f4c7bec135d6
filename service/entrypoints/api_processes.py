"""Several API processes on one port (``API_PROCESSES``), for machines with cores to spare.

Each child is a whole API (event loop, pools, server) bound to the same port with
SO_REUSEPORT, so the kernel spreads incoming connections over them. The parent only forwards
SIGTERM/SIGINT and waits: each child drains on its own. If one child dies, the others are
stopped too and the parent exits with its code, for the supervisor to restart the lot.

With ``METRICS_LISTEN`` set, the parent also serves the metrics: the children write theirs to
a directory the parent names in ``PROMETHEUS_MULTIPROC_DIR`` before starting them, and one
endpoint shows their sum (``service.runtime.exposition``). Prometheus scrapes one target per
host, whatever the number of processes.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import signal
from types import FrameType

from service.runtime.settings import Settings


def _child(metrics_served_by_parent: bool) -> None:
    from service.entrypoints.api import serve_api

    serve_api(Settings(), metrics_served_by_parent=metrics_served_by_parent)


def run_processes(count: int, settings: Settings) -> int:
    """Run ``count`` API processes until they end; the exit code of the first that failed."""
    if not settings.metrics_listen:
        return _run_children(count, metrics_served_by_parent=False)
    from service.runtime import logs
    from service.runtime.exposition import shared_metrics_dir, start_metrics_server

    logs.configure(settings.log_level, component="api")
    # Named in the environment before the children start: they inherit it.
    with shared_metrics_dir() as directory:
        server = start_metrics_server(settings.metrics_listen, multiprocess_dir=directory)
        try:
            return _run_children(count, metrics_served_by_parent=True)
        finally:
            server.stop()


def _run_children(count: int, *, metrics_served_by_parent: bool) -> int:
    context = multiprocessing.get_context("spawn")
    children = [
        context.Process(target=_child, args=(metrics_served_by_parent,), name=f"api-{n}")
        for n in range(count)
    ]
    for child in children:
        child.start()

    stopping = False

    def forward(signum: int, _frame: FrameType | None = None) -> None:
        # Once only: a second signal could reach a child past its own handler, mid-exit.
        nonlocal stopping
        if stopping:
            return
        stopping = True
        for child in children:
            if child.is_alive() and child.pid is not None:
                os.kill(child.pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    # Wait until any child ends; the signal handler runs meanwhile and the wait goes on.
    multiprocessing.connection.wait([child.sentinel for child in children])
    forward(signal.SIGTERM)  # one child ended by itself: stop the others
    for child in children:
        child.join()
    codes = [child.exitcode for child in children]
    return 0 if all(code == 0 for code in codes) else next(c for c in codes if c) or 1
