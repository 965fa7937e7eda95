"""Scheduler trace replay (issue 11): the real placement policies on the Azure LLM traces.

    .venv/bin/python -m bench.sched_sim                 # full report (3 workloads x 3 loads)
    .venv/bin/python -m bench.sched_sim --quick         # a smaller, faster run
    .venv/bin/python -m bench.sched_sim --json bench/out/sched.json --plot bench/sched_cdf.png

Every policy runs on the same workload (same model assignment, same arrival times),
the same cluster and cost model, and the same seeds; see ``bench/sim/`` and the
"Scheduler trace replay" section of ``bench/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import add_common_args, print_table, write_json
from bench.sim.bounds import Job, startup_lower_bound
from bench.sim.costs import ClusterSpec, GpuModel, MigrationCostSpec
from bench.sim.engine import MigrationHook, SimResult, Simulator
from bench.sim.migration import migration_hook
from bench.sim.report import plot_cdfs, summarise
from bench.sim.trace import TRACE_DIR, TraceRecord, bursty_variant, interarrival_cv, load_named
from bench.sim.workload import Workload, assign_models, catalog, offered_load, scale_to_load
from faas_llm.errors import ConfigError
from faas_llm.placement import LocalityPolicy, PlacementPolicy, make_policy

BASELINES = ("random", "round-robin", "hash", "least-loaded", "serverlessllm")
#: ablations: ServerlessLLM's rule with our keep-alive; ours as it was before (mean estimate, no margin, 60 s)
ABLATIONS = ("serverlessllm+keep", "locality-v0")
OURS = ("locality-nowarm", "locality-ka60", "locality-nostarting", "locality", "locality+migration",
        "locality+migration-nowait")
#: references, not schedulers: ours with true run times (same cluster), and the provable lower bound
REFERENCES = ("clairvoyant", "lower-bound")
ALL_POLICIES = (*BASELINES, *ABLATIONS, *OURS, *REFERENCES)
WORKLOADS = ("conv", "code", "bursty")


@dataclass(frozen=True)
class Config:
    seed: int = 0
    zipf_s: float = 1.0
    burst_cv: float = 4.0
    warmup: float = 0.1
    limit: int | None = None
    cluster: ClusterSpec = field(default_factory=ClusterSpec)
    gpu: GpuModel = field(default_factory=GpuModel)
    migration: MigrationCostSpec = field(default_factory=MigrationCostSpec)
    #: ours' keep-alive: idle instances stay until their slot is wanted, at most this long
    max_idle_s: float = 3600.0
    #: sensitivity, every policy: the real invoker's scheduling tick (Simulator(tick_s)) and the pool's WARMING
    tick_s: float | None = None
    warming: bool = False


def make_runner(name: str, cfg: Config) -> tuple[PlacementPolicy, MigrationHook | None, dict[str, Any]]:
    """(policy, migration hook, Simulator options) for a policy name of this bench.

    Ours (``locality``): the placement rule of faas_llm.placement with the tail-aware busy-instance
    estimate and the warm-wait margin, the pool's keep-alive until the slot is needed
    (faas_llm.pool_policy.keep_alive_removals), and instances still starting counted as future servers of
    the queue (faas_llm.placement.starting_free; ``locality-nostarting`` without). Every other policy gets
    the cluster's fixed keep-alive.
    """
    ours: dict[str, Any] = {"tail_estimate": True, "keep_until_needed": True, "max_idle_s": cfg.max_idle_s,
                            "starting_as_servers": True}
    if name == "clairvoyant":
        return LocalityPolicy(name=name, warm_z=0.0), None, {**ours, "clairvoyant": True}
    if name == "locality-nowarm":
        return LocalityPolicy(name=name, use_warm=False), None, ours
    if name == "locality-nostarting":
        return LocalityPolicy(name=name), None, {**ours, "starting_as_servers": False}
    if name == "locality-ka60":
        return LocalityPolicy(name=name), None, {**ours, "keep_until_needed": False}
    if name == "locality":
        return make_policy("locality", cfg.seed), None, ours
    if name == "locality+migration":
        return make_policy("locality", cfg.seed), migration_hook(cfg.migration), ours
    if name == "locality+migration-nowait":  # ablation: moves only, no start held for a run about to end
        return make_policy("locality", cfg.seed), migration_hook(cfg.migration, wait=False), ours
    if name == "locality-v0":
        return LocalityPolicy(name=name), None, {}  # views without a spread: plain comparison
    if name == "serverlessllm+keep":
        return make_policy("serverlessllm", cfg.seed), None, {"keep_until_needed": True, "max_idle_s": cfg.max_idle_s}
    return make_policy(name, cfg.seed), None, {}


def records_for(workload: str, cfg: Config, trace_dir: Path) -> list[TraceRecord]:
    if workload == "bursty":
        return bursty_variant(load_named("conv", cfg.limit, trace_dir), cfg.burst_cv, cfg.seed)
    return load_named(workload, cfg.limit, trace_dir)


def build_workload(workload: str, load: float, cfg: Config, trace_dir: Path) -> Workload:
    base = assign_models(records_for(workload, cfg, trace_dir), catalog(), zipf_s=cfg.zipf_s, seed=cfg.seed,
                         cluster=cfg.cluster, gpu=cfg.gpu)
    return scale_to_load(base, load, cfg.cluster, cfg.gpu)


def run_one(workload: Workload, policy_name: str, cfg: Config) -> SimResult:
    policy, hook, options = make_runner(policy_name, cfg)
    sim = Simulator(workload, policy, cfg.cluster, cfg.gpu, seed=cfg.seed, migration=hook, tick_s=cfg.tick_s,
                    warming=cfg.warming, **options)
    return sim.run()


def lower_bound_row(workload: Workload, cfg: Config, first: int) -> dict[str, Any]:
    """The provable lower bound (bench/sim/bounds.py) on the mean startup latency of the counted requests."""
    jobs = [Job(r.t, r.run_s, cfg.gpu.gpus(workload.models[r.model], cfg.cluster))
            for r in workload.requests if r.id >= first]
    gpus = cfg.cluster.nodes * cfg.cluster.gpus_per_node
    nan = float("nan")
    return {"requests": len(jobs), "mean_s": startup_lower_bound(jobs, gpus), "p50_s": nan, "p99_s": nan,
            "warm_pct": nan, "dram_pct": nan, "ssd_pct": nan, "registry_pct": nan, "unserved": 0, "migrations": 0,
            "waits": 0}


@dataclass(frozen=True)
class Case:
    workload: str
    load: float
    policy: str


def _run_case(args: tuple[Case, Config, Path]) -> tuple[Case, dict[str, Any], list[float], float]:
    case, cfg, trace_dir = args
    wl = build_workload(case.workload, case.load, cfg, trace_dir)
    start = time.perf_counter()
    first = int(len(wl.requests) * cfg.warmup)
    if case.policy == "lower-bound":
        return case, lower_bound_row(wl, cfg, first), [], time.perf_counter() - start
    result = run_one(wl, case.policy, cfg)
    elapsed = time.perf_counter() - start
    row = summarise(result, first)
    latencies = [s.latency_s for s in result.served if s.request >= first]
    return case, row, latencies, elapsed


def run_cases(cases: Sequence[Case], cfg: Config, trace_dir: Path, workers: int,
              progress: Callable[[str], None] = print) -> list[tuple[Case, dict[str, Any], list[float], float]]:
    jobs = [(c, cfg, trace_dir) for c in cases]
    if workers <= 1:
        out = []
        for job in jobs:
            out.append(_run_case(job))
            progress(f"  {job[0]} {out[-1][3]:.1f}s")
        return out
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(_run_case, jobs))


def ratio(a: float, b: float) -> float:
    return a / b if b > 0 else float("inf")


def summary_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per workload and load: ours / serverlessllm, ours / lower bound, ours / clairvoyant (mean startup)."""
    by_key: dict[tuple[str, float], dict[str, dict[str, Any]]] = {}
    for r in rows:
        by_key.setdefault((r["workload"], r["load"]), {})[r["policy"]] = r
    out = []
    for (workload, load), pol in by_key.items():
        if "serverlessllm" not in pol:
            continue
        for ours in ("locality", "locality+migration"):
            if ours not in pol:
                continue
            mean = pol[ours]["mean_s"]
            vs_sllm = ratio(mean, pol["serverlessllm"]["mean_s"])
            vs_lb = ratio(mean, pol["lower-bound"]["mean_s"]) if "lower-bound" in pol else float("nan")
            vs_cv = ratio(mean, pol["clairvoyant"]["mean_s"]) if "clairvoyant" in pol else float("nan")
            out.append({
                "case": f"{workload}@{load:g} {ours}", "workload": workload, "load": load, "policy": ours,
                "vs_serverlessllm": vs_sllm, "vs_lower_bound": vs_lb, "vs_clairvoyant": vs_cv,
                "target_met": vs_sllm <= 0.7 and vs_lb <= 1.3,
            })
    return out


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workloads", default=",".join(WORKLOADS), help="comma list of conv, code, bursty")
    p.add_argument("--loads", default="0.1,0.2,0.3", help="offered GPU loads (comma list)")
    p.add_argument("--policies", default=",".join(ALL_POLICIES))
    p.add_argument("--nodes", type=int, default=ClusterSpec.nodes)
    p.add_argument("--keep-alive", type=float, default=ClusterSpec.keep_alive_s)
    p.add_argument("--single-loader", action="store_true", help="sensitivity: one FIFO load queue per node")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tick", type=float, default=None,
                   help="sensitivity: place on the invoker's periodic tick of this many seconds (every policy)")
    p.add_argument("--warming", action="store_true",
                   help="sensitivity: the pool's WARMING (no second start of a model where one is starting)")
    p.add_argument("--limit", type=int, default=None, help="use only the first N requests of each trace")
    p.add_argument("--quick", action="store_true", help="first 2500 requests, one load level (< 30 s)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--trace-dir", type=Path, default=TRACE_DIR)
    p.add_argument("--plot", type=Path, default=None, help="CDF plot PNG (conv workload, every load)")
    add_common_args(p)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    loads = [float(x) for x in args.loads.split(",") if x]
    workloads = [w for w in args.workloads.split(",") if w]
    policies = [x for x in args.policies.split(",") if x]
    limit = args.limit
    if args.quick:
        limit = limit or 2500
        loads = loads[1:2] if len(loads) > 1 else loads
    unknown = [w for w in workloads if w not in WORKLOADS] + [x for x in policies if x not in ALL_POLICIES]
    if unknown:
        raise ConfigError(f"unknown workloads/policies {unknown}: workloads {WORKLOADS}, policies {ALL_POLICIES}")
    cluster = replace(ClusterSpec(), nodes=args.nodes, keep_alive_s=args.keep_alive,
                      single_loader=args.single_loader)
    cfg = Config(seed=args.seed, limit=limit, cluster=cluster, tick_s=args.tick, warming=args.warming)
    for w in workloads:
        recs = records_for(w, cfg, args.trace_dir)
        base = assign_models(recs, catalog(), zipf_s=cfg.zipf_s, seed=cfg.seed, cluster=cluster, gpu=cfg.gpu)
        print(f"{w}: {len(recs)} requests over {recs[-1].t:.0f} s, inter-arrival CV {interarrival_cv(recs):.2f}, "
              f"native offered load {offered_load(base, cluster, cfg.gpu):.3f}")
    cases = [Case(w, load, p) for w in workloads for load in loads for p in policies]
    started = time.perf_counter()
    results = run_cases(cases, cfg, args.trace_dir, args.workers)
    rows = []
    cdfs: dict[str, dict[str, list[float]]] = {}
    for case, row, latencies, elapsed in results:
        rows.append({"case": f"{case.workload}@{case.load:g} {case.policy}", "workload": case.workload,
                     "load": case.load, "policy": case.policy, **row, "sim_s": elapsed})
        if case.workload == workloads[0] and latencies:
            cdfs.setdefault(f"{case.workload}, load {case.load:g}", {})[case.policy] = latencies
    columns = ["policy", "mean_s", "p50_s", "p99_s", "warm_pct", "dram_pct", "ssd_pct", "registry_pct",
               "migrations", "waits", "unserved"]
    for w in workloads:
        for load in loads:
            print_table([r for r in rows if r["workload"] == w and r["load"] == load], columns,
                        title=f"{w} trace, offered load {load:g} (startup latency, tier shares %)")
    summary = summary_rows(rows)
    print_table(summary, ["case", "vs_serverlessllm", "vs_lower_bound", "vs_clairvoyant", "target_met"],
                title="mean startup latency ratios (target: <= 0.7x serverlessllm and <= 1.3x the lower bound)")
    print(f"total simulation wall time {time.perf_counter() - started:.1f} s")
    if args.plot is not None:
        plot_cdfs(args.plot, cdfs, f"Startup latency CDF, {workloads[0]} trace, {cluster.nodes} nodes")
        print(f"wrote {args.plot}")
    write_json(args.json, rows, summary=summary, config={
        "cluster": vars(cluster), "gpu": vars(cfg.gpu), "migration": vars(cfg.migration), "seed": cfg.seed,
        "zipf_s": cfg.zipf_s, "max_idle_s": cfg.max_idle_s, "tick_s": cfg.tick_s, "warming": cfg.warming,
        "burst_cv": cfg.burst_cv, "warmup": cfg.warmup, "limit": limit, "loads": loads})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
