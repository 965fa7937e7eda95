"""Validation of the scheduler simulator against the real system (issue 11).

    flock /work/helpers/bench.lock .venv/bin/python -m bench.sim_validate [--json bench/out/sim_validate.json]

1. A real ``faas-llm up`` (one node: gateway, invoker with process containers, cache agent with a small
   DRAM pool and a small SSD tier, a ``file://`` registry), ``--models`` actions, each on its own copy
   of the tiny demo checkpoint (pushed under its own name: separate cache entries), so that the DRAM and
   SSD tiers (capacities of a few checkpoints) evict and requests start from every tier.
2. Calibration, on a separate action and model: cold starts from the registry, the SSD tier and the DRAM
   tier (the activation record's ``loadTime`` and ``waitTime``) and warm runs at two output lengths. From
   them: each tier's load seconds (the simulator's bandwidths: size / load time), the start overhead
   (``waitTime - loadTime`` of a cold start: runtime boot, init, the scheduler's reaction), and the run
   time as ``a + b * max_tokens``.
3. The replay: ``--requests`` requests of the Azure conv trace (arrival times scaled to ``--span`` seconds,
   each request's output length -> ``max_tokens`` / ``--token-div``), a model each by Zipf(1.0) as in
   the comparison, sent through the gateway's OpenAI completions at their arrival times (a thread each).
   Each activation record says cold or warm, its ``loadTier`` and ``waitTime`` (enqueue to run start:
   the simulator's startup latency).
4. The simulator (``bench/sim``: the same placement policy, pool eviction and keep-alive functions)
   with this machine's measured parameters on the same request sequence; its tier shares and mean/p50
   startup latency next to the measured ones. Target: within 25%.
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import math
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import requests

from bench.coldstart_bench import evict
from bench.common import Row, add_common_args, drop_page_cache, print_table, write_json
from bench.sim.costs import GB, ClusterSpec, GpuModel, ModelSpec
from bench.sim.engine import Simulator
from bench.sim.report import percentile
from bench.sim.trace import TRACE_DIR, load_named
from bench.sim.workload import Request, Workload, zipf_weights
from bench.up_cluster import UpCluster, bench_env, containers, wait_until
from cache_agent.pool import ALIGNMENT
from faas_llm.placement import RunTimeDistribution, make_policy
from faas_llm.types import ActivationRecord, LoadTier

PROMPT = "The serverless platform"
TIERS = ("warm", "dram", "ssd", "registry")
#: the shares compared: ``local`` is a start whose runtime loaded the SSD copy itself (the DRAM tier full of leases)
SHARES = (*TIERS, "local")


# --- the real cluster ----------------------------------------------------------------------------------------


def complete(cluster: UpCluster, action: str, max_tokens: int) -> str:
    """One (blocking) OpenAI completion through the gateway; the activation id."""
    body = {"model": action, "prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0}
    resp = requests.post(f"{cluster.apihost}/v1/completions", json=body,
                         headers={"Authorization": f"Bearer {cluster.auth}"}, timeout=600)
    if resp.status_code != 200:
        raise RuntimeError(f"completion of {action} -> {resp.status_code}: {resp.text[:300]}")
    return resp.headers["x-openwhisk-activation-id"]


def record(cluster: UpCluster, aid: str) -> ActivationRecord:
    with cluster.client() as client:
        return client.wait_activation(aid, 180)


def tier_of(rec: ActivationRecord) -> str:
    if not rec.coldStart or rec.loadTier is None:
        return "warm"
    return rec.loadTier.value


def wait_ms(rec: ActivationRecord) -> float:
    return float(next((a.value for a in rec.annotations if a.key == "waitTime"), 0))


def calibrate(cluster: UpCluster, model: str, nbytes: int, keep_alive: float, reps: int) -> dict[str, Any]:
    """Per-tier load seconds, the start overhead and the run-time line, from cold and warm runs of ``model``."""
    action = "calib"
    with cluster.client() as client:
        client.create_action(action, model, scaling={"keep_alive": keep_alive}, limits={"timeout": 300_000},
                             overwrite=True)
    loads: dict[str, list[float]] = {t: [] for t in TIERS[1:]}
    overhead: list[float] = []
    runs: dict[int, list[float]] = {1: [], 32: []}
    order = [("registry", ["dram", "ssd"]), ("ssd", ["dram"]), ("dram", [])]
    for rep in range(reps):
        for tier, evicted in order:
            wait_until("the calibration container to go", lambda: not containers(cluster, action), 120 + keep_alive)
            if evicted:
                evict(cluster, model, evicted)
                drop_page_cache()
            rec = record(cluster, complete(cluster, action, 1))
            got = tier_of(rec)
            print(f"  calibration {rep + 1}/{reps} {tier}: record says {got}, load {rec.loadTime or 0:.3f} s, "
                  f"wait {wait_ms(rec) / 1000:.3f} s", flush=True)
            if got == tier:
                loads[tier].append(rec.loadTime or 0.0)
                overhead.append(wait_ms(rec) / 1000 - (rec.loadTime or 0.0))
            for tokens in runs:  # warm runs on the fresh container
                for _ in range(2):
                    warm = record(cluster, complete(cluster, action, tokens))
                    runs[tokens].append(warm.duration / 1000)
    load_s = {t: statistics.median(v) if v else math.nan for t, v in loads.items()}
    r1, r32 = statistics.median(runs[1]), statistics.median(runs[32])
    per_token = max(0.0, (r32 - r1) / 31)
    calib = {"load_s": load_s, "bw": {t: nbytes / s if s and s > 0 else math.nan for t, s in load_s.items()},
             "start_overhead_s": statistics.median(overhead) if overhead else 0.0,
             "run_a_s": max(0.0, r1 - per_token), "run_b_s_per_token": per_token}
    wait_until("the calibration container to go", lambda: not containers(cluster, action), 120 + keep_alive)
    evict(cluster, model, ["dram", "ssd"])
    with cluster.client() as client:
        client.delete_action(action)
    return calib


# --- the request sequence --------------------------------------------------------------------------------------


def sequence(n: int, span_s: float, models: int, token_div: int, max_tokens: int, seed: int,
             offset: int) -> list[tuple[float, int, int]]:
    """(arrival s, model index, max_tokens): conv trace arrivals scaled to ``span_s``, Zipf(1.0) models."""
    recs = load_named("conv", offset + n, TRACE_DIR)[offset:]
    t0 = recs[0].t
    scale = span_s / max(1e-9, recs[-1].t - t0)
    rng = random.Random(seed)
    ranking = list(range(models))
    rng.shuffle(ranking)
    cumulative = list(itertools.accumulate(zipf_weights(models, 1.0)))
    out = []
    for rec in recs:
        rank = min(bisect.bisect_left(cumulative, rng.random()), models - 1)
        out.append(((rec.t - t0) * scale, ranking[rank], max(1, min(max_tokens, rec.gen_tokens // token_div))))
    return out


def replay(cluster: UpCluster, seq: Sequence[tuple[float, int, int]]) -> list[dict[str, Any]]:
    """Send every request at its time (a thread each); the activation records, in request order."""
    aids: list[str | None] = [None] * len(seq)
    errors: list[str] = []
    start = time.monotonic() + 1.0

    def send(i: int, t: float, model: int, tokens: int) -> None:
        time.sleep(max(0.0, start + t - time.monotonic()))
        try:
            aids[i] = complete(cluster, f"v{model}", tokens)
        except (RuntimeError, requests.RequestException) as exc:
            errors.append(f"request {i}: {exc}")

    threads = [threading.Thread(target=send, args=(i, *req), daemon=True) for i, req in enumerate(seq)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=900)
    if errors:
        print(f"  {len(errors)} requests failed, e.g. {errors[0]}", flush=True)
    out = []
    for i, aid in enumerate(aids):
        if aid is None:
            continue
        rec = record(cluster, aid)
        out.append({"i": i, "tier": tier_of(rec), "wait_s": wait_ms(rec) / 1000, "run_s": rec.duration / 1000,
                    "load_s": rec.loadTime or 0.0, "ok": bool(rec.response.success)})
    return out


# --- the simulator with this machine's parameters ---------------------------------------------------------------


def dram_bytes(args: argparse.Namespace, nbytes: int) -> int:
    """The DRAM pool's size: ``--dram-models`` extents of the checkpoint (each rounded up to 2 MiB)."""
    return int(args.dram_models) * extent(nbytes)


def extent(nbytes: int) -> int:
    return -(-nbytes // ALIGNMENT) * ALIGNMENT


def dram_checkpoints(args: argparse.Namespace, nbytes: int) -> int:
    return dram_bytes(args, nbytes) // extent(nbytes)


def simulate(seq: Sequence[tuple[float, int, int]], models: int, nbytes: int, calib: dict[str, Any],
             args: argparse.Namespace) -> list[dict[str, Any]]:
    bw = calib["bw"]
    # the DRAM pool holds whole 2 MiB-aligned extents: its capacity in checkpoints, as the cache agent counts
    dram_fit = dram_checkpoints(args, nbytes)
    spec = ClusterSpec(
        nodes=1, gpus_per_node=args.slots, slots_per_node=args.slots, gpu_memory_gb=80.0,
        dram_cache_gb=dram_fit * nbytes / GB, ssd_cache_gb=args.ssd_models * nbytes / GB,
        bw_dram=bw["dram"], bw_ssd=bw["ssd"], bw_registry=bw["registry"], keep_alive_s=args.keep_alive,
        ssd_replicas=0, start_overhead_s=calib["start_overhead_s"], dram_lease_while_live=True, agent_loads=True,
        evicted_lease_hold_s=args.evicted_lease_hold,
    )
    specs = tuple(ModelSpec(f"v{m}", nbytes / (2 * GB)) for m in range(models))
    a, b = calib["run_a_s"], calib["run_b_s_per_token"]
    reqs = tuple(Request(i, t, m, 1, tokens, a + b * tokens) for i, (t, m, tokens) in enumerate(seq))
    wl = Workload(specs, reqs, tuple(range(models)))
    # the invoker's scheduling: the cold-start watch places a start at once, everything else on its tick
    # (heartbeat_interval_s); the pool starts no second instance of a model while one is starting (WARMING);
    # busy instances' free times tail-aware from the runs it has seen (invoker/run_times.py)
    # as the real invoker since 4658998: starting instances are servers of their queue (starting_as_busy)
    sim = Simulator(wl, make_policy("locality"), spec, GpuModel(), seed=0, tick_s=args.tick, warming=True,
                    starting_as_servers=True)
    mean_run = sum(r.run_s for r in reqs) / len(reqs)
    sim.expected_run = [mean_run] * models
    dist = RunTimeDistribution(r.run_s for r in reqs)
    sim.run_dists = [dist] * models
    result = sim.run()
    return [{"i": s.request, "tier": s.tier.value if s.tier is not LoadTier.WARM else "warm",
             "wait_s": s.latency_s} for s in result.served]


def stats(rows: Sequence[dict[str, Any]], first: int) -> dict[str, float]:
    counted = [r for r in rows if r["i"] >= first]
    waits = sorted(r["wait_s"] for r in counted)
    n = len(counted)
    out = {"requests": float(n), "mean_s": sum(waits) / n if n else math.nan, "p50_s": percentile(waits, 50)}
    for tier in SHARES:
        out[f"{tier}_pct"] = 100.0 * sum(1 for r in counted if r["tier"] == tier) / n if n else math.nan
    return out


def compare(real: dict[str, float], sim: dict[str, float]) -> list[Row]:
    rows: list[Row] = []
    for key in ("mean_s", "p50_s", *(f"{t}_pct" for t in SHARES)):
        r, s = real[key], sim[key]
        err = (s - r) / r if r else (0.0 if s == 0 else math.inf)
        # tier shares: the relative error of a small share is noise; also give the absolute difference
        rows.append({"case": key, "measured": r, "simulated": s, "rel_err": err, "abs_diff": s - r,
                     "within_25pct": abs(err) <= 0.25})
    return rows


def report(args: argparse.Namespace, seq: Sequence[tuple[float, int, int]], real: list[dict[str, Any]],
           nbytes: int, calib: dict[str, Any], loads: list[float], replay_s: float, **extra: Any) -> None:
    first = int(len(seq) * args.warmup)
    simulated = simulate(seq, args.models, nbytes, calib, args)
    real_stats, sim_stats = stats(real, first), stats(simulated, first)
    rows = compare(real_stats, sim_stats)
    title = (f"simulator vs real faas-llm up: {len(seq)} requests ({first} not counted), {args.models} models, "
             f"{args.slots} slots, keep-alive {args.keep_alive:g} s, DRAM {args.dram_models:g} / SSD "
             f"{args.ssd_models:g} checkpoints; replay {replay_s:.0f} s; 1-min load {min(loads):.1f}-{max(loads):.1f}")
    print_table(rows, ["case", "measured", "simulated", "rel_err", "abs_diff", "within_25pct"], title=title)
    write_json(args.json, rows, calibration=calib, measured=real_stats, simulated=sim_stats, load_averages=loads,
               args={k: str(v) for k, v in vars(args).items()}, real_requests=real, sim_requests=simulated,
               nbytes=nbytes, replay_s=replay_s, **extra)


def resimulate(args: argparse.Namespace, seq: Sequence[tuple[float, int, int]]) -> None:
    """The simulator again against a saved measured run (same sequence arguments as that run)."""
    import json

    saved = json.loads(args.resimulate.read_text())
    nbytes = int(saved.get("nbytes", 969388))  # runs before it was saved: the tiny demo checkpoint's bytes
    report(args, seq, saved["real_requests"], nbytes, saved["calibration"], saved["load_averages"],
           float(saved.get("replay_s", math.nan)), measured_in=saved["machine"]["time"])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = add_common_args(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    parser.add_argument("--models", type=int, default=6)
    parser.add_argument("--requests", type=int, default=240)
    parser.add_argument("--span", type=float, default=180.0, help="seconds the replayed requests span")
    parser.add_argument("--offset", type=int, default=2000, help="first trace request used")
    parser.add_argument("--slots", type=int, default=3)
    parser.add_argument("--keep-alive", type=float, default=8.0)
    parser.add_argument("--dram-models", type=int, default=5,
                        help="DRAM pool capacity in checkpoints (>= slots + 2: a live instance leases its checkpoint, "
                             "and a container being removed holds its lease until its runtime has exited)")
    parser.add_argument("--ssd-models", type=float, default=4.5, help="SSD tier capacity in checkpoints")
    parser.add_argument("--token-div", type=int, default=8, help="max_tokens = trace output tokens / this")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--calib-reps", type=int, default=2)
    parser.add_argument("--warmup", type=float, default=0.1, help="share of requests not counted")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--evicted-lease-hold", type=float, default=0.0,
                        help="how long an evicted instance's DRAM lease outlives it: 0 since ed82778 (the "
                             "invoker evicts an idle victim with SIGTERM and its runtime releases the lease); "
                             "30 (the agent's lease_ttl_s) models the SIGKILL eviction before it")
    parser.add_argument("--setting", action="append", default=[], metavar="KEY=VALUE",
                        help="an extra setting of the cluster (repeatable), e.g. migration_placement=false")
    parser.add_argument("--tick", type=float, default=1.0,
                        help="the invoker's scheduling tick (heartbeat_interval_s, its default) in the simulator")
    parser.add_argument("--resimulate", type=Path, default=None,
                        help="no cluster: simulate again against the measured run and calibration saved in this --json")
    return parser.parse_args(argv)


def measure(args: argparse.Namespace, seq: Sequence[tuple[float, int, int]]) -> None:
    """A real cluster: calibration, the replay of ``seq``, then the report against the simulator."""
    loads = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory(prefix="sim-validate-") as tmp_name:
        tmp = Path(tmp_name)
        from faas_llm.checkpoint import convert
        from faas_llm.demo_models import make_demo_model

        ckpt = tmp / "tiny-ckpt"
        convert(make_demo_model(tmp / "tiny", size="tiny"), ckpt)
        nbytes = sum(f.stat().st_size for f in ckpt.rglob("*") if f.is_file())
        registry = tmp / "registry"
        registry.mkdir()
        settings: dict[str, Any] = {
            "prewarm_count": 0, "max_containers": args.slots, "keep_alive_s": args.keep_alive,
            "dram_capacity_bytes": dram_bytes(args, nbytes), "ssd_capacity_bytes": int(args.ssd_models * nbytes),
            "invocations_per_minute": 10**6, "concurrent_invocations": 10**4, "registry_url": f"file://{registry}",
            "prefetch_max_replicas": 0, "placement_policy": "locality",
            **dict(item.split("=", 1) for item in args.setting),
        }
        home = tmp / "home"
        cluster = UpCluster(home, bench_env(home, settings))
        print(f"starting faas-llm up under {home} (checkpoint {nbytes / 1e6:.2f} MB) ...", flush=True)
        cluster.start()
        try:
            for name in ["calib", *(f"v{m}" for m in range(args.models))]:
                cluster.cli("model", "push", str(ckpt), "--name", f"model-{name}")
            with cluster.client() as client:
                for m in range(args.models):
                    client.create_action(f"v{m}", f"model-v{m}", scaling={"keep_alive": args.keep_alive},
                                         limits={"timeout": 300_000}, overwrite=True)
            print("calibration", flush=True)
            calib = calibrate(cluster, "model-calib", nbytes, args.keep_alive, args.calib_reps)
            print(f"  {calib}", flush=True)
            loads.append(os.getloadavg()[0])
            print(f"replay: {len(seq)} requests over {args.span:.0f} s on {args.models} models", flush=True)
            t0 = time.perf_counter()
            real = replay(cluster, seq)
            replay_s = time.perf_counter() - t0
            loads.append(os.getloadavg()[0])
        finally:
            cluster.stop()
    report(args, seq, real, nbytes, calib, loads, replay_s)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    seq = sequence(args.requests, args.span, args.models, args.token_div, args.max_tokens, args.seed, args.offset)
    if args.resimulate is not None:
        resimulate(args, seq)
        return
    measure(args, seq)


if __name__ == "__main__":
    main()
