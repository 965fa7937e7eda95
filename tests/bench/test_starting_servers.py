"""Instances still starting as future servers of their model's queue (``faas_llm.placement.starting_free``).

A start covers one queued request; once loaded it serves the rest of the queue like a busy instance. Without
counting it, every queued request of a burst looks uncovered by anything but the busy instances, and the policy
starts one more load per request, filling slots (and registry/SSD queues) that other models need.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from bench.sim.costs import GB, ClusterSpec, GpuModel, ModelSpec
from bench.sim.engine import Simulator
from bench.sim.workload import Request, Workload
from faas_llm.placement import (
    Decision,
    LocalityPolicy,
    NodeView,
    PlacementRequest,
    RunTimeDistribution,
    starting_free,
    starting_load_left,
    views_from_reports,
    with_start_under_way,
)
from faas_llm.types import CacheInventory, ContainerInfo, ContainerState, LoadTier, NodeReport, TierInventory

REQ = PlacementRequest(namespace="guest", action="chat", model="tiny", size_bytes=10 * GB)


def test_starting_free_is_the_load_left_plus_one_run() -> None:
    assert starting_free(4.0, 1.5, 0.5) == (5.5, 0.5)
    assert starting_free(-1.0, 1.5) == (1.5, 0.0)  # a load past its estimate: free one run from now


def test_the_load_left_of_a_start_is_the_queue_or_its_own_load() -> None:
    view = NodeView(node="a", free_slots=1, in_ssd=True, bw_ssd=2 * GB, bw_registry=0.5 * GB, boot_s=1.0)
    assert starting_load_left(REQ, view) == pytest.approx(1.0 + 5.0)  # boot + its own SSD read
    queued = replace(view, queue_bytes=10 * GB)  # 20 s of pending loads at registry bandwidth, itself included
    assert starting_load_left(REQ, queued) == pytest.approx(20.0)


def _container(cid: str, state: ContainerState, action: str = "chat", active: int = 0) -> ContainerInfo:
    return ContainerInfo(id=cid, state=state, namespace="guest", action=action, model="tiny", active=active)


def test_views_list_the_actions_starting_containers_among_the_busy_ones() -> None:
    reports = [NodeReport(node="n1", max_containers=4, free_memory_mb=8000, containers=[
        _container("1", ContainerState.BUSY, active=1),
        _container("2", ContainerState.STARTING),
        _container("3", ContainerState.STARTING, action="other"),
    ])]
    inventories = {"n1": CacheInventory(node="n1", dram=TierInventory(models=["tiny"], read_bandwidth=5 * GB),
                                        registry_bandwidth=GB)}
    (plain,) = views_from_reports(REQ, reports, inventories, expected_run_s=3.0)
    assert plain.warm_busy_free_s == (3.0,)
    assert plain.free_slots == 1
    (view,) = views_from_reports(REQ, reports, inventories, expected_run_s=3.0, starting_as_busy=True)
    # two starts queued on the node (20 GB at 1 GB/s registry bandwidth) >= its own 2 s DRAM load; then one run
    assert view.warm_busy_free_s == (3.0, pytest.approx(20.0 + 3.0))
    assert view.warm_busy_sd_s == ()
    assert view.free_slots == 0  # the pool would answer a second start here with WARMING
    dist = RunTimeDistribution([1.0, 3.0])
    (tail,) = views_from_reports(REQ, reports, inventories, run_times=dist, starting_as_busy=True)
    assert tail.warm_busy_free_s[1] == pytest.approx(20.0 + 2.0) and tail.warm_busy_sd_s[1] == pytest.approx(1.0)


def test_locality_waits_for_a_start_under_way_rather_than_queue_another_load() -> None:
    # the node's network queue holds a start of the action: waiting for it (20 + 3 s) beats a second fetch (40 s)
    view = NodeView(node="a", free_slots=1, bw_registry=0.5 * GB, queue_bytes=10 * GB,
                    warm_busy_free_s=(23.0,))
    assert LocalityPolicy().choose(REQ, [view]) == Decision("a", 23.0, LoadTier.WARM)
    without = LocalityPolicy().choose(REQ, [replace(view, warm_busy_free_s=())])
    assert without is not None and without.tier is LoadTier.REGISTRY


def test_a_start_sent_in_a_scheduling_pass_is_a_server_for_the_next_decisions() -> None:
    # the invoker's pass: start one load (20 s on a, its network queue now busy), then decide the next request
    a = NodeView(node="a", free_slots=2, bw_registry=0.5 * GB)
    b = NodeView(node="b", free_slots=1, bw_registry=0.5 * GB, queue_bytes=20 * GB)  # 40 s queue: 60 s to load
    first = LocalityPolicy().choose(REQ, [a, b])
    assert first is not None and first == Decision("a", 20.0, LoadTier.REGISTRY)
    booked = [replace(a, free_slots=1, queue_bytes=REQ.size_bytes), b]  # what the invoker's book_start does
    assert LocalityPolicy().choose(REQ, booked).tier is LoadTier.REGISTRY  # type: ignore[union-attr]
    views = with_start_under_way(booked, "a", first.startup_s, 3.0)
    assert views[0].warm_busy_free_s == (23.0,) and views[0].warm_busy_sd_s == () and views[1] == b
    assert LocalityPolicy().choose(REQ, views) == Decision("a", 23.0, LoadTier.WARM)  # not a 40 s load on a
    spread = [replace(booked[0], warm_busy_free_s=(5.0,), warm_busy_sd_s=(1.0,)), b]
    got = with_start_under_way(spread, "a", 20.0, 3.0, run_sd=2.0)[0]
    assert got.warm_busy_free_s == (5.0, 23.0) and got.warm_busy_sd_s == (1.0, 2.0)


SMALL, OTHER = ModelSpec("small-7b", 7.0), ModelSpec("other-7b", 7.0)
# 2 nodes x 2 slots, nothing cached: a 7B (14 GB) comes from the registry in 11.2 s, one fetch at a time per node
TWO = ClusterSpec(nodes=2, slots_per_node=2, ssd_replicas=0, keep_alive_s=1000.0)


def _burst(starting_as_servers: bool) -> tuple[Simulator, list[float]]:
    reqs = [Request(i, 0.0, 0, 100, 10, 1.0) for i in range(20)] + [Request(20, 0.5, 1, 100, 10, 1.0)]
    wl = Workload((SMALL, OTHER), tuple(reqs), (0, 1))
    sim = Simulator(wl, LocalityPolicy(), TWO, GpuModel(), seed=0, starting_as_servers=starting_as_servers)
    result = sim.run()
    assert result.unserved == 0
    return sim, [s.latency_s for s in sorted(result.served, key=lambda s: s.request)]


def test_a_burst_waits_for_the_starts_under_way_and_leaves_slots_to_other_models() -> None:
    load = SMALL.size_bytes / TWO.bw_registry  # 11.2 s
    sim, latencies = _burst(starting_as_servers=True)
    # two starts (one per node's network queue); the third request would wait 2 x 11.2 s for a fetch, the
    # starts under way serve it sooner: the 20 requests are served by 2 instances from 11.2 s, 1 s each
    assert next(sim._ids) == 3  # instances ever started: 2 of the burst's model, 1 of the other
    assert sum(latencies[:20]) / 20 == pytest.approx(load + 4.5)
    # the other model gets a free slot at once (its fetch queues behind the first one on its node)
    assert latencies[20] == pytest.approx(2 * load - 0.5)

    old, old_latencies = _burst(starting_as_servers=False)
    # one start per queued request until the 4 slots are full; the 2 late ones serve nothing
    assert sum(old_latencies[:20]) / 20 == pytest.approx(load + 4.5)
    # the other model waits for a slot (an instance idle at 20.2 s), then for the network queue
    assert old_latencies[20] > latencies[20] + 10.0
    assert next(old._ids) == 5


def test_with_the_pools_warming_a_node_starting_the_model_offers_no_second_start() -> None:
    wl = Workload((SMALL, OTHER), (Request(0, 0.0, 0, 100, 10, 1.0),), (0, 1))
    for warming, servers, free in ((True, True, 0), (True, False, 1), (False, True, 1)):
        sim = Simulator(wl, LocalityPolicy(), TWO, GpuModel(), seed=0, warming=warming,
                        starting_as_servers=servers)
        assert sim.start_load(0, 0) is not None
        views = sim.views(0)
        assert views[0].free_slots == free and views[1].free_slots == 2
        assert sim.views(1)[0].free_slots == 1  # another model may still start there
        assert len(views[0].warm_busy_free_s) == (1 if servers else 0)
