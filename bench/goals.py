"""Round three's goals, each judged on the figures of one run of ``python -m bench``.

Every goal is a ratio to something measured in the same run (echo's rate or its server's CPU
per call, the Celery build's rate, or the goal's own target), because on a shared machine
absolute rates move by ±20 % from run to run. Each row has its figure, its ratio, its target
and a verdict; a smoke run marks every verdict as not judged, and a figure the run did not
measure (``--no-compare``) is marked as such.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

LATENCY_RATE = 50.0  # Updates per second of goal 4's latency phase
CPU_RATIO = 4.0  # whole-stack CPU per Update, at most this many echo calls' server CPU
PG_BUDGET_US = 400  # PostgreSQL's CPU per Update
RMQ_BUDGET_US = 150  # RabbitMQ's CPU per Update
SUSTAINED_RATE = 0.2  # of echo's calls per second: the sustained phase's default rate
SUSTAINED_P99_MS = 100.0
UPDATE_RATIO = 0.35  # Updates accepted per second, of echo's calls per second
GET_RATIO = 0.9  # OperationService.Get per second, of echo's calls per second
GET_VS_CELERY = 3.5  # OperationService.Get per second, of the Celery build's
LATENCY_P50_MS = 5.0
LATENCY_P99_MS = 15.0

NOT_JUDGED = "not judged (smoke)"
NOT_MEASURED = "not measured"


@dataclass(frozen=True)
class Goal:
    """One row of the table."""

    goal: str
    value: float
    unit: str
    ratio: float
    ratio_to: str
    target: str
    met: bool | None  # None: no target of its own, not judged (smoke) or not measured
    verdict: str


def round_three(figures: dict[str, Any], judged: bool) -> list[Goal]:
    """The goals' rows, in the order of the table."""

    def row(
        goal: str, value: float, unit: str, ratio: float, ratio_to: str, target: str, met: Any
    ) -> Goal:
        """A row; ``met`` None for a figure with no target of its own (and in a smoke run,
        where nothing is judged)."""
        if met is None:
            verdict = ""
        elif not judged:
            met, verdict = None, NOT_JUDGED
        else:
            verdict = "met" if met else "missed"
        return Goal(goal, value, unit, round(ratio, 2), ratio_to, target, met, verdict)

    echo_rate = figures["echo_per_second"]
    echo_cpu = figures["cpu_us_per_echo"]["echo"]
    cpu = figures["cpu_us_per_update"]
    total = sum(cpu.values())
    rows = [
        row(
            "1. whole-stack CPU per Update, accepted and applied",
            total,
            "µs",
            total / max(echo_cpu, 1),
            f"echo's {echo_cpu} µs",
            f"≤ {CPU_RATIO:g} x echo",
            total <= CPU_RATIO * echo_cpu,
        ),
        row(
            "   API's share",
            cpu["api"],
            "µs",
            cpu["api"] / max(echo_cpu, 1),
            "echo",
            "",
            None,
        ),
        row(
            "   worker's share",
            cpu["worker"],
            "µs",
            cpu["worker"] / max(echo_cpu, 1),
            "echo",
            "",
            None,
        ),
        row(
            "   PostgreSQL's share (budget)",
            cpu["postgres"],
            "µs",
            cpu["postgres"] / PG_BUDGET_US,
            "budget",
            f"≤ {PG_BUDGET_US} µs",
            cpu["postgres"] <= PG_BUDGET_US,
        ),
        row(
            "   RabbitMQ's share (budget)",
            cpu["rabbitmq"],
            "µs",
            cpu["rabbitmq"] / RMQ_BUDGET_US,
            "budget",
            f"≤ {RMQ_BUDGET_US} µs",
            cpu["rabbitmq"] <= RMQ_BUDGET_US,
        ),
    ]
    rows += _sustained(figures["sustained"], echo_rate, row)
    rows += [
        row(
            "3. Updates accepted",
            figures["update_accepted_per_second"],
            "/s",
            figures["update_ratio_to_echo"],
            "echo",
            f"≥ {UPDATE_RATIO:g} x echo",
            figures["update_ratio_to_echo"] >= UPDATE_RATIO,
        ),
        row(
            "   OperationService.Get",
            figures["get_per_second"],
            "/s",
            figures["get_ratio_to_echo"],
            "echo",
            f"≥ {GET_RATIO:g} x echo",
            figures["get_ratio_to_echo"] >= GET_RATIO,
        ),
    ]
    if "compare" in figures:
        ours = figures["compare"]["service"]["get"]["per_second"]
        ratio = figures["compare"]["ratios"]["get"]
        rows.append(
            row(
                "   OperationService.Get against the Celery build (32 in flight)",
                ours,
                "/s",
                ratio,
                "Celery",
                f"≥ {GET_VS_CELERY:g} x Celery",
                ratio >= GET_VS_CELERY,
            )
        )
    else:
        rows.append(
            Goal(
                "   OperationService.Get against the Celery build",
                math.nan,
                "/s",
                math.nan,
                "Celery",
                f"≥ {GET_VS_CELERY:g} x Celery",
                None,
                NOT_MEASURED,
            )
        )
    fixed = figures["latency_fixed"]
    rate = fixed["rate_per_second"]
    rows += [
        row(
            f"4. Update -> done p50 at {rate:g}/s (WaitOperation)",
            fixed["p50_ms"],
            "ms",
            fixed["p50_ms"] / LATENCY_P50_MS,
            "target",
            f"≤ {LATENCY_P50_MS:g} ms",
            fixed["p50_ms"] <= LATENCY_P50_MS,
        ),
        row(
            f"   Update -> done p99 at {rate:g}/s (WaitOperation)",
            fixed["p99_ms"],
            "ms",
            fixed["p99_ms"] / LATENCY_P99_MS,
            "target",
            f"≤ {LATENCY_P99_MS:g} ms",
            fixed["p99_ms"] <= LATENCY_P99_MS,
        ),
    ]
    return rows


def _sustained(s: dict[str, Any], echo_rate: float, row: Any) -> list[Goal]:
    """Goal 2: p99 within its target with every scheduled Update sent and done (one never
    sent or never done has no latency, so it cannot count as within it), and none refused."""
    all_done = s["not_sent"] == 0 and s["not_done"] == 0 and not s["follow_errors"]
    by_code = ", ".join(f"{code} {n}" for code, n in sorted(s["refused"].items()))
    sent = max(s["sent"], 1)
    head = f"2. sustained, {s['seconds']:g} s at {s['fraction_of_echo']:g} x echo"
    return [
        row(
            f"{head}: Update -> done p99",
            s["p99_ms"],
            "ms",
            s["p99_ms"] / SUSTAINED_P99_MS,
            "target",
            f"≤ {SUSTAINED_P99_MS:g} ms, all done",
            s["p99_ms"] <= SUSTAINED_P99_MS and all_done,
        ),
        row(
            "   Update -> done p50",
            s["p50_ms"],
            "ms",
            math.nan,
            "",
            "",
            None,
        ),
        row(
            "   Update -> done max",
            s["max_ms"],
            "ms",
            math.nan,
            "",
            "",
            None,
        ),
        row(
            "   Update -> done p99, timed from the send",
            s["from_send_p99_ms"],
            "ms",
            math.nan,
            "",
            "",
            None,
        ),
        row(
            "   Updates refused" + (f" ({by_code})" if by_code else ""),
            s["refused_total"],
            "",
            s["refused_total"] / sent,
            "sent",
            "none",
            s["refused_total"] == 0,
        ),
        row(
            "   offered",
            s["offered_per_second"],
            "/s",
            s["offered_per_second"] / echo_rate,
            "echo",
            "",
            None,
        ),
        row(
            "   sent",
            s["sent_per_second"],
            "/s",
            s["sent_per_second"] / echo_rate,
            "echo",
            "",
            None,
        ),
        row(
            "   done",
            s["done_per_second"],
            "/s",
            s["done_per_second"] / echo_rate,
            "echo",
            "",
            None,
        ),
        row(
            f"   sent late (> {s['late_after_ms']:g} ms after due)",
            s["late"],
            "",
            s["late"] / sent,
            "sent",
            "",
            None,
        ),
        row(
            "   not sent (still waiting at the end)",
            s["not_sent"],
            "",
            s["not_sent"] / max(s["scheduled"], 1),
            "scheduled",
            "",
            None,
        ),
        row(
            "   not done (or failed while followed)",
            s["not_done"] + sum(s["follow_errors"].values()),
            "",
            (s["not_done"] + sum(s["follow_errors"].values())) / sent,
            "sent",
            "",
            None,
        ),
    ]


def as_json(goals: list[Goal]) -> list[dict[str, Any]]:
    return [
        {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(g).items()}
        for g in goals
    ]


def table(goals: list[Goal]) -> str:
    """The goals as printed by ``python -m bench``."""
    rows = [("round three: goal", "measured", "ratio", "target", "verdict")]
    for g in goals:
        measured = "-" if math.isnan(g.value) else f"{g.value:g} {g.unit}".rstrip()
        ratio = "-" if math.isnan(g.ratio) else f"{g.ratio:.2f} x {g.ratio_to}"
        rows.append((g.goal, measured, ratio, g.target, g.verdict))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    return "\n".join(
        "  ".join(
            cell.rjust(w) if i in (1, 2) else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in rows
    )
