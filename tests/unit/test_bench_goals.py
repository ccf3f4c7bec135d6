"""Round three's goals (bench.goals): each judged on one run's figures, against a ratio
measured in that run; a smoke run judges nothing."""

from __future__ import annotations

from typing import Any

from bench import goals


def figures(**changes: Any) -> dict[str, Any]:
    """A run that meets every goal, with ``changes`` applied."""
    base: dict[str, Any] = {
        "echo_per_second": 4000.0,
        "cpu_us_per_echo": {"echo": 400},
        "cpu_us_per_update": {"api": 900, "worker": 300, "postgres": 300, "rabbitmq": 100},
        "update_accepted_per_second": 1600.0,
        "update_ratio_to_echo": 0.4,
        "get_per_second": 3800.0,
        "get_ratio_to_echo": 0.95,
        "compare": {"service": {"get": {"per_second": 3800.0}}, "ratios": {"get": 4.0}},
        "latency_fixed": {"rate_per_second": 50.0, "p50_ms": 4.0, "p99_ms": 12.0},
        "sustained": {
            "seconds": 60,
            "fraction_of_echo": 0.2,
            "offered_per_second": 800.0,
            "sent_per_second": 800.0,
            "done_per_second": 800.0,
            "scheduled": 48000,
            "sent": 48000,
            "late": 0,
            "late_after_ms": 10.0,
            "not_sent": 0,
            "not_done": 0,
            "refused": {},
            "refused_total": 0,
            "follow_errors": {},
            "p50_ms": 20.0,
            "p99_ms": 80.0,
            "max_ms": 150.0,
            "from_send_p50_ms": 20.0,
            "from_send_p99_ms": 80.0,
        },
    }
    return base | changes


def verdicts(run: dict[str, Any], judged: bool = True) -> dict[str, str]:
    return {g.goal.strip(): g.verdict for g in goals.round_three(run, judged) if g.target}


def test_a_run_that_meets_every_target_is_judged_met_on_every_line():
    assert set(verdicts(figures()).values()) == {"met"}


def test_the_cpu_goal_is_a_ratio_to_echos_cpu_per_call_in_the_same_run():
    cpu = {"api": 1000, "worker": 400, "postgres": 300, "rabbitmq": 100}  # 1,800 µs
    head = "1. whole-stack CPU per Update, accepted and applied"
    assert verdicts(figures(cpu_us_per_update=cpu))[head] == "missed"
    faster_echo = figures(cpu_us_per_update=cpu, cpu_us_per_echo={"echo": 450})
    assert set(verdicts(faster_echo).values()) == {"met"}


def test_postgresql_and_rabbitmq_have_budgets_of_their_own():
    cpu = {"api": 600, "worker": 300, "postgres": 401, "rabbitmq": 151}
    judged = verdicts(figures(cpu_us_per_update=cpu))
    assert judged["PostgreSQL's share (budget)"] == "missed"
    assert judged["RabbitMQ's share (budget)"] == "missed"
    assert judged["1. whole-stack CPU per Update, accepted and applied"] == "met"


def sustained(**changes: Any) -> dict[str, Any]:
    return figures()["sustained"] | changes


def test_the_sustained_goal_misses_when_an_update_is_never_sent_or_never_done():
    head = "2. sustained, 60 s at 0.2 x echo: Update -> done p99"
    assert verdicts(figures(sustained=sustained(not_sent=1)))[head] == "missed"
    assert verdicts(figures(sustained=sustained(not_done=1)))[head] == "missed"
    assert verdicts(figures(sustained=sustained(p99_ms=101.0)))[head] == "missed"


def test_one_refused_update_misses_the_sustained_goal_and_is_named_by_code():
    run = figures(sustained=sustained(refused={"UNAVAILABLE": 1}, refused_total=1))
    assert verdicts(run)["Updates refused (UNAVAILABLE 1)"] == "missed"


def test_without_the_comparison_the_celery_goal_is_not_measured():
    run = figures()
    del run["compare"]
    judged = verdicts(run)
    assert judged["OperationService.Get against the Celery build"] == goals.NOT_MEASURED
    json_row = next(r for r in goals.as_json(goals.round_three(run, True)) if "Celery" in r["goal"])
    assert json_row["value"] is None  # NaN is not JSON


def test_a_smoke_run_judges_nothing():
    rows = goals.round_three(figures(), judged=False)
    assert {g.verdict for g in rows if g.target} == {goals.NOT_JUDGED}
    assert all(g.met is None for g in rows)
    assert "not judged" in goals.table(rows)


def test_the_table_has_a_line_per_goal_with_its_figure_ratio_target_and_verdict():
    table = goals.table(goals.round_three(figures(), judged=True)).splitlines()
    cpu = next(line for line in table if line.startswith("1. whole-stack CPU"))
    for part in ("1600 µs", "4.00 x echo's 400 µs", "≤ 4 x echo"):
        assert part in cpu
    assert cpu.endswith("met")
