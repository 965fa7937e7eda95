"""The invoker's Redis calls of one warm run, in-process: the sequence before issue 11's invoker round (5 round
trips through the redis-py client) against the current one (3: XREADGROUP, the claim script, the completion
script, on a per-thread connection).

    .venv/bin/python -m bench.invoker_redis_bench [--n 3000] [--rounds 4] [--json bench/out/invoker_redis.json]

One private redis-server; for each block ``--n`` invocations are queued first (not measured), then read and
completed one by one as a warm run does (no runtime: the record is built from fixed facts). Blocks alternate
old/new. Per run: this process's CPU (the invoker's side), redis-server's CPU (psutil) and wall time; and
redis-server's ``INFO commandstats`` (calls and usec per command) over 1000 runs of each.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psutil
import redis

from bench.common import Row, add_common_args, print_table, write_json
from faas_llm import migration
from faas_llm.activations import ActivationStore
from faas_llm.errors import ActivationStatus
from faas_llm.keys import Keys
from faas_llm.popularity import record_invocation
from faas_llm.redis_server import RedisServer
from faas_llm.settings import Settings
from faas_llm.thread_redis import ThreadRedis
from faas_llm.types import ActivationRecord, Invocation, new_activation_id, now_ms
from invoker import lifecycle
from invoker.cluster import ActionDefinitions
from invoker.records import RunFacts, build_record

RESULT = {"text": " x", "finish_reason": "length", "timings": {"ttft_s": 0.001, "total_s": 0.002},
          "usage": {"prompt_tokens": 4, "completion_tokens": 1, "total_tokens": 5}}
NODE, CONSUMER = "node0", "node0:1:abc"


class Runs:
    def __init__(self, r: Any, keys: Keys) -> None:
        self.r, self.keys = r, keys
        self.group, self.queue = keys.consumer_group(), keys.action_queue("guest", "ovh")
        self.old_store = ActivationStore(r, keys)
        lean = ThreadRedis(r)
        self.lean = lean
        self.new_store = ActivationStore(r, keys, run_script=lean.run_script)
        settings = Settings(claim_idle_ms=15_000, prefetch_window_s=900, node_id=NODE)
        self.runs = lifecycle.RunLifecycle(settings, r, keys, self.new_store, ActionDefinitions(r, keys), CONSUMER,
                                           run_script=lean.run_script)

    def fill(self, n: int) -> None:
        for _ in range(n):
            aid = new_activation_id()
            self.old_store.submit(Invocation(activation_id=aid, namespace="guest", action="ovh", subject="guest",
                                             transaction_id=aid, deadline_ms=now_ms() + 600_000,
                                             params={"prompt": "The serverless platform", "max_tokens": 1}))
        try:
            self.r.xgroup_create(self.queue, self.group, id="0", mkstream=True)
        except redis.ResponseError:
            pass

    @staticmethod
    def fields(inv: Invocation) -> dict[str, Any]:
        return {"activation_id": inv.activation_id, "node": NODE, "container": "node0-c",
                "url": "http://127.0.0.1:1234", "namespace": "guest", "action": "ovh", "model": "tiny-ovh",
                "deadline_ms": inv.deadline_ms, "started_ms": now_ms(), "max_tokens": 1}

    @staticmethod
    def record(inv: Invocation) -> ActivationRecord:
        t = now_ms()
        return build_record(inv, RunFacts(start_ms=t, end_ms=t + 2, status=ActivationStatus.SUCCESS, result=RESULT,
                                          node=NODE))

    def old(self) -> None:
        """ff317a4's dispatch: claim pipeline, MULTI register + popularity, MULTI unregister, completion script."""
        r, k = self.r, self.keys
        [(_s, [(entry_id, f)])] = r.xreadgroup(self.group, CONSUMER, {self.queue: ">"}, count=1, block=500)
        inv = ActivationStore.decode_message(f)
        claim = k.activation_claim(inv.activation_id)
        pipe = r.pipeline(transaction=False)
        pipe.exists(k.activation(inv.activation_id))
        pipe.set(claim, CONSUMER, nx=True, px=15_000)
        pipe.get(claim)
        pipe.execute()
        run = migration.RunningRun(**self.fields(inv))
        pipe = r.pipeline(transaction=True)
        migration.register_run(r, k, run, pipe=pipe)
        record_invocation(r, k, run.model, 900, pipe=pipe)
        pipe.execute()
        migration.unregister_run(r, k, inv.activation_id, [NODE])
        self.old_store.complete_and_ack(self.record(inv), self.queue, self.group, entry_id, claim, CONSUMER)

    def new(self) -> None:
        """Now: one XREADGROUP, the claim script, the completion script (with the unregistration)."""
        [(entry_id, f)] = self.lean.xreadgroup_one_stream(self.group, CONSUMER, self.queue, 1, 500)
        inv = ActivationStore.decode_message(f)
        run = self.fields(inv)
        if self.runs.claim(inv.activation_id, self.queue, entry_id, run).outcome != lifecycle.RUN:
            raise SystemExit("the claim did not run")
        migration.RunningRun.model_construct(**run)
        self.runs.finish(self.record(inv), self.queue, entry_id, [NODE])


def main(argv: list[str] | None = None) -> None:
    parser = add_common_args(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    parser.add_argument("--n", type=int, default=3000, help="runs per block")
    parser.add_argument("--rounds", type=int, default=4, help="blocks of each sequence (alternating)")
    args = parser.parse_args(argv)
    server = RedisServer().start()
    rows: list[Row] = []
    try:
        r = redis.Redis.from_url(server.url, decode_responses=True, health_check_interval=30)
        pid = int(r.info("server")["process_id"])
        rs = psutil.Process(pid)
        runs = Runs(r, Keys("faas"))
        for i in range(args.rounds):
            order = (("old", runs.old), ("new", runs.new)) if i % 2 == 0 else (("new", runs.new), ("old", runs.old))
            for label, fn in order:
                runs.fill(args.n)
                for _ in range(50):  # warm-up: connections, scripts loaded
                    fn()
                n = args.n - 50
                c0, s0, w0 = time.process_time(), sum(rs.cpu_times()[:2]), time.perf_counter()
                for _ in range(n):
                    fn()
                c1, s1, w1 = time.process_time(), sum(rs.cpu_times()[:2]), time.perf_counter()
                if r.xlen(runs.queue) or r.zcard(runs.keys.node_running(NODE)):
                    raise SystemExit("entries or registrations left behind")
                rows.append({"case": "warm run's Redis calls", "code": label, "round": i + 1, "n": n,
                             "client_cpu_us": (c1 - c0) / n * 1e6, "redis_cpu_us": (s1 - s0) / n * 1e6,
                             "wall_us": (w1 - w0) / n * 1e6, "load_avg_1m": round(os.getloadavg()[0], 2)})
                print(rows[-1], flush=True)
        for label, fn in (("old", runs.old), ("new", runs.new)):
            runs.fill(1000)
            r.config_resetstat()
            for _ in range(1000):
                fn()
            stats = r.info("commandstats")
            for name, v in sorted(stats.items(), key=lambda kv: -kv[1]["usec"]):
                if name == "cmdstat_config|resetstat":
                    continue
                rows.append({"case": "commandstats per run", "code": label, "command": name[len("cmdstat_"):],
                             "calls": v["calls"] / 1000, "usec": v["usec"] / 1000})
    finally:
        server.cleanup()
    print_table([x for x in rows if x["case"].startswith("warm")],
                ["code", "round", "n", "client_cpu_us", "redis_cpu_us", "wall_us", "load_avg_1m"],
                title="the invoker's Redis calls per warm run (in-process)")
    print_table([x for x in rows if x["case"].startswith("commandstats")], ["code", "command", "calls", "usec"],
                title="redis-server INFO commandstats per run")
    write_json(args.json, rows, args={k: str(v) for k, v in vars(args).items()})


if __name__ == "__main__":
    main()
