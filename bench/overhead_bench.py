"""Warm-path overhead and throughput of the whole system under a real ``faas-llm up`` (issue 11).

    .venv/bin/python -m bench.overhead_bench [--n 300] [--rates 25,50,100,150,200,250] [--duration 8]
        [--baseline-repo DIR] [--peer LABEL=DIR ...] [--rounds 1] [--json bench/out/overhead.json]

A load generator (threads, one keep-alive HTTP connection each, loopback only, a bounded number
of requests and seconds) against the gateway of a one-node cluster, with the tiny demo model and
``max_tokens=1`` (an action with ``limits.concurrency`` = ``--action-concurrency``, one warm
container after a first cold start that is not counted):

- ``sequential``: one caller, ``--n`` blocking invokes one after the other
  (``POST /api/v1/namespaces/_/actions/A?blocking=true``) and ``--n`` OpenAI completions
  (``POST /v1/completions``): latency at the client, the runtime's own time
  (``result.timings.total_s``: tokenise, generate, decode), and **overhead = latency - own time**,
  p50 / p99 / mean;
- ``open loop @ R/s``: blocking invokes arriving at a fixed rate R for ``--duration`` seconds (latency
  counted from each request's scheduled time, so a backed-up system is not hidden); achieved rate and
  p50/p99 latency. The sustained rate is the highest R whose p99 stays <= 100 ms with >= 99%
  of the requests answered.

With ``--baseline-repo DIR`` (a checkout of an older commit, e.g. ``git worktree add``) the same
cases run against a cluster started from that checkout first, then from this one, ``--rounds``
times, in the same run on the same machine: the before/after of a change.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from base64 import b64encode
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psutil

from bench.common import Row, add_common_args, print_table, quiet_gc, write_json
from bench.up_cluster import REPO, UpCluster, bench_env

ACTION = "ovh"
MODEL = "tiny-ovh"
PROMPT = "The serverless platform"
P99_LIMIT_S = 0.100


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


class Caller:
    """One keep-alive HTTP/1.1 connection to the gateway (http.client: little client-side CPU)."""

    def __init__(self, port: int, auth: str) -> None:
        self.port = port
        self.headers = {"Authorization": "Basic " + b64encode(auth.encode()).decode(),
                        "Content-Type": "application/json"}
        self.bearer = {"Authorization": f"Bearer {auth}", "Content-Type": "application/json"}
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)

    def post(self, path: str, body: dict[str, Any], bearer: bool = False) -> tuple[int, Any]:
        data = json.dumps(body).encode()
        for attempt in (0, 1):
            try:
                self.conn.request("POST", path, body=data, headers=self.bearer if bearer else self.headers)
                resp = self.conn.getresponse()
                raw = resp.read()
                if resp.getheader("Connection", "").lower() == "close":
                    self.conn.close()
                return resp.status, json.loads(raw) if raw else None
            except (http.client.HTTPException, ConnectionError):
                self.conn.close()
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def invoke(self) -> float:
        """One blocking invoke; returns the runtime's own seconds (raises on a failed activation)."""
        status, body = self.post(f"/api/v1/namespaces/_/actions/{ACTION}?blocking=true", {"prompt": PROMPT})
        if status != 200 or not isinstance(body, dict):
            raise RuntimeError(f"invoke -> {status}: {str(body)[:300]}")
        return float(body["response"]["result"]["timings"]["total_s"])

    def completion(self) -> float | None:
        status, body = self.post("/v1/completions", {"model": ACTION, "prompt": PROMPT, "max_tokens": 1},
                                 bearer=True)
        if status != 200:
            raise RuntimeError(f"completion -> {status}: {str(body)[:300]}")
        return None  # the OpenAI body carries no runtime timings

    def close(self) -> None:
        self.conn.close()


def role_of(cmdline: list[str]) -> str:
    """Which part of the cluster a process is, from its command line."""
    line = " ".join(cmdline)
    for needle, role in (("action_runtime", "runtime"), ("redis-server", "redis"), ("gunicorn", "gateway"),
                         ("gateway", "gateway"), ("invoker", "invoker"), ("cache_agent", "cache_agent"),
                         ("cache-agent", "cache_agent"), ("worker", "celery")):
        if needle in line:
            return role
    return "other"


def cpu_by_role(cluster: UpCluster) -> dict[str, float]:
    """CPU seconds (user + system) so far of every process of the cluster, summed by role, and this
    process (the load generator) as ``client``."""
    assert cluster.proc is not None
    out: dict[str, float] = {"client": sum(os.times()[:2])}
    try:
        procs = [psutil.Process(cluster.proc.pid)]
        procs += procs[0].children(recursive=True)
    except psutil.Error:
        return out
    for proc in procs:
        try:
            role = "up" if proc.pid == cluster.proc.pid else role_of(proc.cmdline())
            times = proc.cpu_times()
        except psutil.Error:
            continue
        out[role] = out.get(role, 0.0) + times.user + times.system
    return out


def sequential(cluster: UpCluster, n: int) -> list[Row]:
    caller = Caller(cluster.port, cluster.auth)
    rows = []
    try:
        for _ in range(10):  # warm-up: connections, caches, first-time code paths
            caller.invoke()
        lat, own = [], []
        cpu_before = cpu_by_role(cluster)
        for _ in range(n):
            t0 = time.perf_counter()
            own.append(caller.invoke())
            lat.append(time.perf_counter() - t0)
        cpu_after = cpu_by_role(cluster)
        over = [a - b for a, b in zip(lat, own, strict=True)]
        rows.append({
            "case": "sequential blocking invoke", "n": n,
            "latency_p50_ms": pct(lat, 0.5) * 1e3, "latency_p99_ms": pct(lat, 0.99) * 1e3,
            "own_p50_ms": pct(own, 0.5) * 1e3,
            "overhead_p50_ms": pct(over, 0.5) * 1e3, "overhead_p99_ms": pct(over, 0.99) * 1e3,
            "overhead_mean_ms": statistics.fmean(over) * 1e3, "inv_per_s": n / sum(lat),
        })
        # CPU per invocation of each part (all its processes), over the same n blocking invokes
        cpu = {role: (cpu_after[role] - cpu_before.get(role, 0.0)) * 1e3 / n for role in cpu_after}
        rows.append({"case": "CPU ms per blocking invoke", "n": n, **{f"cpu_{k}_ms": round(v, 2)
                                                                   for k, v in sorted(cpu.items())},
                     "cpu_total_ms": round(sum(v for k, v in cpu.items() if k != "client"), 2)})
        # OpenAI completions: the body has no runtime timings; the runtime's own time is taken as the
        # blocking rows' median (same model, same prompt, one token)
        own_median = statistics.median(own)
        lat = []
        for _ in range(n):
            t0 = time.perf_counter()
            caller.completion()
            lat.append(time.perf_counter() - t0)
        rows.append({
            "case": "sequential OpenAI completion", "n": n,
            "latency_p50_ms": pct(lat, 0.5) * 1e3, "latency_p99_ms": pct(lat, 0.99) * 1e3,
            "own_p50_ms": own_median * 1e3,
            "overhead_p50_ms": (pct(lat, 0.5) - own_median) * 1e3,
            "overhead_p99_ms": (pct(lat, 0.99) - own_median) * 1e3,
            "overhead_mean_ms": (statistics.fmean(lat) - own_median) * 1e3, "inv_per_s": n / sum(lat),
        })
    finally:
        caller.close()
    return rows


def open_loop(cluster: UpCluster, rate: float, duration_s: float, threads: int) -> Row:
    """Blocking invokes scheduled at ``rate``/s for ``duration_s``; latency from each scheduled time."""
    total = int(rate * duration_s)
    start = time.perf_counter() + 0.2
    schedule = iter(range(total))
    lock = threading.Lock()
    lat: list[float] = []
    own: list[float] = []
    errors: list[str] = []
    hard_stop = start + duration_s + 30  # a bounded run even when the system falls behind

    def worker() -> None:
        caller = Caller(cluster.port, cluster.auth)
        try:
            while True:
                with lock:
                    i = next(schedule, None)
                if i is None:
                    return
                due = start + i / rate
                now = time.perf_counter()
                if now > hard_stop:
                    with lock:
                        errors.append("not sent: past the run's time bound")
                    continue
                if due > now:
                    time.sleep(due - now)
                try:
                    mine = caller.invoke()
                except Exception as exc:  # counted and reported
                    with lock:
                        errors.append(str(exc)[:200])
                    continue
                done = time.perf_counter()
                with lock:
                    lat.append(done - due)
                    own.append(mine)
        finally:
            caller.close()

    pool = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    wall = time.perf_counter() - start
    ok = len(lat)
    row: Row = {"case": f"open loop @ {rate:g}/s", "n": total, "answered": ok, "errors": len(errors),
                "achieved_per_s": ok / wall if wall > 0 else 0.0}
    if ok:
        over = [a - b for a, b in zip(lat, own, strict=True)]
        row.update(latency_p50_ms=pct(lat, 0.5) * 1e3, latency_p99_ms=pct(lat, 0.99) * 1e3,
                   overhead_p50_ms=pct(over, 0.5) * 1e3, overhead_p99_ms=pct(over, 0.99) * 1e3)
    row["p99_ok"] = bool(ok >= 0.99 * total and ok and pct(lat, 0.99) <= P99_LIMIT_S)
    if errors:
        row["first_error"] = errors[0][:120]
    return row


def make_cluster(home: Path, repo: Path, args: argparse.Namespace) -> UpCluster:
    env = bench_env(home, {
        "gateway_workers": args.gateway_workers, "gateway_threads": args.gateway_threads,
        "invocations_per_minute": 10**7, "concurrent_invocations": 10**6,
        "dram_capacity_bytes": 64 * 1024 * 1024, "prewarm_count": 0, "keep_alive_s": 3600,
        "runtime_torch_threads": args.runtime_torch_threads,
    })
    return UpCluster(home, env, repo=repo)


def run_config(label: str, repo: Path, model_dir: Path, args: argparse.Namespace, tmp: Path) -> list[Row]:
    home = tmp / f"{label}-{time.monotonic_ns()}"
    cluster = make_cluster(home, repo, args)
    print(f"[{label}] starting faas-llm up from {repo} ...", flush=True)
    cluster.start()
    rows: list[Row] = []
    try:
        cluster.cli("model", "push", str(model_dir), "--name", MODEL)
        with cluster.client() as client:
            client.create_action(ACTION, MODEL, parameters={"max_tokens": 1, "temperature": 0},
                                 limits={"concurrency": args.action_concurrency},
                                 scaling={"keep_alive": 3600}, overwrite=True)
            first = client.invoke(ACTION, {"prompt": PROMPT}, blocking=True, timeout_ms=60_000)
            record = first.record or client.wait_activation(first.activation_id, 300)
            if not record.response.success:
                raise SystemExit(f"[{label}] the first (cold) invoke failed: {record.response}")
        quiet_gc()  # the load generator's own full collections are not the system's latency
        load = os.getloadavg()[0]
        rows += sequential(cluster, args.n)
        for rate in args.rates:
            row = open_loop(cluster, rate, args.duration, args.threads)
            rows.append(row)
            print(f"[{label}] {row}", flush=True)
        for row in rows:
            row["code"] = label
            row.setdefault("load_avg_1m", round(load, 2))
        ok_rates = [float(r["case"].split("@ ")[1].rstrip("/s")) for r in rows
                    if r["case"].startswith("open loop") and r.get("p99_ok")]
        rows.append({"case": "sustained rate with p99 <= 100 ms", "code": label,
                     "inv_per_s": max(ok_rates) if ok_rates else 0.0, "load_avg_1m": round(os.getloadavg()[0], 2)})
    finally:
        cluster.stop()
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = add_common_args(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    parser.add_argument("--n", type=int, default=300, help="sequential invocations per case")
    parser.add_argument("--rates", type=lambda s: [float(x) for x in s.split(",")], default=[25, 50, 100, 150, 200])
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per open-loop rate")
    parser.add_argument("--threads", type=int, default=24, help="client threads of the open loop")
    parser.add_argument("--action-concurrency", type=int, default=8, help="the action's limits.concurrency")
    parser.add_argument("--gateway-workers", type=int, default=2)
    parser.add_argument("--gateway-threads", type=int, default=16)
    parser.add_argument("--runtime-torch-threads", type=int, default=0,
                        help="the runtimes' torch intra-op threads (0: torch's default, one per core)")
    parser.add_argument("--baseline-repo", type=Path, default=None, help="a checkout of the code before a change")
    parser.add_argument("--peer", action="append", default=[], metavar="LABEL=DIR",
                        help="another checkout to run beside baseline and current (repeatable), e.g. this "
                        "commit with a sitecustomize.py at its root that hides an optional package")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--model-dir", type=Path, default=None, help="the tiny model (default: built here)")
    args = parser.parse_args(argv)

    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="overhead-bench-") as tmp_name:
        tmp = Path(tmp_name)
        model_dir = args.model_dir
        if model_dir is None:
            from faas_llm.demo_models import make_demo_model

            model_dir = make_demo_model(tmp / "tiny", size="tiny")
        configs = [("current", REPO)]
        for peer in reversed(args.peer):
            label, _, directory = peer.partition("=")
            configs.insert(0, (label, Path(directory).resolve()))
        if args.baseline_repo is not None:
            configs.insert(0, ("baseline", args.baseline_repo.resolve()))
        for _ in range(args.rounds):
            for label, repo in configs:
                rows += run_config(label, repo, Path(model_dir), args, tmp)
    cols = ["case", "code", "n", "answered", "errors", "latency_p50_ms", "latency_p99_ms", "own_p50_ms",
            "overhead_p50_ms", "overhead_p99_ms", "overhead_mean_ms", "achieved_per_s", "inv_per_s", "p99_ok",
            "load_avg_1m"]
    cpu_cols = sorted({k for r in rows for k in r if k.startswith("cpu_")})
    print_table([r for r in rows if r["case"].startswith("CPU")], ["case", "code", *cpu_cols],
                title="CPU ms per blocking invoke, by part of the cluster (cpu_total excludes the client)")
    print_table([r for r in rows if not r["case"].startswith("CPU")], cols,
                title=f"warm-path overhead, tiny model, max_tokens=1 "
                      f"(gateway {args.gateway_workers}x{args.gateway_threads}, "
                      f"action concurrency {args.action_concurrency})")
    write_json(args.json, rows, args={k: str(v) for k, v in vars(args).items()})


if __name__ == "__main__":
    main()
