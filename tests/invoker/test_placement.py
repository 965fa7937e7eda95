"""Unit tests of the pure placement policies (no Redis, no processes)."""

from __future__ import annotations

import pytest

from faas_llm.errors import ConfigError
from faas_llm.placement import (
    DEFAULT_BANDWIDTH,
    POLICIES,
    Decision,
    NodeView,
    PlacementRequest,
    RunTimeDistribution,
    load_estimate,
    make_policy,
    stable_hash,
    views_from_reports,
)
from faas_llm.types import CacheInventory, ContainerInfo, ContainerState, LoadTier, NodeReport, TierInventory

GB = 1_000_000_000
REQ = PlacementRequest(namespace="guest", action="chat", model="tiny", size_bytes=10 * GB)


def node(name: str, **kw: object) -> NodeView:
    base: dict[str, object] = {"free_slots": 2, "bw_dram": 20 * GB, "bw_ssd": 2 * GB, "bw_registry": 0.5 * GB}
    base.update(kw)
    return NodeView(node=name, **base)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_every_policy_returns_none_on_an_empty_cluster(name: str) -> None:
    assert make_policy(name).choose(REQ, []) is None


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_every_policy_returns_none_when_no_node_can_start(name: str) -> None:
    nodes = [node("a", free_slots=0, in_dram=True), node("b", free_slots=3, free_memory_mb=10)]
    req = PlacementRequest("guest", "chat", "tiny", GB, memory_mb=1024)
    assert make_policy(name).choose(req, nodes) is None


def test_unknown_policy_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown placement policy 'nope'"):
        make_policy("nope")


def test_load_estimate_uses_the_fastest_tier_holding_the_checkpoint_plus_the_queue() -> None:
    assert load_estimate(REQ, node("a", in_dram=True, in_ssd=True)) == (0.5, LoadTier.DRAM)
    assert load_estimate(REQ, node("a", in_ssd=True, queue_s=3.0)) == (8.0, LoadTier.SSD)
    assert load_estimate(REQ, node("a")) == (20.0, LoadTier.REGISTRY)
    # queued bytes drain at registry bandwidth
    assert load_estimate(REQ, node("a", in_dram=True, queue_bytes=GB)) == (2.5, LoadTier.DRAM)


def test_unmeasured_bandwidth_falls_back_to_defaults() -> None:
    bare = NodeView(node="a", free_slots=1)
    seconds, tier = load_estimate(REQ, bare)
    assert tier is LoadTier.REGISTRY
    assert seconds == pytest.approx(REQ.size_bytes / DEFAULT_BANDWIDTH[LoadTier.REGISTRY])


def test_locality_prefers_dram_over_ssd_over_nothing() -> None:
    nodes = [node("c-none"), node("b-ssd", in_ssd=True), node("a-dram", in_dram=True)]
    assert make_policy("locality").choose(REQ, nodes) == Decision("a-dram", 0.5, LoadTier.DRAM)
    assert make_policy("locality").choose(REQ, nodes[:2]) == Decision("b-ssd", 5.0, LoadTier.SSD)
    assert make_policy("locality").choose(REQ, nodes[:1]) == Decision("c-none", 20.0, LoadTier.REGISTRY)


def test_locality_weighs_the_load_queue_against_a_faster_tier() -> None:
    # DRAM copy behind a 10 s queue loses to an SSD copy with no queue
    nodes = [node("a", in_dram=True, queue_s=10.0), node("b", in_ssd=True)]
    assert make_policy("locality").choose(REQ, nodes) == Decision("b", 5.0, LoadTier.SSD)


def test_locality_waits_for_a_busy_warm_instance_when_that_is_sooner() -> None:
    nodes = [node("a", free_slots=0, warm_busy_free_s=(4.0, 2.0)), node("b", in_ssd=True)]
    assert make_policy("locality").choose(REQ, nodes) == Decision("a", 2.0, LoadTier.WARM)
    # ...and starts elsewhere when the warm instance is busy longer than a load takes
    nodes = [node("a", free_slots=0, warm_busy_free_s=(9.0,)), node("b", in_ssd=True)]
    assert make_policy("locality").choose(REQ, nodes) == Decision("b", 5.0, LoadTier.SSD)
    assert make_policy("locality").choose(REQ, [node("a", warm_idle=1)]).waits_for_warm  # type: ignore[union-attr]


def test_locality_without_warm_waits_only_starts() -> None:
    from faas_llm.placement import LocalityPolicy

    nodes = [node("a", free_slots=0, warm_busy_free_s=(1.0,)), node("b", in_ssd=True)]
    assert LocalityPolicy(use_warm=False).choose(REQ, nodes) == Decision("b", 5.0, LoadTier.SSD)


def test_locality_ties_break_by_tier_then_node_id_whatever_the_input_order() -> None:
    a, b = node("a", in_ssd=True), node("b", in_ssd=True)
    assert make_policy("locality").choose(REQ, [b, a]) == Decision("a", 5.0, LoadTier.SSD)
    assert make_policy("locality").choose(REQ, [a, b]) == Decision("a", 5.0, LoadTier.SSD)
    # equal seconds and no margin: a warm wait beats a DRAM load (no load work at all)
    from faas_llm.placement import LocalityPolicy

    warm = node("z", free_slots=0, warm_busy_free_s=(0.5,))
    dram = node("a", in_dram=True)
    assert LocalityPolicy().choose(REQ, [dram, warm]) == Decision("z", 0.5, LoadTier.WARM)


def test_locality_skips_draining_and_memory_starved_nodes() -> None:
    req = PlacementRequest("guest", "chat", "tiny", 10 * GB, memory_mb=4096)
    nodes = [node("a", in_dram=True, draining=True), node("b", in_dram=True, free_memory_mb=1024), node("c")]
    assert make_policy("locality").choose(req, nodes) == Decision("c", 20.0, LoadTier.REGISTRY)


def test_serverlessllm_only_considers_local_copies_and_ignores_the_queue_for_dram() -> None:
    nodes = [node("a", in_dram=True, queue_s=100.0), node("b", in_ssd=True), node("c")]
    assert make_policy("serverlessllm").choose(REQ, nodes) == Decision("a", 0.5, LoadTier.DRAM)
    nodes = [node("b", in_ssd=True, queue_s=1.0), node("c")]
    assert make_policy("serverlessllm").choose(REQ, nodes) == Decision("b", 6.0, LoadTier.SSD)
    # warm instances are not modelled
    nodes = [node("w", free_slots=0, warm_idle=1), node("b", in_ssd=True)]
    assert make_policy("serverlessllm").choose(REQ, nodes) == Decision("b", 5.0, LoadTier.SSD)


def test_serverlessllm_without_local_copies_falls_back_or_refuses() -> None:
    nodes = [node("b", queue_s=2.0), node("a", queue_s=1.0)]
    assert make_policy("serverlessllm").choose(REQ, nodes) == Decision("a", 21.0, LoadTier.REGISTRY)
    assert make_policy("serverlessllm-strict").choose(REQ, nodes) is None


def test_random_is_seeded_and_only_picks_startable_nodes() -> None:
    nodes = [node(f"n{i}") for i in range(5)] + [node("full", free_slots=0)]
    picks = [make_policy("random", seed=7).choose(REQ, nodes) for _ in range(3)]
    assert picks[0] == picks[1] == picks[2]
    policy = make_policy("random", seed=1)
    chosen = {policy.choose(REQ, nodes).node for _ in range(200)}  # type: ignore[union-attr]
    assert chosen == {f"n{i}" for i in range(5)}


def test_round_robin_cycles_through_startable_nodes_by_id() -> None:
    nodes = [node("c"), node("a"), node("b", free_slots=0), node("d")]
    policy = make_policy("round-robin")
    assert [policy.choose(REQ, nodes).node for _ in range(4)] == ["a", "c", "d", "a"]  # type: ignore[union-attr]


def test_hash_home_is_stable_and_steps_to_the_next_node_when_full() -> None:
    nodes = [node(n) for n in ("a", "b", "c")]
    home = ["a", "b", "c"][stable_hash(REQ.key) % 3]
    assert make_policy("hash").choose(REQ, list(reversed(nodes))).node == home  # type: ignore[union-attr]
    full = [node(n.node, free_slots=0) if n.node == home else n for n in nodes]
    nxt = ["a", "b", "c"][(stable_hash(REQ.key) + 1) % 3]
    assert make_policy("hash").choose(REQ, full).node == nxt  # type: ignore[union-attr]
    assert stable_hash("x/y") == stable_hash("x/y") and stable_hash("x/y") != stable_hash("x/z")


def test_least_loaded_prefers_free_slots_then_queue_then_id() -> None:
    nodes = [node("a", free_slots=1), node("b", free_slots=3, queue_s=2.0), node("c", free_slots=3)]
    assert make_policy("least-loaded").choose(REQ, nodes).node == "c"  # type: ignore[union-attr]
    nodes = [node("b", free_slots=3), node("a", free_slots=3)]
    assert make_policy("least-loaded").choose(REQ, nodes).node == "a"  # type: ignore[union-attr]


def test_baselines_report_the_cost_of_their_choice() -> None:
    nodes = [node("a", in_dram=True)]
    for name in ("random", "round-robin", "hash", "least-loaded"):
        assert make_policy(name).choose(REQ, nodes) == Decision("a", 0.5, LoadTier.DRAM)


def _container(cid: str, state: ContainerState, action: str | None = "chat", active: int = 0) -> ContainerInfo:
    return ContainerInfo(id=cid, state=state, namespace="guest" if action else None, action=action,
                         model="tiny", active=active, concurrency=1)


def test_views_from_reports_combine_node_reports_and_cache_inventories() -> None:
    reports = [
        NodeReport(node="n1", max_containers=3, free_memory_mb=8000, containers=[
            _container("1", ContainerState.BUSY, active=1),
            _container("2", ContainerState.IDLE, action="other"),
            _container("3", ContainerState.STARTING, action="other"),
        ]),
        NodeReport(node="n2", max_containers=2, free_memory_mb=8000),
    ]
    inventories = {"n1": CacheInventory(
        node="n1", dram=TierInventory(models=["tiny"], read_bandwidth=5 * GB),
        ssd=TierInventory(models=["tiny"], read_bandwidth=GB), registry_bandwidth=0.1 * GB, pending_bytes=GB,
    )}
    v1, v2 = views_from_reports(REQ, reports, inventories, expected_run_s=3.0)
    assert v1.node == "n1" and v1.free_slots == 1 and v1.warm_idle == 0 and v1.warm_busy_free_s == (3.0,)
    assert v1.in_dram and v1.in_ssd and v1.bw_dram == 5 * GB and v1.queue_bytes == REQ.size_bytes + GB
    assert v2.node == "n2" and v2.free_slots == 2 and not v2.in_dram and not v2.in_ssd  # registry only
    decision = make_policy("locality").choose(REQ, [v1, v2])
    assert decision == Decision("n1", 3.0, LoadTier.WARM)


def test_a_prewarmed_runtime_saves_the_boot_time() -> None:
    cold = node("a", in_ssd=True, boot_s=6.0)
    warm_runtime = node("b", boot_s=6.0, prewarmed=1)
    assert load_estimate(REQ, cold) == (11.0, LoadTier.SSD)
    assert load_estimate(REQ, warm_runtime) == (20.0, LoadTier.REGISTRY)
    small = PlacementRequest("guest", "chat", "tiny", GB)
    # 0.5 s SSD + 6 s boot on a loses to 2 s registry on b, whose runtime is already up
    assert make_policy("locality").choose(small, [cold, warm_runtime]) == Decision("b", 2.0, LoadTier.REGISTRY)


def test_views_count_prewarmed_runtimes_and_the_boot_time() -> None:
    reports = [NodeReport(node="n1", max_containers=2, free_memory_mb=8000, containers=[
        ContainerInfo(id="p", state=ContainerState.PREWARMED)])]
    (view,) = views_from_reports(REQ, reports, {}, boot_s=4.0)
    assert view.prewarmed == 1 and view.boot_s == 4.0 and view.start_overhead() == 0.0
    assert view.free_slots == 2


# --- tail-aware remaining time and the warm-wait margin ----------------------------------------------


def test_expected_remaining_is_the_conditional_mean_past_the_elapsed_time() -> None:
    from faas_llm.placement import RunTimeDistribution

    dist = RunTimeDistribution([1.0, 1.0, 1.0, 1.0, 100.0])
    assert dist.expected_remaining(0.0) == pytest.approx(dist.mean)
    # past the typical run, only the long one is left: ~98 s to go, not "mean - elapsed" (<= 20.8 - 2)
    assert dist.expected_remaining(2.0) == pytest.approx(98.0)
    assert dist.expected_remaining(0.5) == pytest.approx(104.0 / 5 - 0.5)
    # beyond every sample: the mean
    assert dist.expected_remaining(500.0) == pytest.approx(dist.mean)


def test_a_run_time_distribution_needs_samples() -> None:
    from faas_llm.placement import RunTimeDistribution

    with pytest.raises(ConfigError):
        RunTimeDistribution([])


def test_locality_waits_for_a_busy_instance_only_when_clearly_sooner_than_a_load() -> None:
    from faas_llm.placement import LocalityPolicy

    load = node("b", in_dram=True)  # 0.5 s from DRAM
    sure = node("a", free_slots=0, warm_busy_free_s=(0.3,), warm_busy_sd_s=(0.1,))
    unsure = node("a", free_slots=0, warm_busy_free_s=(0.3,), warm_busy_sd_s=(0.4,))
    assert LocalityPolicy().choose(REQ, [sure, load]) == Decision("a", 0.3, LoadTier.WARM)  # 0.3 + 0.1 <= 0.5
    assert LocalityPolicy().choose(REQ, [unsure, load]) == Decision("b", 0.5, LoadTier.DRAM)  # 0.3 + 0.4 > 0.5
    assert LocalityPolicy(warm_z=0.0).choose(REQ, [unsure, load]).tier is LoadTier.WARM  # type: ignore[union-attr]
    # the soonest by the upper figure: a sure 0.4 beats an unsure 0.3
    two = node("a", free_slots=0, warm_busy_free_s=(0.3, 0.4), warm_busy_sd_s=(0.4, 0.0))
    assert LocalityPolicy().choose(REQ, [two, load]) == Decision("a", 0.4, LoadTier.WARM)
    # no spread known (the invoker's views today): the plain comparison
    assert LocalityPolicy().choose(REQ, [node("a", free_slots=0, warm_busy_free_s=(0.5,)), load]).tier is LoadTier.WARM  # type: ignore[union-attr]
    # no room anywhere: waiting is the only option
    assert LocalityPolicy().choose(REQ, [node("a", free_slots=0, warm_busy_free_s=(9.0,))]) == Decision(
        "a", 9.0, LoadTier.WARM)


def test_remaining_variance_is_the_conditional_spread() -> None:
    from faas_llm.placement import RunTimeDistribution

    dist = RunTimeDistribution([1.0, 3.0])
    assert dist.variance == pytest.approx(1.0)
    assert dist.remaining_variance(0.0) == pytest.approx(1.0)
    assert dist.remaining_variance(2.0) == pytest.approx(0.0)  # only the 3 s run is left
    assert dist.remaining_variance(10.0) == pytest.approx(1.0)


def test_busy_free_is_the_soonest_runs_tail_aware_remaining_plus_queued_runs() -> None:
    dist = RunTimeDistribution([1.0, 1.0, 1.0, 9.0])  # mean 3, variance 12
    # no run known: one just started (mean, unconditional spread)
    assert dist.busy_free(()) == pytest.approx((3.0, 12.0 ** 0.5))
    # a run at 2 s is one of the long ones: 7 s left, no spread left in this sample
    assert dist.busy_free([2.0]) == pytest.approx((7.0, 0.0))
    # two runs on one instance (concurrency 2): the soonest frees the slot
    assert dist.busy_free([2.0, 0.5]) == pytest.approx((2.5, 12.0 ** 0.5))
    # each queued run adds the mean and the variance
    assert dist.busy_free([2.0], queued=2) == pytest.approx((13.0, 24.0 ** 0.5))
    assert RunTimeDistribution.of([1.0, 2.0], min_samples=3) is None
    assert RunTimeDistribution.of([], min_samples=1) is None
    got = RunTimeDistribution.of([1.0, 2.0, 3.0], min_samples=3)
    assert got is not None and got.mean == 2.0


def test_views_carry_the_tail_aware_estimate_and_spread_with_a_run_time_history() -> None:
    reports = [NodeReport(node="n1", max_containers=3, free_memory_mb=8000, containers=[
        _container("long", ContainerState.BUSY, active=1), _container("fresh", ContainerState.BUSY, active=1),
        _container("unknown", ContainerState.BUSY, active=1)])]
    dist = RunTimeDistribution([1.0, 1.0, 1.0, 9.0])
    (v,) = views_from_reports(REQ, reports, {}, expected_run_s=3.0, run_times=dist,
                              busy_elapsed_s={"long": [2.0], "fresh": [0.5]})
    assert v.warm_busy_free_s == pytest.approx((7.0, dist.expected_remaining(0.5), 3.0))
    assert v.warm_busy_sd_s == pytest.approx((0.0, dist.remaining_variance(0.5) ** 0.5, 12.0 ** 0.5))
    # without a history: the plain estimate, no spread (as before)
    (plain,) = views_from_reports(REQ, reports, {}, expected_run_s=3.0)
    assert plain.warm_busy_free_s == (3.0, 3.0, 3.0) and plain.warm_busy_sd_s == ()
