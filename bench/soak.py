"""Load and soak against a real ``faas-llm up`` cluster: nothing lost, memory steady.

Starts ``faas-llm up --detach`` in a private home (embedded Redis with AOF, gateway under gunicorn,
invoker with process containers, cache agent, Celery worker), pushes the tiny demo model, creates
one action (``max_tokens=1``, greedy), then:

* **load**: ``--invocations N`` (default 10,000) non-blocking invokes at ``--rate`` per second
  (default 100, the rate the overhead benchmark sustains with p99 <= 100 ms) from ``--clients``
  threads; every accepted (202) activation id is remembered, and the run ends when each has its
  record (or ``--drain-s`` passes).
* **soak**: ``--warmup-s`` (default 60) then ``--minutes`` (default 10) more at the same rate. A
  sampler thread (not the sender) reads the RSS of every process every ``--sample-s``: the
  gateway (gunicorn master + each worker), the invoker, the cache agent, the Celery worker (with
  its pool) and the action runtimes (each gunicorn master + worker the invoker started).

Counting (over both cases, one namespace): **lost** = accepted without a record; **duplicates** =
an activation id handed out twice by the gateway + an accepted id listed in the namespace's
activation index other than once + index entries that no accepted invoke explains (a record the
client never asked for); **left pending** = accepted ids whose pending entry is still stored
after their record (must be 0). The gateway's own count of accepted invokes in ``/metrics``
(summed over its gunicorn workers) must equal the client's (``metrics_match``).

Memory growth (the soak's verdict, per service) = median of the samples in the **last window**
(``--window-s``, default 60 s) over the median of the **first window** after the warm-up, minus
one. Medians ignore a single sample taken mid-GC or mid-request. The least-squares slope of all
post-warm-up samples is reported too (as % of the first window per 10 minutes), so a steady climb
that window medians would hide still shows. A process that restarted during the soak (new pid) is
reported, since a restart resets its RSS.

    python bench/soak.py --json bench/out/soak.json                                # the full run
    python bench/soak.py --invocations 2000 --minutes 3 --warmup-s 30 --rate 40   # shortened
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil
import redis
import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import Row, add_common_args, print_table, quiet_gc, write_json
from faas_llm.demo_models import make_demo_model
from faas_llm.keys import Keys
from faas_llm.redis_server import free_port

ACTION = "soak"
NAMESPACE = "guest"
#: the services whose RSS the soak judges (< 5 % growth), then those it only reports
JUDGED = ("gateway", "invoker", "cache-agent")
REPORTED = ("worker", "runtimes")
MiB = 2**20
#: the gateway's count of 202s to non-blocking invokes (summed over its gunicorn workers)
ACCEPTED_METRIC = re.compile(
    r'^faas_gateway_invoke_seconds_count\{(?=[^}]*face="openwhisk")(?=[^}]*mode="nonblocking")'
    r'(?=[^}]*outcome="accepted")[^}]*\} (\S+)$', re.M)


class Cluster:
    """``faas-llm up --detach`` in a private home; ``faas-llm down`` at the end."""

    def __init__(self, home: Path, settings: dict[str, Any]) -> None:
        self.home = home
        self.port = free_port()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("FAAS_LLM_")}
        self.env.update({"HOME": str(home), "FAAS_LLM_PROPERTIES_FILE": str(home / "props"),
                         "FAAS_LLM_DATA_DIR": str(home / "data"), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
        self.env.update({f"FAAS_LLM_{k.upper()}": str(v) for k, v in settings.items()})

    def cli(self, *args: str, timeout: float = 300) -> str:
        proc = subprocess.run([sys.executable, "-m", "cli", *args], env=self.env, capture_output=True,
                              text=True, timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"faas-llm {' '.join(args)} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
        return proc.stdout

    def up(self) -> None:
        self.cli("up", "--detach", "--port", str(self.port), timeout=400)
        self.state = json.loads((self.home / "data" / "up.json").read_text())
        props = dict(line.split("=", 1) for line in (self.home / "props").read_text().splitlines() if "=" in line)
        self.key = props["AUTH"].strip()
        self.redis_url = self.state["redis_url"]

    def metrics_accepted(self) -> int | None:
        """Accepted non-blocking invokes by the gateway's /metrics (every worker, multiprocess mode)."""
        try:
            found = ACCEPTED_METRIC.search(requests.get(f"http://127.0.0.1:{self.port}/metrics", timeout=10).text)
        except requests.RequestException:
            return None
        return int(float(found.group(1))) if found else 0

    def down(self) -> None:
        try:
            self.cli("down", timeout=120)
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            print(f"faas-llm down: {exc}", file=sys.stderr)

    def service(self, name: str) -> psutil.Process:
        state = json.loads((self.home / "data" / "up.json").read_text())
        return psutil.Process(int(state["children"][name][0]))

    def processes(self) -> dict[str, list[psutil.Process]]:
        """The processes of each measured service (runtimes apart from the invoker that started them)."""
        out: dict[str, list[psutil.Process]] = {}
        for name in ("gateway", "cache-agent", "worker"):
            try:
                proc = self.service(name)
                out[name] = [proc, *proc.children(recursive=True)]
            except (KeyError, OSError, ValueError, psutil.Error):
                out[name] = []
        try:
            invoker = self.service("invoker")
            out["invoker"] = [invoker]
            out["runtimes"] = [p for p in invoker.children(recursive=True) if is_runtime(p)]
        except (KeyError, OSError, ValueError, psutil.Error):
            out["invoker"], out["runtimes"] = [], []
        return out

    def sample(self) -> dict[str, Any]:
        """One RSS sample: bytes per service (sum of its processes) and the pids seen."""
        row: dict[str, Any] = {"load1": os.getloadavg()[0], "pids": {}}
        for name, procs in self.processes().items():
            total, pids = 0, []
            for p in procs:
                try:
                    total += p.memory_info().rss
                    pids.append(p.pid)
                except psutil.Error:
                    pass
            row[name] = total
            row["pids"][name] = sorted(pids)
        return row


def is_runtime(proc: psutil.Process) -> bool:
    try:
        return "action_runtime" in " ".join(proc.cmdline())
    except psutil.Error:
        return False


# --- memory verdict (pure) ------------------------------------------------------------------------
def window_growth(samples: Sequence[dict[str, Any]], name: str, warmup_s: float, window_s: float
                  ) -> dict[str, Any]:
    """RSS of ``name`` after the warm-up: first/last window medians, growth % between them, and the
    least-squares slope as % of the first window's median per 10 minutes."""
    after = [(float(s["t"]), float(s[name])) for s in samples if s["t"] >= warmup_s and s.get(name)]
    if len(after) < 2:
        return {"start_mib": None, "end_mib": None, "growth_%": None, "slope_%_per_10min": None, "n": len(after)}
    t0, t1 = after[0][0], after[-1][0]
    first = [v for t, v in after if t <= t0 + window_s]
    last = [v for t, v in after if t >= t1 - window_s]
    start, end = statistics.median(first), statistics.median(last)
    ts, vs = [t for t, _ in after], [v for _, v in after]
    slope = statistics.linear_regression(ts, vs).slope if len(set(ts)) > 1 else 0.0
    return {
        "start_mib": round(start / MiB, 1), "end_mib": round(end / MiB, 1),
        "growth_%": round(100 * (end - start) / start, 2) if start else None,
        "slope_%_per_10min": round(100 * slope * 600 / start, 2) if start else None, "n": len(after),
    }


def restarts(samples: Sequence[dict[str, Any]], name: str) -> int:
    """How many times the set of pids of ``name`` changed between samples (a restart resets RSS)."""
    seen = [tuple(s["pids"].get(name, ())) for s in samples]
    return sum(1 for a, b in itertools.pairwise(seen) if a != b)


# --- load -----------------------------------------------------------------------------------------
class Driver:
    """Non-blocking invokes at a target rate; remembers what the gateway accepted and when."""

    def __init__(self, cluster: Cluster, clients: int) -> None:
        self.url = f"http://127.0.0.1:{cluster.port}/api/v1/namespaces/_/actions/{ACTION}"
        self.auth = tuple(cluster.key.split(":", 1))
        self.accepted: list[str] = []
        self.sent_ms: dict[str, float] = {}
        self.accept_ms: list[float] = []
        self.refused: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.local = threading.local()
        self.pool = ThreadPoolExecutor(clients)

    def _session(self) -> requests.Session:
        if not hasattr(self.local, "s"):
            self.local.s = requests.Session()
            self.local.s.auth = self.auth
        return self.local.s

    def _send(self, i: int) -> None:
        sent = time.time() * 1000
        t0 = time.perf_counter()
        try:
            reply = self._session().post(self.url, json={"prompt": f"soak {i}"}, timeout=30)
        except requests.RequestException as exc:
            with self.lock:
                self.refused[type(exc).__name__] += 1
            return
        took = (time.perf_counter() - t0) * 1000
        with self.lock:
            if reply.status_code == 202:
                aid = reply.json()["activationId"]
                self.accepted.append(aid)
                self.sent_ms[aid] = sent
                self.accept_ms.append(took)
            else:
                self.refused[str(reply.status_code)] += 1

    def run(self, rate: float, count: int | None = None, seconds: float | None = None) -> tuple[int, float]:
        """Send at ``rate``/s until ``count`` sent or ``seconds`` passed; (sent, elapsed seconds)."""
        start = time.monotonic()
        futures = []
        i = 0
        while (count is None or i < count) and (seconds is None or time.monotonic() - start < seconds):
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            futures.append(self.pool.submit(self._send, i))
            i += 1
        for f in futures:
            f.result()
        return i, time.monotonic() - start


def pct(values: Sequence[float], q: float) -> float | None:
    s = sorted(values)
    return round(s[min(len(s) - 1, int(len(s) * q))], 1) if s else None


def settle(r: Any, keys: Keys, driver: Driver, drain_s: float) -> dict[str, Any]:
    """Wait for every accepted id's record; count successes, errors, lost, duplicates, latencies."""
    ids = driver.accepted
    remaining = list(ids)
    records: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + drain_s
    while remaining and time.monotonic() < deadline:
        still = []
        for batch in range(0, len(remaining), 500):
            part = remaining[batch:batch + 500]
            for aid, raw in zip(part, r.mget([keys.activation(a) for a in part]), strict=True):
                if raw is None:
                    still.append(aid)
                else:
                    records[aid] = json.loads(raw)
        remaining = still
        if remaining:
            time.sleep(0.5)
    statuses = Counter(rec["response"]["status"] for rec in records.values())
    durations = [float(rec["duration"]) for rec in records.values() if rec.get("duration") is not None]
    e2e = [rec["end"] - driver.sent_ms[aid] for aid, rec in records.items() if rec.get("end")]
    return {
        "accepted": len(ids), "records": len(records), "lost": len(remaining), "lost_ids": remaining[:20],
        "success": statuses.get("success", 0), "errors": sum(v for k, v in statuses.items() if k != "success"),
        "error_kinds": {k: v for k, v in statuses.items() if k != "success"},
        "p50_accept_ms": pct(driver.accept_ms, 0.5), "p99_accept_ms": pct(driver.accept_ms, 0.99),
        "p50_run_ms": pct(durations, 0.5), "p99_run_ms": pct(durations, 0.99),
        "p50_e2e_ms": pct(e2e, 0.5), "p99_e2e_ms": pct(e2e, 0.99),
    }


def audit(r: Any, keys: Keys, accepted: Sequence[str]) -> dict[str, Any]:
    """Duplicates and leftovers over every case of the run (they share one namespace)."""
    listed = Counter(r.zrange(keys.activations_index(NAMESPACE), 0, -1))
    wanted = set(accepted)
    pending = 0
    for batch in range(0, len(accepted), 500):
        part = accepted[batch:batch + 500]
        pending += sum(1 for raw in r.mget([keys.activation_pending(a) for a in part]) if raw is not None)
    stream = keys.action_queue(NAMESPACE, ACTION)
    return {
        "ids_handed_out_twice": len(accepted) - len(wanted),
        "listed_other_than_once": sum(1 for a in wanted if listed[a] != 1),
        "records_not_accepted": sum(1 for a in listed if a not in wanted),
        "left_pending": pending,
        "queue_len": int(r.xlen(stream)) if r.exists(stream) else 0,
    }


def prepare(cluster: Cluster, home: Path) -> None:
    model = home / "tiny-model"
    make_demo_model(model, size="tiny")
    cluster.cli("model", "push", str(model), "--name", "tiny")
    cluster.cli("action", "create", ACTION, "--model", "tiny", "-p", "max_tokens", "1", "-p", "temperature", "0",
                "--keep-alive", "3600", "--concurrency", "4")


def load_case(cluster: Cluster, args: argparse.Namespace, r: Any) -> tuple[Row, Driver]:
    driver = Driver(cluster, args.clients)
    sent, elapsed = driver.run(args.rate, count=args.invocations)
    counts = settle(r, Keys("faas"), driver, args.drain_s)
    return {"case": f"load {args.invocations} @ {args.rate:g}/s", "sent": sent,
            "refused": sum(driver.refused.values()), "refused_kinds": dict(driver.refused),
            "send_rate": round(sent / elapsed, 1), **counts}, driver


class Sampler:
    """Samples the cluster's RSS every ``period`` seconds on its own thread."""

    def __init__(self, sample: Callable[[], dict[str, Any]], period: float) -> None:
        self.sample, self.period = sample, period
        self.samples: list[dict[str, Any]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)
        self.start = time.monotonic()

    def _loop(self) -> None:
        while not self.stop.is_set():
            row = self.sample()
            row["t"] = round(time.monotonic() - self.start, 1)
            self.samples.append(row)
            self.stop.wait(self.period - (time.monotonic() - self.start) % self.period)

    def __enter__(self) -> Sampler:
        self.start = time.monotonic()
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def soak_case(cluster: Cluster, args: argparse.Namespace, r: Any) -> tuple[Row, Driver, list[dict[str, Any]]]:
    driver = Driver(cluster, args.clients)
    with Sampler(cluster.sample, args.sample_s) as sampler:
        sent, elapsed = driver.run(args.rate, seconds=args.warmup_s + args.minutes * 60)
    counts = settle(r, Keys("faas"), driver, args.drain_s)
    samples = sampler.samples
    row: Row = {"case": f"soak {args.minutes:g} min (+{args.warmup_s:g} s warm-up) @ {args.rate:g}/s", "sent": sent,
                "refused": sum(driver.refused.values()), "refused_kinds": dict(driver.refused),
                "send_rate": round(sent / elapsed, 1), **counts}
    loads = [s["load1"] for s in samples]
    row["load1_median"] = round(statistics.median(loads), 2) if loads else None
    for name in (*JUDGED, *REPORTED):
        g = window_growth(samples, name, args.warmup_s, args.window_s)
        row[f"{name}_start_mib"], row[f"{name}_end_mib"] = g["start_mib"], g["end_mib"]
        row[f"{name}_growth_%"], row[f"{name}_slope_%_per_10min"] = g["growth_%"], g["slope_%_per_10min"]
        row[f"{name}_restarts"] = restarts(samples, name)
    judged = [row[f"{n}_growth_%"] for n in JUDGED]
    row["steady"] = all(g is not None and g < args.max_growth for g in judged)
    return row, driver, samples


def parse_args() -> argparse.Namespace:
    parser = add_common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--invocations", type=int, default=10_000, help="invocations of the load run (0: skip)")
    parser.add_argument("--rate", type=float, default=100.0, help="target invocations per second (both cases)")
    parser.add_argument("--clients", type=int, default=16, help="sender threads")
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the soak after its warm-up (0: skip)")
    parser.add_argument("--warmup-s", type=float, default=60.0, help="soak seconds before the measured part")
    parser.add_argument("--window-s", type=float, default=60.0, help="first/last window whose medians are compared")
    parser.add_argument("--sample-s", type=float, default=5.0, help="RSS sampling period")
    parser.add_argument("--max-growth", type=float, default=5.0, help="RSS growth %% that fails the soak")
    parser.add_argument("--drain-s", type=float, default=300.0, help="longest wait for the last records")
    parser.add_argument("--gateway-workers", type=int, default=2, help="gunicorn workers of the gateway")
    return parser.parse_args()


def run_cases(cluster: Cluster, args: argparse.Namespace, r: redis.Redis
              ) -> tuple[list[Row], list[dict[str, Any]]]:
    """The load run and the soak on an up cluster, then the audit of every accepted id: (rows, RSS samples)."""
    rows: list[Row] = []
    samples: list[dict[str, Any]] = []
    accepted: list[str] = []
    if args.invocations:
        row, driver = load_case(cluster, args, r)
        rows.append(row)
        accepted += driver.accepted
        row["metrics_accepted"] = cluster.metrics_accepted()
        row["metrics_match"] = row["metrics_accepted"] == len(accepted)
        print_table(rows[-1:], title="load")
    if args.minutes:
        row, driver, samples = soak_case(cluster, args, r)
        rows.append(row)
        accepted += driver.accepted
        row["metrics_accepted"] = cluster.metrics_accepted()
        row["metrics_match"] = row["metrics_accepted"] == len(accepted)
    checks = audit(r, Keys("faas"), accepted)
    for row in rows:
        row.update(checks)
        row["duplicates"] = checks["ids_handed_out_twice"] + checks["listed_other_than_once"] + \
            checks["records_not_accepted"]
    return rows, samples


def main() -> None:
    args = parse_args()
    rows: list[Row] = []
    samples: list[dict[str, Any]] = []
    cold: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="faas-llm-soak-") as tmp:
        home = Path(tmp)
        cluster = Cluster(home, {"invocations_per_minute": 10_000_000, "concurrent_invocations": 100_000,
                                 "dram_capacity_bytes": 64 * 2**20, "runtime_torch_threads": 1,
                                 "gateway_workers": args.gateway_workers, "log_level": "WARNING",
                                 "max_containers": 2})
        cluster.up()
        try:
            prepare(cluster, home)
            quiet_gc()  # the senders' own full collections are not the system's latency
            cold = cluster.sample()
            r = redis.Redis.from_url(cluster.redis_url, decode_responses=True)
            rows, samples = run_cases(cluster, args, r)
            r.close()
        finally:
            cluster.down()
    columns = ["case", "sent", "refused", "send_rate", "accepted", "records", "lost", "duplicates", "left_pending",
               "success", "errors", "p50_accept_ms", "p99_accept_ms", "p50_run_ms", "p99_run_ms", "p50_e2e_ms",
               "p99_e2e_ms", "metrics_match"]
    print_table(rows, columns=columns, title="soak.py: zero lost, no duplicates")
    mem = [{"service": n, "cold_mib": round(cold.get(n, 0) / MiB, 1),
            **{k: rows[-1].get(f"{n}_{k}") for k in ("start_mib", "end_mib", "growth_%", "slope_%_per_10min",
                                                     "restarts")}}
           for n in (*JUDGED, *REPORTED)] if args.minutes and rows else []
    if mem:
        print_table(mem, title=f"RSS after {args.warmup_s:g} s warm-up: median of the first vs the last "
                               f"{args.window_s:g} s (< {args.max_growth:g} % judged for {', '.join(JUDGED)})")
    write_json(args.json, rows, samples=samples, memory=mem, cold=cold, settings=vars(args) | {"json": str(args.json)})
    bad = any(row["lost"] or row["duplicates"] or row["left_pending"] for row in rows) or \
        any(row.get("steady") is False or row.get("metrics_match") is False for row in rows)
    sys.exit(1 if bad else 0)

if __name__ == "__main__":
    main()
