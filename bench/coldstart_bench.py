"""Cold start end to end, by where the checkpoint is, next to the naive serverless baseline (issue 11).

    .venv/bin/python -m bench.coldstart_bench [--model bench|tiny] [--repeats 3] [--max-tokens 4]
        [--json bench/out/coldstart.json]

A real ``faas-llm up`` (one node: gateway, invoker with process containers and ``prewarm_count``
prewarmed runtimes, cache agent with a DRAM pool and an SSD tier, a ``file://`` registry). Each
invocation is a streamed OpenAI completion (``POST /v1/completions``, ``stream: true``,
``max_tokens`` small): **TTFT** is the time from sending the request to the first chunk carrying
text, **total** the time to ``data: [DONE]``; the activation record (``x-openwhisk-activation-id``)
says where the model came from (``loadTier``) and the runtime's own figures.

Cases, each ``--repeats`` times (the action keeps a container ``--keep-alive`` seconds; between
cases the bench waits until the container is gone and a prewarmed runtime is ready):

- ``warm``: a second invocation right after a cold one, on the same container;
- ``cold, DRAM tier``: no container; the checkpoint is in the cache agent's DRAM pool;
- ``cold, SSD tier``: evicted from DRAM (cache agent ``evict``), page cache dropped;
- ``cold, registry only``: evicted from DRAM and SSD, page cache dropped (the registry is a local
  directory here, so this is its disk read plus the SSD write and verification);
- peer ``loader cold``: :func:`faas_llm.checkpoint.load_model` on the checkpoint with the page cache
  dropped, in a process that has imported torch (the loader's cold time the SSD target refers to);
- peer ``naive serverless``: a fresh Python process that imports torch and transformers, calls
  ``from_pretrained`` on the Hugging Face directory and generates the same tokens (TTFT from process
  start to its first token via a streamer); page cache warm (its best case) and, with root, dropped.

Every tiered case runs twice, on two clusters that differ only in where the cache agent's DRAM pool
lives (``--pools``): ``shm`` is ``/dev/shm`` (4 KiB pages on this VM: ``shmem_enabled`` is ``never``),
``huge`` a private tmpfs mounted with ``huge=always`` (``settings.dram_pool_dir``), so mapping the
checkpoint into the runtime costs a few hundred page faults instead of ~640,000.

Dropping the page cache and mounting the tmpfs need root; without it those rows say so.
Targets (issue 11): DRAM-tier TTFT <= warm TTFT + 0.3 s; SSD-tier TTFT <= warm TTFT + loader cold
+ 0.3 s; DRAM-tier TTFT >= 10x faster than the naive baseline's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import requests

from bench.common import Row, add_common_args, drop_page_cache, print_table, write_json
from bench.up_cluster import REPO, UpCluster, bench_env, containers, wait_until
from faas_llm.types import ActivationRecord, ContainerState

ACTION = "cs"
PROMPT = "The serverless platform"
BENCH_DIR = REPO / "bench" / "out" / "models"


def stream_completion(cluster: UpCluster, max_tokens: int) -> dict[str, Any]:
    """One streamed completion: TTFT and total at the client, and the activation id."""
    body = {"model": ACTION, "prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0, "stream": True}
    headers = {"Authorization": f"Bearer {cluster.auth}"}
    t0 = time.perf_counter()
    ttft: float | None = None
    text = ""
    with requests.post(f"{cluster.apihost}/v1/completions", json=body, headers=headers, stream=True,
                       timeout=600) as resp:
        if resp.status_code != 200:
            raise SystemExit(f"completion -> {resp.status_code}: {resp.text[:500]}")
        aid = resp.headers["x-openwhisk-activation-id"]
        for line in resp.iter_lines():
            if not line.startswith(b"data: "):
                continue
            data = line[6:]
            if data == b"[DONE]":
                break
            event = json.loads(data)
            piece = "".join(c.get("text") or "" for c in event.get("choices") or [])
            if piece and ttft is None:
                ttft = time.perf_counter() - t0
            text += piece
    total = time.perf_counter() - t0
    return {"aid": aid, "ttft_s": ttft if ttft is not None else total, "total_s": total, "text": text}


def record_of(cluster: UpCluster, aid: str) -> ActivationRecord:
    with cluster.client() as client:
        return client.wait_activation(aid, 120)


def measure(cluster: UpCluster, case: str, max_tokens: int, expect_tier: str | None) -> Row:
    got = stream_completion(cluster, max_tokens)
    record = record_of(cluster, got["aid"])
    if not record.response.success:
        raise SystemExit(f"{case}: activation failed: {record.response}")
    tier = record.loadTier.value if record.loadTier else "?"
    if expect_tier is not None and tier != expect_tier:
        print(f"  note: {case} expected tier {expect_tier}, the record says {tier}", flush=True)
    timings = (record.response.result or {}).get("timings", {})
    row = {"case": case, "tier": tier, "cold": record.coldStart, "ttft_s": got["ttft_s"], "total_s": got["total_s"],
           "load_s": record.loadTime or 0.0, "runtime_ttft_s": timings.get("ttft_s"),
           "runtime_total_s": timings.get("total_s"), "wait_ms": next(
               (a.value for a in record.annotations if a.key == "waitTime"), None)}
    print(f"  {row}", flush=True)
    return row


def wait_no_container(cluster: UpCluster, timeout_s: float = 180) -> None:
    wait_until("the idle container to be removed", lambda: not containers(cluster, ACTION), timeout_s)


def wait_prewarmed(cluster: UpCluster, want: int, timeout_s: float = 300) -> None:
    if want <= 0:
        return
    wait_until("a prewarmed runtime", lambda: any(
        c.state is ContainerState.PREWARMED and c.action is None for c in containers(cluster)), timeout_s)


def cache_client(cluster: UpCluster) -> Any:
    from faas_llm.cache_client import CacheClient
    from faas_llm.settings import Settings

    return CacheClient(Settings(data_dir=cluster.data_dir, redis_url=cluster.state["redis_url"]), timeout_s=900)


def evict(cluster: UpCluster, model: str, tiers: list[str]) -> None:
    with cache_client(cluster) as cc:
        for tier in tiers:
            deadline = time.monotonic() + 60
            while True:
                try:
                    cc.evict(model, "dram" if tier == "dram" else "ssd")
                    break
                except Exception as exc:  # refused while a lease is held: the old runtime is still exiting
                    if time.monotonic() > deadline:
                        raise SystemExit(f"cannot evict {model} from {tier}: {exc}") from None
                    time.sleep(0.5)


def resident_bytes(fd: int, size: int) -> int:
    """Bytes of an open file in the page cache (``mincore`` on a mapping; reads nothing)."""
    import ctypes
    import mmap

    import numpy as np

    from faas_llm.checkpoint.sources import _mincore

    if size == 0 or _mincore is None:
        return 0
    mapping = mmap.mmap(fd, size, access=mmap.ACCESS_READ)
    try:
        vec = np.zeros((size + mmap.PAGESIZE - 1) // mmap.PAGESIZE, dtype=np.uint8)
        address = np.frombuffer(mapping, dtype=np.uint8, count=1).ctypes.data
        if _mincore(ctypes.c_void_p(address), ctypes.c_size_t(size), vec.ctypes.data_as(ctypes.c_void_p)) != 0:
            return -1
        return int((vec & 1).sum()) * mmap.PAGESIZE
    finally:
        mapping.close()


def evict_files(roots: list[Path]) -> int:
    """Take every file under ``roots`` (the checkpoint's copies: SSD tier, registry) out of the page
    cache (``POSIX_FADV_DONTNEED`` after a sync) and return the bytes still resident afterwards
    (``mincore``; 0 = the checkpoint is only on disk). Unlike ``drop_caches`` this leaves the page
    cache of everything else alone: the runtime's own libraries stay as cached as on any node."""
    os.sync()
    left = 0
    for root in roots:
        for path in sorted(root.rglob("*")) if root.is_dir() else []:
            if not path.is_file() or path.is_symlink():
                continue
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                left += max(0, resident_bytes(fd, os.fstat(fd).st_size))
            finally:
                os.close(fd)
    return left


def make_cold(mode: str, roots: list[Path]) -> str:
    """Put the checkpoint out of memory: ``files`` (its files only) or ``all`` (drop_caches)."""
    if mode == "all":
        return "page cache dropped" if drop_page_cache() else "NOT dropped (no root)"
    left = evict_files(roots)
    return "checkpoint files evicted" if left == 0 else f"checkpoint files evicted, {left} B still resident"


# --- peers (fresh processes) ----------------------------------------------------------------------

NAIVE = textwrap.dedent("""
    import json, sys, time, threading
    t0 = float(sys.argv[2])
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, TextIteratorStreamer
    t_imp = time.time() - t0
    tok = AutoTokenizer.from_pretrained(sys.argv[1])
    model = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype="auto")
    t_load = time.time() - t0
    streamer = TextIteratorStreamer(tok, skip_prompt=True)
    ids = tok(sys.argv[3], return_tensors="pt")
    th = threading.Thread(target=model.generate, kwargs=dict(**ids, max_new_tokens=int(sys.argv[4]),
                          do_sample=False, streamer=streamer))
    th.start()
    first = None
    for piece in streamer:
        if piece and first is None:
            first = time.time() - t0
    th.join()
    print(json.dumps({"import_s": t_imp, "load_s": t_load - t_imp, "ttft_s": first or time.time() - t0,
                      "total_s": time.time() - t0}))
""")

LOADER = textwrap.dedent("""
    import gc, json, sys, time
    from pathlib import Path
    import torch
    from bench.coldstart_bench import make_cold
    from faas_llm.checkpoint import load_model
    from faas_llm.settings import Settings
    model, stats = load_model(sys.argv[1], settings=Settings())  # warm-up: imports, code paths
    del model, stats
    gc.collect()
    cold = make_cold(sys.argv[2], [Path(sys.argv[1])])
    t0 = time.perf_counter()
    model, stats = load_model(sys.argv[1], settings=Settings())
    print(json.dumps({"load_s": time.perf_counter() - t0, "cold": cold}))
""")


def run_peer(code: str, *argv: str) -> dict[str, Any]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, env=env,
                          timeout=900, cwd=REPO)
    if proc.returncode != 0:
        raise SystemExit(f"peer failed:\n{proc.stderr[-3000:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def naive_row(hf_dir: Path, max_tokens: int, dropped: bool) -> Row:
    if dropped and not drop_page_cache():
        return {"case": "naive serverless (page cache dropped)", "note": "not run: dropping the page cache needs root"}
    got = run_peer(NAIVE, str(hf_dir), repr(time.time()), PROMPT, str(max_tokens))
    row = {"case": f"naive serverless ({'page cache dropped' if dropped else 'page cache warm'})",
           "tier": "-", "cold": True, "ttft_s": got["ttft_s"], "total_s": got["total_s"],
           "load_s": got["load_s"], "import_s": got["import_s"]}
    print(f"  {row}", flush=True)
    return row


def loader_row(ckpt: Path, evict: str) -> Row:
    got = run_peer(LOADER, str(ckpt), evict)
    row = {"case": f"peer: loader cold ({got['cold']})", "load_s": got["load_s"]}
    print(f"  {row}", flush=True)
    return row


# --- the run ----------------------------------------------------------------------------------------


def summarise(rows: list[Row]) -> list[Row]:
    """Medians per case, in the order first seen."""
    order: list[str] = []
    groups: dict[str, list[Row]] = {}
    for row in rows:
        if row["case"] not in groups:
            order.append(row["case"])
            groups[row["case"]] = []
        groups[row["case"]].append(row)
    out = []
    for case in order:
        rs = groups[case]
        merged: Row = {"case": case, "n": len(rs)}
        for key in rs[0]:
            values = [r.get(key) for r in rs]
            if key == "case":
                continue
            if all(isinstance(v, float | int) and not isinstance(v, bool) for v in values):
                merged[key] = statistics.median(values)  # type: ignore[type-var]
            else:
                merged[key] = values[0] if len(set(map(str, values))) == 1 else "/".join(map(str, values))
        out.append(merged)
    return out


def targets(summary: list[Row], label: str) -> list[Row]:
    by = {r["case"]: r for r in summary}
    warm = by.get(f"warm [{label}]")
    dram = by.get(f"cold, DRAM tier [{label}]")
    ssd = by.get(f"cold, SSD tier [{label}]")
    loader = next((r for r in summary if r["case"].startswith("peer: loader cold")), None)
    naive = by.get("naive serverless (page cache warm)")
    out: list[Row] = []
    if warm and dram and "ttft_s" in dram:
        add = dram["ttft_s"] - warm["ttft_s"]
        out.append({"target": f"[{label}] DRAM-tier TTFT - warm TTFT <= 0.3 s", "value": add, "met": add <= 0.3})
    if warm and ssd and loader:
        add = ssd["ttft_s"] - warm["ttft_s"]
        bound = loader["load_s"] + 0.3
        out.append({"target": f"[{label}] SSD-tier TTFT - warm TTFT <= loader cold + 0.3 s ({bound:.2f} s)",
                    "value": add, "met": add <= bound})
    if dram and naive and "ttft_s" in dram:
        ratio = naive["ttft_s"] / dram["ttft_s"]
        out.append({"target": f"[{label}] naive TTFT / DRAM-tier TTFT >= 10", "value": ratio, "met": ratio >= 10})
        ratio_total = naive["total_s"] / dram["total_s"]
        out.append({"target": f"[{label}] (full result) naive total / DRAM-tier total", "value": ratio_total,
                    "met": ratio_total >= 10})
    return out


def ensure_models(kind: str, tmp: Path) -> tuple[Path, Path]:
    """(Hugging Face dir, checkpoint dir) of the model."""
    if kind == "tiny":
        from faas_llm.checkpoint import convert
        from faas_llm.demo_models import make_demo_model

        hf = make_demo_model(tmp / "tiny", size="tiny")
        ckpt = tmp / "tiny-ckpt"
        convert(hf, ckpt)
        return hf, ckpt
    hf, ckpt = BENCH_DIR / "bench", BENCH_DIR / "bench-ckpt"
    if not (hf / "config.json").exists():
        subprocess.run([sys.executable, "-m", "cli", "model", "make-demo", "--size", "bench", str(hf)],
                       check=True, cwd=REPO)
    if not (ckpt / "index.json").exists():
        subprocess.run([sys.executable, "-m", "cli", "model", "convert", str(hf), str(ckpt)],
                       check=True, cwd=REPO)
    return hf, ckpt


POOLS = {"shm": "4K-page pool", "huge": "huge-page pool"}
BASELINE = ", baseline"


def mount_huge_pool(where: Path, nbytes: int) -> bool:
    """A private tmpfs with ``huge=always`` for the DRAM pool (root only); False where it cannot be mounted."""
    where.mkdir(parents=True, exist_ok=True)
    size_mib = nbytes // 2**20 + 512
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"huge=always,size={size_mib}m,mode=1777",
                           "faas-llm-bench-pool", str(where)], capture_output=True, text=True)
    return proc.returncode == 0


def run_pool(pool: str, args: argparse.Namespace, tmp: Path, ckpt: Path, model_name: str, nbytes: int,
             registry: Path, pushed: bool, repo: Path = REPO, suffix: str = "") -> list[Row]:
    """Every tiered case on one cluster whose DRAM pool is on ``pool`` (``shm``: /dev/shm; ``huge``: huge pages),
    running the code of the checkout ``repo`` (labelled with ``suffix``)."""
    label = POOLS[pool] + suffix
    home = tmp / f"home-{pool}{suffix.replace(' ', '-').replace(',', '')}"
    settings: dict[str, Any] = {
        "prewarm_count": args.prewarm, "dram_capacity_bytes": max(64 * 2**20, int(nbytes * 1.3)),
        "invocations_per_minute": 10**6, "keep_alive_s": args.keep_alive, "registry_url": f"file://{registry}",
        # the Celery prefetch policy would put an evicted model back into DRAM behind the bench's back
        "prefetch_max_replicas": 0,
    }
    mounted: Path | None = None
    if pool == "huge":
        mounted = tmp / "huge-pool"
        if not mount_huge_pool(mounted, settings["dram_capacity_bytes"]):
            print("  note: cannot mount a huge-page tmpfs (needs root): huge-page pool cases left out", flush=True)
            return [{"case": f"cold, DRAM tier [{label}]", "note": "not run: mounting a tmpfs needs root"}]
        settings["dram_pool_dir"] = str(mounted)
    cluster = UpCluster(home, bench_env(home, settings), repo=repo)
    rows: list[Row] = []
    print(f"[{label}] starting faas-llm up under {home} ...", flush=True)
    cluster.start()
    try:
        if not pushed:
            t0 = time.perf_counter()
            cluster.cli("model", "push", str(ckpt), "--name", model_name, timeout=1800)
            print(f"pushed {model_name} ({nbytes / 1e9:.2f} GB) in {time.perf_counter() - t0:.1f} s", flush=True)
        with cluster.client() as client:
            client.create_action(ACTION, model_name, scaling={"keep_alive": args.keep_alive},
                                 limits={"timeout": 300_000}, overwrite=True)
        cases = [("cold, DRAM tier", "dram", []), ("cold, SSD tier", "ssd", ["dram"])]
        if not args.skip_registry:
            cases.append(("cold, registry only", "registry", ["dram", "ssd"]))
        # the first cold start fills SSD and DRAM from the registry (not counted: same as the registry case)
        wait_prewarmed(cluster, args.prewarm)
        print("first cold start (fills the caches; not counted)", flush=True)
        measure(cluster, "fill", args.max_tokens, None)
        for rep in range(args.repeats):
            for case, tier, evicted in cases:
                wait_no_container(cluster)
                if evicted:
                    evict(cluster, model_name, evicted)
                wait_prewarmed(cluster, args.prewarm)
                cold = ""
                if evicted:  # again, right before: nothing may have put it back meanwhile
                    evict(cluster, model_name, evicted)
                    cold = make_cold(args.evict, [cluster.data_dir, registry])
                print(f"[{label} {rep + 1}/{args.repeats}] {case} {cold}", flush=True)
                rows.append({**measure(cluster, f"{case} [{label}]", args.max_tokens, tier), "cold_how": cold})
                rows.append(measure(cluster, f"warm [{label}]", args.max_tokens, "warm"))
    finally:
        cluster.stop()
        if mounted is not None:
            subprocess.run(["umount", str(mounted)], check=False)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = add_common_args(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    parser.add_argument("--model", choices=["bench", "tiny"], default="bench")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=4)
    parser.add_argument("--keep-alive", type=float, default=4.0, help="the action's keep-alive (s)")
    parser.add_argument("--prewarm", type=int, default=1, help="prewarmed runtimes the invoker keeps")
    parser.add_argument("--skip-registry", action="store_true", help="leave out the registry-only case")
    parser.add_argument("--skip-naive", action="store_true", help="leave out the naive serverless peer")
    parser.add_argument("--pools", default="shm,huge",
                        help="DRAM pool kinds to run: shm (/dev/shm, 4 KiB pages), huge (tmpfs huge=always)")
    parser.add_argument("--baseline-repo", type=Path, default=None,
                        help="a checkout of the code before a change (git worktree): each pool runs on a cluster of "
                             "it first (cases labelled ', baseline'), then on one of this checkout")
    parser.add_argument("--peers", type=int, default=None, help="runs of each peer (default: --repeats)")
    parser.add_argument("--evict", choices=["files", "all"], default="files",
                        help="how the SSD/registry cases and the loader peer make the checkpoint cold: take its "
                             "files out of the page cache (files), or drop the whole page cache (all: also the "
                             "runtime's not-yet-mapped library pages, re-read on its first forward)")
    args = parser.parse_args(argv)
    model_name = f"cs-{args.model}"
    raw: list[Row] = []
    loads: list[float] = []
    with tempfile.TemporaryDirectory(prefix="coldstart-bench-") as tmp_name:
        tmp = Path(tmp_name)
        hf, ckpt = ensure_models(args.model, tmp)
        nbytes = sum(f.stat().st_size for f in ckpt.iterdir() if f.is_file())
        registry = tmp / "registry"
        registry.mkdir()
        checkouts = [(REPO, "")]
        if args.baseline_repo is not None:
            checkouts.insert(0, (args.baseline_repo.resolve(), BASELINE))
        runs = [(pool, repo, suffix) for pool in args.pools.split(",") if pool for repo, suffix in checkouts]
        for i, (pool, repo, suffix) in enumerate(runs):
            raw += run_pool(pool, args, tmp, ckpt, model_name, nbytes, registry, pushed=i > 0, repo=repo,
                            suffix=suffix)
            loads.append(os.getloadavg()[0])
        print("peers", flush=True)
        for _ in range(args.peers if args.peers is not None else args.repeats):
            raw.append(loader_row(ckpt, args.evict))
            if not args.skip_naive:
                raw.append(naive_row(hf, args.max_tokens, dropped=False))
        if not args.skip_naive:
            raw.append(naive_row(hf, args.max_tokens, dropped=True))
        loads.append(os.getloadavg()[0])
    summary = summarise(raw)
    cols = ["case", "n", "tier", "ttft_s", "total_s", "load_s", "runtime_ttft_s", "runtime_total_s", "wait_ms",
            "import_s", "note"]
    title = (f"cold start end to end, model {args.model} ({nbytes / 1e9:.2f} GB), max_tokens {args.max_tokens}, "
             f"medians of {args.repeats}; 1-min load average {min(loads):.1f}-{max(loads):.1f}")
    print_table(summary, cols, title=title)
    suffixes = [BASELINE, ""] if args.baseline_repo is not None else [""]
    goals = [g for pool in args.pools.split(",") if pool for suffix in suffixes
             for g in targets(summary, POOLS[pool] + suffix)]
    print_table(goals, title="targets")
    write_json(args.json, summary, targets=goals, raw=raw, load_averages=loads,
               args={k: str(v) for k, v in vars(args).items()})


if __name__ == "__main__":
    main()
