"""The simulator's model of faas-llm's own invoker and cache agent (``bench/sim_validate.py``): the cache agent's
single-flight loads and its full-DRAM fallback (``ClusterSpec.agent_loads``), and the scheduler's tick."""

from __future__ import annotations

from dataclasses import replace

import pytest

from bench.sim.costs import GB, ClusterSpec, GpuModel, ModelSpec
from bench.sim.engine import Simulator
from bench.sim.workload import Request, Workload
from faas_llm.placement import make_policy
from faas_llm.types import LoadTier

GPU = GpuModel()
A, B = ModelSpec("a-7b", 7.0), ModelSpec("b-7b", 7.0)
BASE = ClusterSpec(nodes=1, slots_per_node=2, keep_alive_s=10.0, ssd_replicas=0)


def workload(models: list[ModelSpec], reqs: list[tuple[float, int, float]]) -> Workload:
    return Workload(tuple(models), tuple(Request(i, t, m, 100, 10, run) for i, (t, m, run) in enumerate(reqs)),
                    tuple(range(len(models))))


def served(wl: Workload, cluster: ClusterSpec, policy: str = "serverlessllm",
           tick_s: float | None = None) -> list[tuple[LoadTier, float]]:
    result = Simulator(wl, make_policy(policy), cluster, GPU, seed=0, tick_s=tick_s).run()
    return [(s.tier, s.latency_s) for s in sorted(result.served, key=lambda s: s.request)]


def test_concurrent_starts_of_one_model_share_one_fetch() -> None:
    wl = workload([A], [(0.0, 0, 30.0), (0.0, 0, 30.0)])
    fetch = A.size_bytes / BASE.bw_registry
    # charged separately, the second fetch queues behind the first
    separate = served(wl, BASE)
    assert separate == [(LoadTier.REGISTRY, pytest.approx(fetch)), (LoadTier.REGISTRY, pytest.approx(2 * fetch))]
    # the cache agent's single flight: one fetch, both starts get it
    shared = served(wl, replace(BASE, agent_loads=True, start_overhead_s=1.0))
    assert shared == [(LoadTier.REGISTRY, pytest.approx(1.0 + fetch))] * 2


def test_a_dram_tier_full_of_leases_falls_back_to_a_local_load() -> None:
    cluster = replace(BASE, agent_loads=True, dram_lease_while_live=True, dram_cache_gb=A.size_bytes / GB)
    wl = workload([A, B], [(0.0, 0, 100.0), (1.0, 1, 1.0)])
    first, second = served(wl, cluster)
    assert first == (LoadTier.REGISTRY, pytest.approx(A.size_bytes / BASE.bw_registry))
    # A is held (loading, then leased by its live instance): B cannot have a DRAM extent; fetched to SSD (behind
    # A's fetch), then read by the runtime itself
    fetch = A.size_bytes / BASE.bw_registry
    assert second == (LoadTier.LOCAL, pytest.approx(2 * fetch + B.size_bytes / BASE.bw_ssd - 1.0))
    # with room for both, B goes through DRAM as usual
    roomy = served(wl, replace(cluster, dram_cache_gb=2 * A.size_bytes / GB))
    assert roomy[1] == (LoadTier.REGISTRY, pytest.approx(2 * fetch - 1.0))


def test_cold_start_at_once_scale_out_on_the_tick() -> None:
    cluster = replace(BASE, ssd_replicas=1)
    load_ssd, load_dram = A.size_bytes / BASE.bw_ssd, A.size_bytes / BASE.bw_dram
    arrive = load_ssd + 0.3  # the first instance is busy (10 s run): a second one is needed
    wl = workload([A], [(0.0, 0, 10.0), (arrive, 0, 1.0)])
    now = served(wl, cluster)
    assert now == [(LoadTier.SSD, pytest.approx(load_ssd)), (LoadTier.DRAM, pytest.approx(load_dram))]
    ticked = served(wl, cluster, tick_s=1.0)
    # no instance: the cold-start watch places it at once; with one (busy): the next tick places the second
    next_tick = (int(arrive) + 1) * 1.0
    assert ticked == [(LoadTier.SSD, pytest.approx(load_ssd)),
                      (LoadTier.DRAM, pytest.approx(next_tick - arrive + load_dram))]


def test_a_second_start_of_a_model_already_starting_starts_nothing() -> None:
    # two requests at once, two slots: without WARMING two instances load; with it one, serving both in turn
    wl = workload([A], [(0.0, 0, 10.0), (0.0, 0, 10.0)])
    cluster = replace(BASE, ssd_replicas=1)
    load = A.size_bytes / BASE.bw_ssd
    both = Simulator(wl, make_policy("serverlessllm"), cluster, GPU, seed=0).run()
    one = Simulator(wl, make_policy("serverlessllm"), cluster, GPU, seed=0, warming=True).run()
    assert [s.tier for s in both.served] == [LoadTier.SSD, LoadTier.SSD]
    assert [(s.tier, s.latency_s) for s in one.served] == [(LoadTier.SSD, pytest.approx(load)),
                                                           (LoadTier.WARM, pytest.approx(load + 10.0))]


def test_an_evicted_instance_holds_its_dram_lease_until_the_ttl() -> None:
    # DRAM for one checkpoint, one slot: A runs, goes idle, B's start evicts it (killed: A's lease stays 30 s),
    # so B cannot reserve DRAM (local); released at once, A's checkpoint is evicted and B goes through DRAM
    cluster = replace(BASE, slots_per_node=1, agent_loads=True, dram_lease_while_live=True,
                      dram_cache_gb=A.size_bytes / GB, keep_alive_s=100.0)
    wl = workload([A, B], [(0.0, 0, 1.0), (20.0, 1, 1.0)])
    assert served(wl, cluster)[1][0] is LoadTier.REGISTRY
    assert served(wl, replace(cluster, evicted_lease_hold_s=30.0))[1][0] is LoadTier.LOCAL
