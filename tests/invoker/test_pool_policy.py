"""Unit tests of the pure container-pool policy and the autoscaler (no processes)."""

from __future__ import annotations

import pytest

from faas_llm.autoscale import IdleInstance, desired_instances, instances_to_start, scale_in, target_per_instance
from faas_llm.errors import InternalError
from faas_llm.pool_policy import (
    TRANSITIONS,
    ContainerView,
    Outcome,
    PoolCapacity,
    PoolChoice,
    check_transition,
    choose,
    expired,
    has_room,
    lru_victims,
    prewarm_deficit,
    state_for,
)
from faas_llm.types import ContainerState, Scaling

S = ContainerState
CAP = PoolCapacity(max_containers=3, memory_mb=3000)


def c(cid: str, state: ContainerState, action: str | None = "chat", *, ns: str = "guest", mem: int = 1000,
      active: int = 0, conc: int = 1, used: float = 0.0) -> ContainerView:
    return ContainerView(id=cid, state=state, namespace=ns if action else None, action=action, memory_mb=mem,
                         active=active, concurrency=conc, last_used=used)


def test_states_are_a_closed_set_with_removing_final() -> None:
    assert set(TRANSITIONS) == set(ContainerState)
    assert TRANSITIONS[S.REMOVING] == frozenset()
    assert check_transition(S.PREWARMED, S.STARTING) is S.STARTING
    with pytest.raises(InternalError, match="removing -> idle"):
        check_transition(S.REMOVING, S.IDLE)
    with pytest.raises(InternalError):
        check_transition(S.IDLE, S.PREWARMED)
    assert state_for(0) is S.IDLE and state_for(2) is S.BUSY


def test_empty_pool_starts_cold() -> None:
    assert choose([], "guest", "chat", 1000, CAP) == PoolChoice(Outcome.COLD)


def test_warm_idle_same_action_and_namespace_wins() -> None:
    pool = [c("p", S.PREWARMED, None, mem=0), c("other-ns", S.IDLE, ns="alice"), c("mine", S.IDLE)]
    assert choose(pool, "guest", "chat", 1000, CAP) == PoolChoice(Outcome.WARM, "mine")


def test_concurrency_limit_per_container() -> None:
    full = c("full", S.BUSY, active=1, conc=1)
    assert choose([full], "guest", "chat", 1000, CAP).outcome is Outcome.COLD
    room = c("room", S.BUSY, active=1, conc=2)
    assert choose([full, room], "guest", "chat", 1000, CAP) == PoolChoice(Outcome.WARM, "room")
    assert room.free_runs == 1 and full.free_runs == 0 and c("s", S.STARTING).free_runs == 0


def test_warm_choice_packs_the_busiest_then_most_recent_container() -> None:
    pool = [c("a", S.IDLE, conc=4, used=5.0), c("b", S.BUSY, active=2, conc=4), c("c", S.IDLE, conc=4, used=9.0)]
    assert choose(pool, "guest", "chat", 1000, CAP).container == "b"
    assert choose(pool[::2], "guest", "chat", 1000, CAP).container == "c"


def test_starting_container_of_the_action_is_used_before_a_prewarm() -> None:
    pool = [c("p", S.PREWARMED, None, mem=0), c("s", S.STARTING)]
    assert choose(pool, "guest", "chat", 1000, CAP) == PoolChoice(Outcome.WARMING, "s")
    # a starting container already promised its concurrency is not chosen again
    busy_start = c("s", S.STARTING, active=1)
    assert choose([c("p", S.PREWARMED, None, mem=0), busy_start], "guest", "chat", 1000, CAP) == PoolChoice(
        Outcome.PREWARMED, "p")


def test_prewarmed_before_cold_and_only_if_the_memory_fits() -> None:
    pool = [c("p", S.PREWARMED, None, mem=0), c("x", S.BUSY, "other", active=1, mem=2500)]
    assert choose(pool, "guest", "chat", 400, CAP) == PoolChoice(Outcome.PREWARMED, "p")
    assert choose(pool, "guest", "chat", 600, CAP).outcome is Outcome.NO_CAPACITY


def test_evicts_lru_idle_containers_of_other_actions_when_full() -> None:
    pool = [c("old", S.IDLE, "a", used=1.0), c("new", S.IDLE, "b", used=5.0), c("busy", S.BUSY, "c", active=1)]
    assert choose(pool, "guest", "chat", 1000, CAP) == PoolChoice(Outcome.EVICT, evict=("old",))
    # memory: needs two victims
    assert lru_victims(pool, 2000, CAP) == ("old", "new")
    # nothing idle -> no capacity
    busy = [c(str(i), S.BUSY, "x", active=1) for i in range(3)]
    assert choose(busy, "guest", "chat", 1000, CAP) == PoolChoice(Outcome.NO_CAPACITY)


def test_eviction_never_takes_a_container_that_keeps_its_action_at_min_instances() -> None:
    # "pinned" (min 1) is the least recently used but its only container: "b" goes instead
    pool = [c("pin", S.IDLE, "pinned", used=1.0), c("b1", S.IDLE, "b", used=5.0), c("x", S.BUSY, "x", active=1)]
    mins = {("guest", "pinned"): 1}
    assert lru_victims(pool, 1000, CAP) == ("pin",)
    assert lru_victims(pool, 1000, CAP, mins) == ("b1",)
    assert choose(pool, "guest", "chat", 1000, CAP, min_instances=mins) == PoolChoice(Outcome.EVICT, evict=("b1",))
    # two containers of a min-1 action: one of them may go (the older), never both
    two = [c("p1", S.IDLE, "pinned", used=1.0), c("p2", S.IDLE, "pinned", used=2.0), c("x", S.BUSY, "x", active=1)]
    assert lru_victims(two, 1000, CAP, mins) == ("p1",)
    assert lru_victims(two, 2000, CAP, mins) == ()
    # a busy container of the action counts toward its minimum: the idle one may go
    mixed = [c("p1", S.IDLE, "pinned", used=1.0), c("p2", S.BUSY, "pinned", active=1), c("x", S.BUSY, "x", active=1)]
    assert lru_victims(mixed, 1000, CAP, mins) == ("p1",)
    # only protected containers idle: no capacity rather than churn
    only = [c("pin", S.IDLE, "pinned"), c("x", S.BUSY, "x", active=1), c("y", S.BUSY, "y", active=1)]
    assert choose(only, "guest", "chat", 1000, CAP, min_instances=mins) == PoolChoice(Outcome.NO_CAPACITY)


def test_removing_containers_hold_no_capacity() -> None:
    pool = [c(str(i), S.REMOVING, "x") for i in range(3)]
    assert has_room(pool, 3000, CAP)
    assert choose(pool, "guest", "chat", 3000, CAP).outcome is Outcome.COLD


def test_prewarm_deficit_counts_booting_prewarms_and_respects_capacity() -> None:
    assert prewarm_deficit([], 2, CAP) == 2
    assert prewarm_deficit([c("p", S.PREWARMED, None, mem=0), c("b", S.STARTING, None, mem=0)], 2, CAP) == 0
    assert prewarm_deficit([c("x", S.BUSY, "x", active=1), c("y", S.IDLE, "y")], 5, CAP) == 1
    assert prewarm_deficit([c("x", S.BUSY, "x", mem=2900)], 2, CAP, prewarm_memory_mb=100) == 1
    assert prewarm_deficit([], 0, CAP) == 0


def test_keep_alive_expiry_oldest_first_only_idle_of_known_actions() -> None:
    pool = [
        c("a", S.IDLE, used=10.0), c("b", S.IDLE, used=2.0), c("busy", S.BUSY, active=1, used=0.0),
        c("p", S.PREWARMED, None, used=0.0), c("u", S.IDLE, "unknown", used=0.0),
    ]
    assert expired(pool, now=20.0, keep_alive={("guest", "chat"): 10.0}) == ["b", "a"]
    assert expired(pool, now=15.0, keep_alive={("guest", "chat"): 10.0}) == ["b"]
    assert expired(pool, now=15.0, keep_alive={}) == []


# --- autoscaling --------------------------------------------------------------------------


def test_the_containers_concurrency_is_the_target_unless_a_lower_one_is_set() -> None:
    """Knative: with no soft target the hard limit (containerConcurrency = limits.concurrency, the runs one
    container batches) is the target; a soft target above 1 lowers it, never raises it."""
    default = Scaling(min_instances=0, max_instances=10)
    assert target_per_instance(default, 16) == 16 and target_per_instance(default, 1) == 1
    assert target_per_instance(Scaling(target_concurrency=4), 16) == 4
    assert target_per_instance(Scaling(target_concurrency=40), 16) == 16
    assert desired_instances(default, 16, 0, concurrency=16) == 1  # one warm container takes all 16
    assert desired_instances(default, 16, 1, concurrency=16) == 2  # the 17th run: scale out
    assert instances_to_start(default, 1, 10, 0, concurrency=16) == 0
    assert instances_to_start(default, 1, 16, 5, concurrency=16) == 1
    assert desired_instances(default, 5, 0, concurrency=1) == 5


def test_desired_instances_by_target_concurrency_within_bounds() -> None:
    s = Scaling(min_instances=0, max_instances=3, target_concurrency=2)
    assert desired_instances(s, 0, 0) == 0
    assert desired_instances(s, 1, 0) == 1
    assert desired_instances(s, 2, 1) == 2
    assert desired_instances(s, 4, 100) == 3
    assert desired_instances(Scaling(min_instances=2), 0, 0) == 2


def test_instances_to_start_never_exceeds_max() -> None:
    s = Scaling(max_instances=2)
    assert instances_to_start(s, 0, 0, 10) == 2
    assert instances_to_start(s, 1, 1, 10) == 1
    assert instances_to_start(s, 2, 2, 10) == 0
    assert instances_to_start(s, 5, 0, 10) == 0  # over max (e.g. after max was lowered): start nothing
    assert instances_to_start(Scaling(min_instances=1), 0, 0, 0) == 1


def test_scale_in_after_keep_alive_keeping_min_instances() -> None:
    idle = [IdleInstance("a", 0.0), IdleInstance("b", 5.0), IdleInstance("c", 9.0)]
    assert scale_in(Scaling(keep_alive=5.0), idle, instances=3, now=10.0) == ["a", "b"]
    assert scale_in(Scaling(keep_alive=5.0, min_instances=2), idle, instances=3, now=10.0) == ["a"]
    assert scale_in(Scaling(keep_alive=0.0), idle, instances=3, now=9.0) == ["a", "b", "c"]  # to zero
    assert scale_in(Scaling(keep_alive=100.0), idle, instances=3, now=10.0) == []


# --- keep-alive until the slot is needed ---------------------------------------------------------------


def _idle(cid: str, last_used: float) -> ContainerView:
    return ContainerView(id=cid, state=ContainerState.IDLE, namespace="ns", action=cid, memory_mb=100,
                         last_used=last_used)


def test_keep_alive_removals_is_the_timeout_rule_when_off() -> None:
    from faas_llm.pool_policy import keep_alive_removals

    views = [_idle("a", 0.0), _idle("b", 50.0)]
    assert keep_alive_removals(views, ["a", "b"], 100.0, until_needed=False, max_idle_s=3600) == ["a", "b"]


def test_keep_alive_removals_keeps_idle_containers_until_the_idle_cap() -> None:
    from faas_llm.pool_policy import keep_alive_removals

    views = [_idle("old", 0.0), _idle("recent", 90.0),
             ContainerView(id="busy", state=ContainerState.BUSY, namespace="ns", action="busy", active=1)]
    got = keep_alive_removals(views, ["old", "recent", "busy", "gone"], 100.0, until_needed=True, max_idle_s=60)
    assert got == ["old"]  # past the cap; the recent one stays, a busy or unknown one is never removed
    assert keep_alive_removals(views, ["old"], 100.0, until_needed=True, max_idle_s=3600) == []


def test_a_kept_idle_container_is_evicted_lru_when_a_start_needs_its_slot() -> None:
    from faas_llm.pool_policy import Outcome, PoolCapacity, choose

    views = [_idle("a", 10.0), _idle("b", 5.0)]
    got = choose(views, "ns", "c", 100, PoolCapacity(max_containers=2, memory_mb=1000))
    assert got.outcome is Outcome.EVICT and got.evict == ("b",)
