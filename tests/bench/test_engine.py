"""The event loop on hand-built scenarios whose latencies can be worked out by hand."""

from __future__ import annotations

from dataclasses import replace

import pytest

from bench.sched_sim import ALL_POLICIES, Config, build_workload, run_one
from bench.sim.costs import GB, ClusterSpec, GpuModel, MigrationCostSpec, ModelSpec
from bench.sim.engine import Simulator
from bench.sim.migration import migration_hook
from bench.sim.report import percentile, summarise
from bench.sim.trace import TRACE_DIR
from bench.sim.workload import Request, Workload
from faas_llm.placement import LocalityPolicy, make_policy
from faas_llm.types import LoadTier

GPU = GpuModel()
ONE = ClusterSpec(nodes=1, slots_per_node=1, keep_alive_s=10.0, ssd_replicas=1)
SMALL, BIG = ModelSpec("small-7b", 7.0), ModelSpec("big-34b", 34.0)


def workload(models: list[ModelSpec], reqs: list[tuple[float, int, float]], gen: int = 10) -> Workload:
    """Requests as (arrival, model index, run seconds); ``gen`` tokens each (what schedulers estimate from)."""
    return Workload(tuple(models), tuple(Request(i, t, m, 100, gen, run) for i, (t, m, run) in enumerate(reqs)),
                    tuple(range(len(models))))


def test_cold_then_warm_then_dram_after_keep_alive() -> None:
    wl = workload([SMALL], [(0.0, 0, 1.0), (5.0, 0, 1.0), (100.0, 0, 1.0)])
    result = Simulator(wl, make_policy("locality"), ONE, GPU, seed=0).run()
    got = [(s.tier, s.latency_s) for s in result.served]
    assert got[0] == (LoadTier.SSD, pytest.approx(SMALL.size_bytes / ONE.bw_ssd))  # deploy-time SSD copy
    assert got[1] == (LoadTier.WARM, 0.0)  # within keep-alive
    assert got[2] == (LoadTier.DRAM, pytest.approx(SMALL.size_bytes / ONE.bw_dram))  # the SSD load filled DRAM


def test_registry_when_no_node_has_a_copy() -> None:
    wl = workload([SMALL], [(0.0, 0, 1.0)])
    result = Simulator(wl, make_policy("serverlessllm"), replace(ONE, ssd_replicas=0), GPU, seed=0).run()
    assert result.served[0].tier is LoadTier.REGISTRY
    assert result.served[0].latency_s == pytest.approx(SMALL.size_bytes / ONE.bw_registry)


def test_a_request_waits_for_a_slot_then_loads() -> None:
    # one slot: the second model's request waits for the first run (10 s), then loads from SSD
    wl = workload([SMALL, SMALL.__class__("other-7b", 7.0)], [(0.0, 0, 10.0), (1.0, 1, 1.0)])
    result = Simulator(wl, make_policy("round-robin"), replace(ONE, ssd_replicas=1), GPU, seed=0).run()
    _first, second = result.served
    load = SMALL.size_bytes / ONE.bw_ssd
    assert second.tier is LoadTier.SSD
    assert second.latency_s == pytest.approx(load + 10.0 + load - 1.0)
    assert result.unserved == 0


def test_locality_waits_for_a_busy_warm_instance_when_that_is_sooner() -> None:
    # a 0.5 s run is busy; a new instance would take 3.5 s from SSD: locality waits, the blind policy loads
    cluster = replace(ONE, slots_per_node=2)
    wl = workload([SMALL], [(0.0, 0, 0.5), (SMALL.size_bytes / ONE.bw_ssd + 0.1, 0, 0.5)])
    ours = Simulator(wl, make_policy("locality"), cluster, GPU, seed=0).run().served[1]
    blind = Simulator(wl, make_policy("least-loaded"), cluster, GPU, seed=0).run().served[1]
    assert ours.tier is LoadTier.WARM and ours.latency_s < 0.5
    # the blind one starts a load but the busy instance frees first and serves it (instances pull)
    assert blind.tier is LoadTier.WARM and blind.latency_s == pytest.approx(ours.latency_s)


def test_migration_moves_a_long_run_so_a_local_copy_can_be_used() -> None:
    # node n00 holds BIG in DRAM but its only slot runs SMALL for a long time; n01 has a free slot and SMALL on
    # SSD; BIG elsewhere would come from the registry (54 s). Moving SMALL away is much sooner.
    cluster = ClusterSpec(nodes=2, slots_per_node=1, ssd_replicas=0, keep_alive_s=1000.0)
    # long outputs, so a scheduler expects SMALL's run to go on for a while (mean tokens x decode rate)
    wl = workload([SMALL, BIG], [(0.0, 0, 500.0), (20.0, 1, 1.0)], gen=10_000)

    def run(migrate: bool) -> Simulator:
        sim = Simulator(wl, make_policy("locality"), cluster, GPU, seed=0,
                        migration=migration_hook(MigrationCostSpec()) if migrate else None)
        sim.nodes[0].ssd.insert(SMALL.name, SMALL.size_bytes)
        sim.nodes[0].dram.insert(BIG.name, BIG.size_bytes)
        sim.nodes[1].ssd.insert(SMALL.name, SMALL.size_bytes)
        sim.run()
        return sim

    plain, moved = run(False), run(True)
    assert plain.result.migrations == 0 and moved.result.migrations == 1
    assert plain.result.served[1].tier is LoadTier.REGISTRY
    big = moved.result.served[1]
    assert big.tier is LoadTier.DRAM
    assert big.latency_s < plain.result.served[1].latency_s / 4
    # the moved inference still finished (every instance went idle and expired), nothing left queued
    assert moved.result.unserved == 0 and moved.result.migrations_cancelled == 0 and not moved.instances


def test_every_policy_runs_a_trace_slice_and_the_lower_bound_bounds_them() -> None:
    from bench.sched_sim import lower_bound_row

    cfg = Config(limit=600)
    wl = build_workload("conv", 0.2, cfg, TRACE_DIR)
    means = {}
    for name in ALL_POLICIES:
        if name == "lower-bound":
            continue
        result = run_one(wl, name, cfg)
        row = summarise(result, 60)
        assert row["unserved"] == 0 and row["requests"] == 540
        shares = sum(row[f"{t}_pct"] for t in ("warm", "dram", "ssd", "registry"))
        assert shares == pytest.approx(100.0)
        means[name] = row["mean_s"]
    bound = lower_bound_row(wl, cfg, 60)["mean_s"]
    assert all(bound <= v for v in means.values())
    # same seeds, same workload: a rerun is identical
    assert summarise(run_one(wl, "random", cfg), 60) == summarise(run_one(wl, "random", cfg), 60)


def test_the_lower_bound_holds_in_a_burst_that_saturates_the_gpus() -> None:
    from bench.sched_sim import lower_bound_row

    cfg = Config(limit=3000)
    wl = build_workload("code", 0.3, cfg, TRACE_DIR)
    bound = lower_bound_row(wl, cfg, 300)["mean_s"]
    assert bound > 0
    for name in ("round-robin", "serverlessllm", "locality", "clairvoyant"):
        assert bound <= summarise(run_one(wl, name, cfg), 300)["mean_s"]


def test_percentile() -> None:
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == pytest.approx(2.5)
    assert percentile([5.0], 99) == 5.0
    assert percentile(list(map(float, range(101))), 99) == pytest.approx(99.0)


def test_locality_without_warm_loads_and_ssd_loads_queue() -> None:
    cluster = replace(ONE, slots_per_node=2)
    wl = workload([SMALL], [(0.0, 0, 100.0), (1.0, 0, 1.0)])
    served = Simulator(wl, LocalityPolicy(use_warm=False), cluster, GPU, seed=0).run().served[1]
    load = 14 * GB / ONE.bw_ssd
    assert served.tier is LoadTier.SSD
    assert served.latency_s == pytest.approx(2 * load - 1.0)  # behind the first SSD load on the node's queue


def test_keep_until_needed_keeps_an_idle_instance_past_the_keep_alive() -> None:
    wl = workload([SMALL], [(0.0, 0, 1.0), (100.0, 0, 1.0)])
    fixed = Simulator(wl, make_policy("locality"), ONE, GPU, seed=0).run().served[1]
    kept = Simulator(wl, make_policy("locality"), ONE, GPU, seed=0, keep_until_needed=True).run().served[1]
    assert fixed.tier is LoadTier.DRAM and kept.tier is LoadTier.WARM
    # ... but not past the idle cap
    capped = Simulator(wl, make_policy("locality"), ONE, GPU, seed=0, keep_until_needed=True,
                       max_idle_s=50.0).run().served[1]
    assert capped.tier is LoadTier.DRAM


def test_a_kept_instance_gives_its_slot_to_another_model() -> None:
    other = ModelSpec("other-7b", 7.0)
    wl = workload([SMALL, other], [(0.0, 0, 1.0), (100.0, 1, 1.0), (200.0, 0, 1.0)])
    served = Simulator(wl, make_policy("locality"), ONE, GPU, seed=0, keep_until_needed=True).run().served
    assert served[1].tier is LoadTier.SSD  # the idle small instance was evicted for it (one slot)
    assert served[2].tier is LoadTier.DRAM  # and small comes back from DRAM


def test_start_overhead_adds_to_every_new_instance() -> None:
    wl = workload([SMALL], [(0.0, 0, 1.0)])
    got = Simulator(wl, make_policy("locality"), replace(ONE, start_overhead_s=2.0), GPU, seed=0).run().served[0]
    assert got.latency_s == pytest.approx(SMALL.size_bytes / ONE.bw_ssd + 2.0)


def test_the_tail_estimate_waits_less_on_a_long_running_instance() -> None:
    # a busy instance (loaded from SSD by 3.5 s) has run 4 s; outputs of the workload are 1 or 1000 tokens.
    # "Mean - elapsed" says it is nearly done; the tail-aware estimate says it is a long one: load instead
    cluster = replace(ONE, slots_per_node=2)
    reqs = [Request(0, 0.0, 0, 1, 1000, 30.0), Request(1, 7.5, 0, 1, 1, 0.01)]
    reqs += [Request(i, 1000.0 + i, 0, 1, 1 if i % 2 else 1000, 0.01) for i in range(2, 40)]
    wl = Workload((SMALL,), tuple(reqs), (0,))
    mean = Simulator(wl, LocalityPolicy(warm_z=0.0), cluster, GPU, seed=0).run().served
    tail = Simulator(wl, LocalityPolicy(warm_z=0.0), cluster, GPU, seed=0, tail_estimate=True).run().served
    second = {s.request: s for s in mean}[1], {s.request: s for s in tail}[1]
    assert second[0].tier is LoadTier.WARM and second[0].latency_s == pytest.approx(26.0)
    assert second[1].tier is LoadTier.DRAM and second[1].latency_s == pytest.approx(SMALL.size_bytes / ONE.bw_dram)


def _held_run(small_run_s: float) -> Simulator:
    """Node n00 holds BIG in DRAM, its only slot runs SMALL (short outputs: a scheduler expects it to end
    at once); n01 has a free slot but BIG only from the registry."""
    cluster = ClusterSpec(nodes=2, slots_per_node=1, ssd_replicas=0, keep_alive_s=1000.0)
    wl = workload([SMALL, BIG], [(0.0, 0, small_run_s), (20.0, 1, 1.0)], gen=10)
    sim = Simulator(wl, make_policy("locality"), cluster, GPU, seed=0, migration=migration_hook(MigrationCostSpec()))
    sim.nodes[0].dram.insert(BIG.name, BIG.size_bytes)
    sim.run()
    return sim


def test_a_start_is_held_for_a_run_about_to_end() -> None:
    sim = _held_run(21.0)  # SMALL (from the registry, then 21 s) ends 12.2 s after BIG arrives: BIG waits for
    small, big = sim.result.served  # the slot (less than the 15 s hold), then loads from DRAM
    ends = small.latency_s + 21.0
    assert sim.result.waits == 1 and sim.result.migrations == 0 and sim.result.waits_lapsed == 0
    assert big.tier is LoadTier.DRAM
    assert big.latency_s == pytest.approx(ends - 20.0 + BIG.size_bytes / ClusterSpec().bw_dram)
    assert sim.result.unserved == 0


def test_a_hold_lapses_when_the_run_goes_on() -> None:
    sim = _held_run(500.0)  # expected to end at once, runs 480 s more: after 15 s the hold lapses
    big = sim.result.served[1]
    assert sim.result.waits == 1 and sim.result.waits_lapsed == 1
    assert big.tier is LoadTier.REGISTRY
    assert big.latency_s == pytest.approx(15.0 + BIG.size_bytes / ClusterSpec().bw_registry)
    assert sim.result.unserved == 0
