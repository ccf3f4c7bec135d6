"""The scale phases' figures as a table (``python -m bench.scale`` and ``python -m bench``)."""

from __future__ import annotations

from typing import Any


def _split(cpu: dict[str, int], roles: tuple[str, ...]) -> str:
    return "/".join(str(cpu.get(role, 0)) for role in roles)


def table(figures: dict[str, Any], judged: bool = True) -> str:
    """The phases side by side (each its median repeat), the verdict (unless a smoke run:
    not judged), and what each setup took."""
    header = (
        f"{'phase':<20} {'accept µs/Update':>16} {'(api/pg/rmq)':>15} {'accepted/s':>10}"
        f" {'apply µs/op':>11} {'(worker/pg/rmq/api)':>20} {'total µs':>8} {'ratio':>5}"
        "  totals of the repeats"
    )
    lines = [header]
    for p in figures["phases"]:
        accept, apply = p["accept"], p["apply"]
        rate = accept["per_second"]
        lines.append(
            f"{p['phase']:<20} {accept['cpu_us_total']:>16}"
            f" {_split(accept['cpu_us'], ('api', 'postgres', 'rabbitmq')):>15}"
            f" {'-' if rate is None else f'{rate:.0f}':>10} {apply['cpu_us_total']:>11}"
            f" {_split(apply['cpu_us'], ('worker', 'postgres', 'rabbitmq', 'api')):>20}"
            f" {p['total_us']:>8} {p['ratio_to_first']:>5.2f}  "
            + " ".join(str(total) for total in p["total_us_repeats"])
        )
    verdict = ("met" if figures["target_met"] else "missed") if judged else "not judged (smoke)"
    lines.append(
        f"target: every total within {figures['target_ratio']}x of the others: {verdict}"
        f" (largest/smallest {figures['spread']:.2f})"
    )
    for p in figures["phases"]:
        setup = ", ".join(f"{step} {s:.1f} s" for step, s in p["setup_seconds"].items())
        errors: dict[str, int] = {}
        for repeat in p["repeats"]:
            for code, n in repeat["accept"]["errors"].items():
                errors[code] = errors.get(code, 0) + n
        problems = {
            k: v
            for k, v in (
                ("errors", errors),
                ("images not READY", max(r["images_not_ready_after"] for r in p["repeats"])),
                ("operations failed", p["repeats"][-1]["operations_failed"]),
            )
            if v
        }
        lines.append(
            f"{p['phase']}: setup {setup}; {len(p['repeats'])} x {p['accept']['updates']}"
            f" Updates ({p['accept']['rounds']} round(s) each); the median one applied"
            f" {p['apply']['operations']}, queue after its accept {p['queue_after_accept']}"
            + (f"; {problems}" if problems else "")
        )
    lines.append(
        f"worker held back by {figures['worker_held_back_by']}"
        f" (reconnects: {figures['worker_reconnects']}); whole run {figures['seconds']} s"
    )
    return "\n".join(lines)
