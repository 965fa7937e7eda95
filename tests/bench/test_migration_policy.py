"""faas_llm.migration_policy: when moving a running inference lets a waiting request start sooner."""

from __future__ import annotations

import math

import pytest

from faas_llm.errors import ConfigError
from faas_llm.migration_policy import (
    Destination,
    MigrationCost,
    MigrationPlan,
    RunningInference,
    WaitPlan,
    plan_migration,
    plan_wait,
)

COST = MigrationCost(a_s_per_token=0.001, b_s=0.5)


def victim(name: str = "v1", *, tokens: int = 1000, remaining: float = 60.0, memory: int = 80_000,
           dests: tuple[Destination, ...] = (Destination("n1", 2.0),), cost: MigrationCost | None = None,
           ) -> RunningInference:
    return RunningInference(instance=name, model="m", tokens=tokens, remaining_s=remaining, memory_mb=memory,
                            destinations=dests, cost=cost)


def plan(running: list[RunningInference], *, baseline: float = 30.0, load: float = 1.0, need: int = 80_000,
         free: int = 0, gain: float = 0.0) -> MigrationPlan | None:
    return plan_migration(request_load_s=load, request_memory_mb=need, source_free_memory_mb=free,
                          baseline_s=baseline, running=running, cost=COST, min_gain_s=gain)


def test_a_move_that_beats_the_baseline_is_planned_with_its_times() -> None:
    p = plan([victim()])
    assert p is not None
    assert (p.instance, p.destination) == ("v1", "n1")
    # move = destination load 2.0 + resume (0.001 * 1000 + 0.5); start = move + the request's load 1.0
    assert p.move_s == pytest.approx(3.5)
    assert p.start_s == pytest.approx(4.5)


def test_no_plan_when_the_baseline_is_as_good() -> None:
    assert plan([victim()], baseline=4.5) is None
    assert plan([victim()], baseline=4.0) is None
    assert plan([victim()], baseline=4.6) is not None


def test_min_gain_must_be_exceeded() -> None:
    assert plan([victim()], baseline=5.0, gain=0.4) is not None
    assert plan([victim()], baseline=5.0, gain=0.5) is None


def test_a_victim_that_ends_before_the_move_completes_is_left_alone() -> None:
    assert plan([victim(remaining=3.5)]) is None
    assert plan([victim(remaining=3.6)]) is not None


def test_the_freed_memory_must_fit_the_request() -> None:
    assert plan([victim(memory=40_000)], need=80_000) is None
    assert plan([victim(memory=40_000)], need=80_000, free=40_000) is not None


def test_no_destination_or_no_victim_means_no_plan() -> None:
    assert plan([victim(dests=())]) is None
    assert plan([]) is None


def test_the_earliest_start_wins_across_victims_and_destinations() -> None:
    slow = victim("a", dests=(Destination("n1", 10.0), Destination("n2", 5.0)))
    fast = victim("b", tokens=100, dests=(Destination("n3", 2.0),))
    p = plan([slow, fast])
    assert p is not None and (p.instance, p.destination) == ("b", "n3")
    p2 = plan([slow])
    assert p2 is not None and p2.destination == "n2"


def test_ties_are_deterministic() -> None:
    a, b = victim("b"), victim("a")
    first, second = plan([a, b]), plan([b, a])
    assert first == second and first is not None and first.instance == "a"


def test_a_per_victim_cost_overrides_the_default() -> None:
    dear = victim(cost=MigrationCost(a_s_per_token=0.1, b_s=0.0))  # resume 100 s > remaining 60 s
    assert plan([dear], baseline=math.inf) is None
    cheap = victim(cost=MigrationCost(a_s_per_token=0.0, b_s=0.0))
    p = plan([cheap])
    assert p is not None and p.move_s == pytest.approx(2.0)


def test_an_infinite_baseline_means_any_feasible_move() -> None:
    assert plan([victim()], baseline=math.inf) is not None


@pytest.mark.parametrize(("a", "b"), [(-1.0, 0.0), (0.0, -0.1), (math.inf, 0.0), (math.nan, 0.0)])
def test_bad_costs_are_rejected(a: float, b: float) -> None:
    with pytest.raises(ConfigError):
        MigrationCost(a, b)


def test_bad_inputs_are_rejected() -> None:
    with pytest.raises(ConfigError):
        plan([victim()], load=-1.0)
    with pytest.raises(ConfigError):
        plan([victim()], gain=-1.0)


def _run(name: str, remaining: float, memory_mb: int = 100) -> RunningInference:
    return RunningInference(instance=name, model="m", tokens=10, remaining_s=remaining, memory_mb=memory_mb,
                            destinations=())


def test_waiting_for_the_run_that_ends_first_beats_a_far_load() -> None:
    # the run ends in 0.3 s; the request loads in 3 s there, against a 60 s registry fetch elsewhere
    plan = plan_wait(request_load_s=3.0, request_memory_mb=100, source_free_memory_mb=0, baseline_s=60.0,
                     running=[_run("late", 5.0), _run("soon", 0.3)])
    assert plan == WaitPlan(instance="soon", free_s=0.3, start_s=pytest.approx(3.3))


def test_no_wait_when_the_baseline_is_sooner_or_memory_does_not_fit() -> None:
    assert plan_wait(request_load_s=3.0, request_memory_mb=100, source_free_memory_mb=0, baseline_s=3.3,
                     running=[_run("soon", 0.3)]) is None
    assert plan_wait(request_load_s=3.0, request_memory_mb=100, source_free_memory_mb=0, baseline_s=60.0,
                     running=[_run("soon", 0.3, memory_mb=50)]) is None
    assert plan_wait(request_load_s=3.0, request_memory_mb=100, source_free_memory_mb=0, baseline_s=60.0,
                     running=[]) is None
    assert plan_wait(request_load_s=1.0, request_memory_mb=100, source_free_memory_mb=0, baseline_s=10.0,
                     running=[_run("a", 5.0)], min_gain_s=4.0) is None
    with pytest.raises(ConfigError):
        plan_wait(request_load_s=-1.0, request_memory_mb=1, source_free_memory_mb=0, baseline_s=1.0, running=[])


def test_a_run_with_no_destination_can_still_be_waited_for() -> None:
    running = [_run("only", 1.0)]
    assert plan_migration(request_load_s=1.0, request_memory_mb=100, source_free_memory_mb=0, baseline_s=60.0,
                          running=running, cost=MigrationCost(0.001, 0.1)) is None
    assert plan_wait(request_load_s=1.0, request_memory_mb=100, source_free_memory_mb=0, baseline_s=60.0,
                     running=running) is not None
