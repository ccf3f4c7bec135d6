"""What ``python -m bench`` prints: each figure with its ratio to the echo ceiling, the CPU
per call by process, the metrics comparison, the errors, then the comparison's and the scale
phases' tables (with round two's targets), and last round three's goals (``bench.goals``).

A smoke run judges nothing: every verdict reads "not judged (smoke)"."""

from __future__ import annotations

import json
from typing import Any

from bench import compare, goals, scale_report


def print_report(
    figures: dict[str, Any],
    rss_start: dict[str, float],
    rss_end: dict[str, float],
    round_three: list[goals.Goal],
    judged: bool = True,
) -> None:
    def _verdict(met: bool, target: str) -> str:
        return f"  (round two, {target}: {'met' if met else 'missed'})" if judged else ""

    update_cpu = sum(figures["cpu_us_per_update"].values())
    large = figures["large_create"]
    metrics_ab = figures["metrics_ab"]
    rows = [
        ("echo (bare grpc.aio unary)", f"{figures['echo_per_second']:.0f}/s", "1.00"),
        (
            "Update accepted",
            f"{figures['update_accepted_per_second']:.0f}/s",
            f"{figures['update_ratio_to_echo']:.2f}",
        ),
        (
            "OperationService.Get",
            f"{figures['get_per_second']:.0f}/s",
            f"{figures['get_ratio_to_echo']:.2f}"
            + _verdict(figures["get_ratio_to_echo"] >= 0.85, "≥ 0.85"),
        ),
        (
            "whole-stack CPU per Update (API+worker+PG+RMQ)",
            f"{update_cpu} µs",
            f"{figures['update_cpu_ratio_to_echo']:.2f} x echo's CPU per call"
            + _verdict(figures["update_cpu_ratio_to_echo"] <= 4, "≤ 4"),
        ),
        (
            "REST GET /operations/{id}",
            f"{figures['rest_get_per_second']:.0f}/s",
            f"{figures['rest_get_per_second'] / figures['echo_per_second']:.2f}"
            f" ({figures['rest_get_ratio_to_grpc_get']:.2f} of gRPC Get)",
        ),
        (
            f"Update->done p50 @ {figures['latency_rate_per_second']:.0f}/s",
            f"{figures['latency_p50_ms']} ms",
            "",
        ),
        (
            f"Update->done p99 @ {figures['latency_rate_per_second']:.0f}/s",
            f"{figures['latency_p99_ms']} ms",
            "",
        ),
        (
            "RSS api start -> end",
            f"{rss_start['api']:.0f} -> {rss_end['api']:.0f} MB",
            f"{figures['rss_growth_percent']['api']:+.1f}%",
        ),
        (
            "RSS worker start -> end",
            f"{rss_start['worker']:.0f} -> {rss_end['worker']:.0f} MB",
            f"{figures['rss_growth_percent']['worker']:+.1f}%",
        ),
        (
            f"worker peak RSS, {large['mib']} MiB Create",
            f"{large['worker_peak_rss_mb']:.0f} MB",
            f"({large['seconds']} s, md5 ok: {large['checksum_ok']})",
        ),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"{'figure':<{width}}  {'value':>22}  ratio to echo")
    for name, value, ratio in rows:
        print(f"{name:<{width}}  {value:>22}  {ratio}")
    print(
        "CPU µs per call — echo server: "
        f"{figures['cpu_us_per_echo']['echo']}; Update: "
        + ", ".join(f"{k} {v}" for k, v in figures["cpu_us_per_update"].items())
        + "; Get: "
        + ", ".join(f"{k} {v}" for k, v in figures["cpu_us_per_get"].items())
        + "; REST Get: "
        + ", ".join(f"{k} {v}" for k, v in figures["cpu_us_per_rest_get"].items())
    )
    if metrics_ab is not None:
        print(
            f"metrics on/off ({metrics_ab['rounds']} rounds; medians, then the paired change): "
            + "; ".join(
                f"{phase} {metrics_ab[phase]['off']:.0f}/s -> {metrics_ab[phase]['on']:.0f}/s"
                f" ({metrics_ab[phase]['change_percent']:+.1f}%), API CPU"
                f" {metrics_ab[phase]['api_cpu_us_off']} -> {metrics_ab[phase]['api_cpu_us_on']} µs"
                f" ({metrics_ab[phase]['api_cpu_change_percent']:+.1f}%)"
                for phase in ("get", "update")
            )
        )
    print(f"errors: {json.dumps(figures['errors'])}")
    if "compare" in figures:
        print(
            "\nAgainst a conventional Celery build (bench.compare), one load process, SDK-shaped"
            " (round two's targets):"
        )
        print(compare.table(figures["compare"], judged))
    if "scale" in figures:
        print("\nCost at scale (bench.scale), whole-stack CPU per Update (round two's target):")
        print(scale_report.table(figures["scale"], judged))
    print("\nRound three: the goals (every ratio within this run)")
    print(goals.table(round_three))
