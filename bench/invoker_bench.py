"""Invoker: end-to-end latency of an invocation through a real invoker (queue -> container -> record).

    .venv/bin/python -m bench.invoker_bench [--model-dir DIR] [--repeats 3] [--warm 20] [--cases cold,warm]
        [--json PATH]

Cases, each measured from ``ActivationStore.submit`` to the stored record (what a blocking
invoke waits for), with one invoker process-factory node on a real Redis:

- ``cold, no prewarm``: the scheduler places a new container, a runtime process boots, /init
  loads the model, the run;
- ``cold, prewarmed``: the same with a prewarmed runtime ready (boot already paid);
- ``warm``: a warm container pulls the invocation (XREADGROUP) and runs it; ``overhead`` is the
  latency minus the runtime's own generation time (``result.timings.total_s``); ``invoker_cpu_us`` is the
  invoker's CPU per run: this process's CPU time less its main thread's (the bench's client, which
  submits and waits; the invoker's threads are all the others; the runtime is another process). The
  warm case runs with the default heartbeat (1 s), so the maintenance loop's share per run is as in
  production.

Without --model-dir a tiny demo model is built in a temporary directory.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

from bench.common import Row, add_common_args, print_table, write_json
from faas_llm.activations import ActivationStore
from faas_llm.keys import Keys
from faas_llm.redis_server import RedisServer
from faas_llm.settings import Settings
from faas_llm.types import (
    Action,
    ActivationRecord,
    ContainerState,
    Exec,
    Invocation,
    Scaling,
    new_activation_id,
    now_ms,
)
from invoker.service import Invoker

PARAMS = {"prompt": "Serverless inference starts cold when", "max_tokens": 8, "temperature": 0}


def _annotation(record: ActivationRecord, key: str) -> Any:
    return next((a.value for a in record.annotations if a.key == key), None)


class Bench:
    def __init__(self, settings: Settings) -> None:
        self.keys = Keys(settings.key_prefix)
        self.r: Any = redis.Redis.from_url(settings.redis_url, decode_responses=True, socket_timeout=None)
        self.store = ActivationStore(self.r, self.keys)

    def action(self, name: str, keep_alive: float) -> None:
        action = Action(namespace="guest", name=name, exec=Exec(kind="llm", model="bench-model"),
                        scaling=Scaling(keep_alive=keep_alive))
        self.r.set(self.keys.action("guest", name), action.model_dump_json())

    def invoke(self, name: str) -> tuple[float, ActivationRecord]:
        aid = new_activation_id()
        started = time.perf_counter()
        self.store.submit(Invocation(activation_id=aid, namespace="guest", action=name, subject="guest",
                                     transaction_id=aid, params=PARAMS, deadline_ms=now_ms() + 300_000))
        record = self.store.wait(aid, 300)
        if record is None or not record.response.success:
            raise SystemExit(f"invocation failed: {record.response if record else 'no record'}")
        return time.perf_counter() - started, record


def _row(case: str, samples: list[tuple[float, ActivationRecord]]) -> Row:
    lat = [s for s, _ in samples]
    recs = [r for _, r in samples]
    own = [float(r.response.result["timings"]["total_s"]) for r in recs]
    init = [_annotation(r, "initTime") for r in recs if _annotation(r, "initTime") is not None]
    return {
        "case": case, "n": len(samples),
        "latency_s_median": statistics.median(lat), "latency_s_max": max(lat),
        "overhead_ms_median": statistics.median((a - b) * 1000 for a, b in zip(lat, own, strict=True)),
        "wait_ms_median": statistics.median(_annotation(r, "waitTime") for r in recs),
        "init_ms_median": statistics.median(init) if init else 0,
        "load_s_median": statistics.median((r.loadTime or 0.0) for r in recs),
        "ttft_s_median": statistics.median((r.timeToFirstToken or 0.0) for r in recs),
        "cold": sum(r.coldStart for r in recs),
    }


def run_cold(base: Settings, prewarm: int, repeats: int) -> list[tuple[float, ActivationRecord]]:
    settings = base.model_copy(update={"prewarm_count": prewarm, "node_id": f"bench-{prewarm}"})
    invoker = Invoker(settings).start()
    bench = Bench(settings)
    samples = []
    try:
        for i in range(repeats):
            if prewarm:
                deadline = time.monotonic() + 300
                while not any(c.state is ContainerState.PREWARMED for c in invoker.pool.snapshot()):
                    if time.monotonic() > deadline:
                        raise SystemExit("no prewarmed runtime came up")
                    time.sleep(0.05)
            name = f"cold{prewarm}-{i}"
            bench.action(name, keep_alive=0.0)
            samples.append(bench.invoke(name))
    finally:
        invoker.stop()
    return samples


def run_warm(base: Settings, n: int) -> tuple[list[tuple[float, ActivationRecord]], float]:
    """``n`` warm runs: their samples and the invoker's CPU seconds per run."""
    settings = base.model_copy(update={"prewarm_count": 0, "node_id": "bench-warm", "heartbeat_interval_s": 1.0})
    invoker = Invoker(settings).start()
    bench = Bench(settings)
    try:
        bench.action("warm", keep_alive=600.0)
        bench.invoke("warm")  # the cold start
        for _ in range(5):  # the first warm runs: connections opened, scripts loaded
            bench.invoke("warm")
        cpu, client = time.process_time(), time.thread_time()
        samples = [bench.invoke("warm") for _ in range(n)]
        invoker_cpu = (time.process_time() - cpu) - (time.thread_time() - client)
        return samples, invoker_cpu / max(1, n)
    finally:
        invoker.stop()


def main() -> None:
    parser = add_common_args(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    parser.add_argument("--model-dir", type=Path, default=None, help="a Hugging Face model directory")
    parser.add_argument("--repeats", type=int, default=3, help="cold starts per case")
    parser.add_argument("--warm", type=int, default=20, help="warm invocations")
    parser.add_argument("--cases", default="cold,warm", help="which cases: cold, warm or both (comma-separated)")
    args = parser.parse_args()
    cases = set(args.cases.split(","))
    with tempfile.TemporaryDirectory(prefix="invoker-bench-") as tmp, RedisServer() as server:
        root = Path(tmp)
        model_dir = args.model_dir
        if model_dir is None:
            from faas_llm.demo_models import make_demo_model

            model_dir = make_demo_model(root / "model", size="tiny")
        from faas_llm.registry import FileRegistry

        FileRegistry(root / "registry").push(Path(model_dir), "bench-model")
        base = Settings(redis_url=server.url, data_dir=root / "data", registry_url=f"file://{root / 'registry'}",
                        heartbeat_interval_s=0.1, runtime_drain_s=1.0, loader_direct_io=False)
        rows = []
        if "cold" in cases:
            rows += [_row("cold, no prewarm", run_cold(base, 0, args.repeats)),
                     _row("cold, prewarmed", run_cold(base, 1, args.repeats))]
        if "warm" in cases:
            samples, cpu_s = run_warm(base, args.warm)
            rows.append({**_row("warm", samples), "invoker_cpu_us": round(cpu_s * 1e6, 1)})
    print_table(rows, title=f"invoker end-to-end (model: {Path(model_dir).name})")
    write_json(args.json, rows, model=str(model_dir))


if __name__ == "__main__":
    main()
