"""Load and soak against a real ``faas-llm up`` cluster: nothing lost, memory steady.

Starts ``faas-llm up --detach`` in a private home (embedded Redis with AOF, gateway under gunicorn,
invoker with process containers, cache agent, Celery worker), pushes the tiny demo model, creates
one action (``max_tokens=1``, greedy), then:

* **load**: ``--invocations N`` (default 10,000) non-blocking invokes at ``--rate`` per second from
  ``--clients`` threads; every accepted (202) activation id is remembered, and the run ends when
  each has its record (or ``--drain-s`` passes). Lost = accepted without a record; duplicates =
  ids listed more than once in the namespace's activation index.
* **soak**: ``--minutes`` (default 10) at the same rate, sampling the RSS of the gateway (gunicorn
  master + workers), the invoker and the cache agent every ``--sample-s``; growth is the mean of
  the last fifth of the samples over the mean of the first fifth after ``--warmup-s``.

    python bench/soak.py --invocations 2000 --minutes 3 --json bench/out/soak.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil
import redis
import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import Row, add_common_args, print_table, write_json
from faas_llm.demo_models import make_demo_model
from faas_llm.keys import Keys
from faas_llm.redis_server import free_port

ACTION = "soak"
NAMESPACE = "guest"


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
        proc = subprocess.run([sys.executable, "-m", "faas_llm.cli", *args], env=self.env, capture_output=True,
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

    def down(self) -> None:
        try:
            self.cli("down", timeout=120)
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            print(f"faas-llm down: {exc}", file=sys.stderr)

    def service(self, name: str) -> psutil.Process:
        state = json.loads((self.home / "data" / "up.json").read_text())
        return psutil.Process(int(state["children"][name][0]))

    def rss(self, name: str, with_children: bool) -> int:
        proc = self.service(name)
        procs = [proc, *(proc.children(recursive=True) if with_children else [])]
        total = 0
        for p in procs:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        return total


class Driver:
    """Non-blocking invokes at a target rate; remembers what the gateway accepted."""

    def __init__(self, cluster: Cluster, clients: int) -> None:
        self.url = f"http://127.0.0.1:{cluster.port}/api/v1/namespaces/_/actions/{ACTION}"
        self.auth = tuple(cluster.key.split(":", 1))
        self.accepted: list[str] = []
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
        try:
            reply = self._session().post(self.url, json={"prompt": f"soak {i}"}, timeout=30)
        except requests.RequestException as exc:
            with self.lock:
                self.refused[type(exc).__name__] += 1
            return
        with self.lock:
            if reply.status_code == 202:
                self.accepted.append(reply.json()["activationId"])
            else:
                self.refused[str(reply.status_code)] += 1

    def run(self, rate: float, count: int | None = None, seconds: float | None = None,
            tick: Any = None) -> float:
        """Send at ``rate``/s until ``count`` sent or ``seconds`` passed; returns the elapsed seconds."""
        start = time.monotonic()
        futures = []
        i = 0
        while (count is None or i < count) and (seconds is None or time.monotonic() - start < seconds):
            due = start + i / rate
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            futures.append(self.pool.submit(self._send, i))
            i += 1
            if tick is not None:
                tick()
        for f in futures:
            f.result()
        return time.monotonic() - start


def settle(r: Any, keys: Keys, ids: list[str], drain_s: float) -> dict[str, Any]:
    """Wait for every id's record; count successes, errors, lost, duplicates."""
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
    listed = Counter(r.zrange(keys.activations_index(NAMESPACE), 0, -1))
    statuses = Counter(rec["response"]["status"] for rec in records.values())
    durations = sorted(rec["duration"] for rec in records.values() if rec.get("duration") is not None)
    return {
        "accepted": len(ids), "records": len(records), "lost": len(remaining),
        "duplicates": sum(1 for a in ids if listed[a] > 1),
        "success": statuses.get("success", 0), "errors": sum(v for k, v in statuses.items() if k != "success"),
        "error_kinds": dict((k, v) for k, v in statuses.items() if k != "success"),
        "p50_run_ms": durations[len(durations) // 2] if durations else None,
        "p99_run_ms": durations[int(len(durations) * 0.99)] if durations else None,
    }


def prepare(cluster: Cluster, home: Path) -> None:
    model = home / "tiny-model"
    make_demo_model(model, size="tiny")
    cluster.cli("model", "push", str(model), "--name", "tiny")
    cluster.cli("action", "create", ACTION, "--model", "tiny", "-p", "max_tokens", "1", "-p", "temperature", "0",
                "--keep-alive", "3600", "--concurrency", "4")


def load_case(cluster: Cluster, args: argparse.Namespace) -> Row:
    r = redis.Redis.from_url(cluster.redis_url, decode_responses=True)
    driver = Driver(cluster, args.clients)
    elapsed = driver.run(args.rate, count=args.invocations)
    counts = settle(r, Keys("faas"), driver.accepted, args.drain_s)
    r.close()
    return {"case": f"load {args.invocations} @ {args.rate:g}/s", "sent": args.invocations,
            "refused": sum(driver.refused.values()), "refused_kinds": dict(driver.refused),
            "send_rate": round(args.invocations / elapsed, 1), **counts}


def soak_case(cluster: Cluster, args: argparse.Namespace) -> tuple[Row, list[dict[str, Any]]]:
    r = redis.Redis.from_url(cluster.redis_url, decode_responses=True)
    driver = Driver(cluster, args.clients)
    samples: list[dict[str, Any]] = []
    start = time.monotonic()
    next_sample = [start]

    def tick() -> None:
        now = time.monotonic()
        if now >= next_sample[0]:
            next_sample[0] = now + args.sample_s
            samples.append({"t": round(now - start, 1), "gateway": cluster.rss("gateway", True),
                            "invoker": cluster.rss("invoker", False), "cache-agent": cluster.rss("cache-agent", False)})

    driver.run(args.rate, seconds=args.minutes * 60, tick=tick)
    counts = settle(r, Keys("faas"), driver.accepted, args.drain_s)
    r.close()
    row: Row = {"case": f"soak {args.minutes:g} min @ {args.rate:g}/s", "sent": len(driver.accepted) +
                sum(driver.refused.values()), "refused": sum(driver.refused.values()), **counts}
    after = [s for s in samples if s["t"] >= args.warmup_s]
    fifth = max(1, len(after) // 5)
    for name in ("gateway", "invoker", "cache-agent"):
        first = sum(s[name] for s in after[:fifth]) / fifth if after else 0
        last = sum(s[name] for s in after[-fifth:]) / fifth if after else 0
        row[f"{name}_rss_mib"] = round(last / 2**20, 1)
        row[f"{name}_growth_%"] = round(100 * (last - first) / first, 2) if first else None
    return row, samples


def main() -> None:
    parser = add_common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--invocations", type=int, default=10_000, help="invocations of the load run (0: skip)")
    parser.add_argument("--rate", type=float, default=40.0, help="target invocations per second")
    parser.add_argument("--clients", type=int, default=16, help="sender threads")
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the soak (0: skip)")
    parser.add_argument("--warmup-s", type=float, default=60.0, help="soak samples before this are warm-up")
    parser.add_argument("--sample-s", type=float, default=5.0, help="RSS sampling period")
    parser.add_argument("--drain-s", type=float, default=300.0, help="longest wait for the last records")
    args = parser.parse_args()
    rows: list[Row] = []
    samples: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="faas-llm-soak-") as tmp:
        home = Path(tmp)
        cluster = Cluster(home, {"invocations_per_minute": 10_000_000, "concurrent_invocations": 100_000,
                                 "dram_capacity_bytes": 64 * 2**20, "runtime_torch_threads": 1,
                                 "gateway_workers": 2, "log_level": "WARNING", "max_containers": 2})
        cluster.up()
        try:
            prepare(cluster, home)
            if args.invocations:
                rows.append(load_case(cluster, args))
                print_table(rows[-1:], title="load")
            if args.minutes:
                row, samples = soak_case(cluster, args)
                rows.append(row)
        finally:
            cluster.down()
    columns = ["case", "sent", "refused", "accepted", "records", "lost", "duplicates", "success", "errors",
               "p50_run_ms", "p99_run_ms", "gateway_rss_mib", "gateway_growth_%", "invoker_rss_mib",
               "invoker_growth_%", "cache-agent_rss_mib", "cache-agent_growth_%"]
    print_table(rows, columns=columns, title="soak.py: zero lost, steady memory")
    write_json(args.json, rows, samples=samples, settings=vars(args) | {"json": str(args.json)})


if __name__ == "__main__":
    main()
