"""Metrics of several API processes (API_PROCESSES > 1) served as their sum: spawns
processes, so it is not a unit test."""

from __future__ import annotations

import multiprocessing
import os
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from service.runtime.exposition import (
    MULTIPROCESS_DIR_VARIABLE,
    shared_metrics_dir,
    start_metrics_server,
)


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        f"{s.name}{sorted(s.labels.items())}": s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _count_in_a_child(calls: int) -> None:
    # A fresh interpreter (spawn): prometheus-client reads PROMETHEUS_MULTIPROC_DIR on import.
    from service.runtime import metrics

    for _ in range(calls):
        metrics.GRPC_STARTED.labels("unary", "multi.Process", "Call").inc()
    metrics.DB_POOL_IN_USE.set(calls)


def test_the_metrics_of_several_processes_are_served_as_their_sum():
    """What API_PROCESSES > 1 does: children write to the shared directory, one endpoint sums."""
    assert MULTIPROCESS_DIR_VARIABLE not in os.environ
    context = multiprocessing.get_context("spawn")
    with shared_metrics_dir() as directory:
        assert os.environ[MULTIPROCESS_DIR_VARIABLE] == directory
        for calls in (3, 4):
            child = context.Process(target=_count_in_a_child, args=(calls,))
            child.start()
            child.join(60)
            assert child.exitcode == 0
        server = start_metrics_server("127.0.0.1:0", multiprocess_dir=directory)
        try:
            scraped = scrape(server.port)
        finally:
            server.stop()
    assert MULTIPROCESS_DIR_VARIABLE not in os.environ
    assert not os.path.exists(directory)
    labels = [("grpc_method", "Call"), ("grpc_service", "multi.Process"), ("grpc_type", "unary")]
    assert scraped[f"grpc_server_started_total{labels}"] == 7
    # Each gauge says how processes combine: connections in use add up.
    assert scraped["image_service_db_pool_connections_in_use[]"] == 7
