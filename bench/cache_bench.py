"""Cache agent: time from ``acquire`` to a model ready in a prewarmed client, per tier.

Cases (the bench model, ~2.6 GB fp16; a real cache-agent process, a real client process):

- ``dram hit``: the checkpoint is in the agent's shared-memory pool; the client maps it
  (no copy) and builds the model on it;
- ``ssd hit``: evicted from DRAM first; the agent reads it with O_DIRECT into its pool,
  verifying checksums, then the client maps it;
- ``registry miss``: evicted from both tiers first; the agent copies it from the file://
  registry into SSD, verifies it, reads it into DRAM;

next to the peers measured in the same run: the checkpoint loader on the SSD copy
(``faas_llm.checkpoint.load_model``, the loader's cold figure: O_DIRECT reads bypass the page
cache), and ``from_pretrained`` on the Hugging Face directory in a warm process (second call
onwards) and in a fresh process (imports included, and the call alone).

    .venv/bin/python -m bench.cache_bench --json bench/out/cache_bench.json
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import add_common_args, median, print_table, write_json

REPO = Path(__file__).resolve().parents[1]
MODEL = "bench/llama"
MiB = 1024 * 1024


# --- the prewarmed client (a separate process; JSON lines on stdin/stdout) ------------------------


def worker_main() -> None:
    import torch
    import transformers  # prewarm: imported before any timing

    from faas_llm.cache_client import CacheClient
    from faas_llm.checkpoint import build_model, load_model
    from faas_llm.settings import get_settings

    torch.set_grad_enabled(False)
    client = CacheClient(get_settings())
    ids = torch.tensor([[1, 5, 9, 2]])
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        out: dict[str, Any] = {}
        if cmd["op"] == "acquire":
            t0 = time.perf_counter()
            lease = client.acquire(cmd["model"])
            t1 = time.perf_counter()
            buffer = lease.buffer(populate=cmd.get("populate", False))
            t2 = time.perf_counter()
            from faas_llm.checkpoint import tensors_from_buffer

            model = build_model(lease.reply.meta_dir, tensors_from_buffer(lease.index, buffer))
            t3 = time.perf_counter()
            model(ids)
            t4 = time.perf_counter()
            out = {"tier": lease.tier.value, "agent_s": lease.reply.load_s, "acquire_s": t1 - t0, "map_s": t2 - t1,
                   "build_s": t3 - t2, "ready_s": t3 - t0, "first_forward_s": t4 - t3}
            del model, buffer
            lease.release()
            del lease
        elif cmd["op"] == "loader":
            t0 = time.perf_counter()
            model, stats = load_model(cmd["path"], settings=get_settings())
            t1 = time.perf_counter()
            model(ids)
            out = {"ready_s": t1 - t0, "read_s": stats.read_seconds, "direct_io": stats.direct_io,
                   "first_forward_s": time.perf_counter() - t1}
            del model
        elif cmd["op"] == "from_pretrained":
            t0 = time.perf_counter()
            model = transformers.AutoModelForCausalLM.from_pretrained(cmd["path"], dtype="auto",
                                                                      local_files_only=True)
            t1 = time.perf_counter()
            model(ids)
            out = {"ready_s": t1 - t0, "first_forward_s": time.perf_counter() - t1}
            del model
        gc.collect()
        print(json.dumps(out), flush=True)


FRESH = """
import time; t0 = time.perf_counter()
import torch, transformers
t1 = time.perf_counter()
m = transformers.AutoModelForCausalLM.from_pretrained({path!r}, dtype="auto", local_files_only=True)
t2 = time.perf_counter()
print(t1 - t0, t2 - t1)
"""


# --- the driver ---------------------------------------------------------------------------------


class Proc:
    def __init__(self, args: list[str], env: dict[str, str], log: Path, pipe: bool = False) -> None:
        self.log = open(log, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(args, cwd=REPO, env=env, stdin=subprocess.PIPE if pipe else None,
                                     stdout=subprocess.PIPE if pipe else self.log, stderr=self.log, text=pipe)

    def call(self, **cmd: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker died; see {self.log.name}")
        return dict(json.loads(line))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def ssd_entry(ssd: Path) -> Path:
    return next(p for p in (ssd / "models").glob("*/*/*") if (p / "index.json").is_file())


def start_agent(settings: Any, env: dict[str, str], log: Path) -> Proc:
    from faas_llm.cache_client import CacheClient

    agent = Proc([sys.executable, "-m", "cache_agent"], env, log)
    client = CacheClient(settings, heartbeat=False)
    deadline = time.monotonic() + 300
    while not client.available():
        if agent.proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"cache agent did not start; see {log}")
        time.sleep(0.1)
    return agent


def main() -> None:
    parser = add_common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--model-dir", type=Path, default=REPO / "bench/out/models/bench")
    parser.add_argument("--ckpt-dir", type=Path, default=REPO / "bench/out/models/bench-ckpt")
    parser.add_argument("--work", type=Path, default=REPO / "bench/out/cache")
    parser.add_argument("--repeat", type=int, default=4)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker_main()
        return

    from faas_llm.cache_client import CacheClient
    from faas_llm.checkpoint import INDEX_FILE, convert, read_index
    from faas_llm.redis_server import RedisServer
    from faas_llm.registry import FileRegistry
    from faas_llm.settings import Settings, child_environ

    if not args.model_dir.is_dir():
        sys.exit(f"no bench model at {args.model_dir}: run `make bench-models` first")
    ckpt = args.ckpt_dir
    if not (ckpt / INDEX_FILE).is_file():
        ckpt = args.work / "ckpt"
        if not (ckpt / INDEX_FILE).is_file():
            convert(args.model_dir, ckpt)
    index = read_index(ckpt)
    args.work.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    raw: dict[str, Any] = {}

    registry = FileRegistry(args.work / "registry")
    if not registry.versions(MODEL):
        t0 = time.perf_counter()
        registry.push(ckpt, MODEL)
        rows.append({"case": "push to registry (setup)", "ready_s": time.perf_counter() - t0})
    redis = RedisServer().start()
    settings = Settings(
        redis_url=redis.url, data_dir=args.work / "data", node_id="bench", registry_url=registry.url,
        dram_capacity_bytes=index.total_bytes + 64 * MiB, ssd_capacity_bytes=4 * index.total_bytes,
        lease_ttl_s=120, cache_socket=args.work / "agent.sock",
    )
    env = child_environ(settings)
    ssd = settings.ssd_path
    agent: Proc | None = None
    worker = Proc([sys.executable, "-m", "bench.cache_bench", "--worker"], env, args.work / "worker.log", pipe=True)
    try:
        assert worker.proc.stdout is not None
        json.loads(worker.proc.stdout.readline())  # prewarmed: torch and transformers imported
        samples: dict[str, list[dict[str, Any]]] = {"registry miss": [], "ssd hit": [], "dram hit": []}
        loader: list[dict[str, Any]] = []
        agent = start_agent(settings, env, args.work / "agent.log")
        client = CacheClient(settings, heartbeat=False)
        client.evict(MODEL, "ssd")
        for case, tiers, repeat in (("registry miss", ("dram", "ssd"), max(1, args.repeat - 2)),
                                    ("ssd hit", ("dram",), args.repeat), ("dram hit", (), args.repeat)):
            for _ in range(repeat):
                for tier in tiers:
                    client.evict(MODEL, tier)  # type: ignore[arg-type]
                result = worker.call(op="acquire", model=MODEL)
                if result["tier"] != case.split()[0]:
                    raise RuntimeError(f"{case}: served from {result['tier']}")
                samples[case].append(result)
                if case == "ssd hit":  # the peer right after, under the same conditions (the VM is noisy)
                    loader.append(worker.call(op="loader", path=str(ssd_entry(ssd))))
        populated = [worker.call(op="acquire", model=MODEL, populate=True) for _ in range(args.repeat)]
        raw.update(samples, populated=populated, loader=loader)
        for case, results in (*samples.items(), ("dram hit, mapped with MAP_POPULATE", populated)):
            rows.append({"case": case, "n": len(results), **{
                k: median([r[k] for r in results])
                for k in ("ready_s", "agent_s", "acquire_s", "map_s", "build_s", "first_forward_s")
            }})
        assert agent is not None
        agent.stop()
        agent = None
        rows.append({"case": "peer: loader on the SSD copy (warm process)", "n": len(loader) - 1,
                     "ready_s": median([r["ready_s"] for r in loader[1:]]),
                     "read_s": median([r["read_s"] for r in loader[1:]]),
                     "first_forward_s": median([r["first_forward_s"] for r in loader[1:]]),
                     "direct_io": loader[0]["direct_io"]})
        rows.append({"case": "peer: loader, first call (region allocated)", "n": 1, "ready_s": loader[0]["ready_s"]})
        warm = [worker.call(op="from_pretrained", path=str(args.model_dir)) for _ in range(args.repeat)]
        rows.append({"case": "peer: from_pretrained, warm process", "n": len(warm) - 1,
                     "ready_s": median([r["ready_s"] for r in warm[1:]]),
                     "first_forward_s": median([r["first_forward_s"] for r in warm[1:]])})
    finally:
        worker.stop()
        if agent is not None:
            agent.stop()
        redis.cleanup()
    fresh = []
    for _ in range(max(1, args.repeat - 1)):
        out = subprocess.run([sys.executable, "-c", FRESH.format(path=str(args.model_dir))], cwd=REPO,
                             capture_output=True, text=True, check=True)
        imports, call = map(float, out.stdout.split())
        fresh.append((imports, call))
    rows.append({"case": "peer: from_pretrained, fresh process (call)", "n": len(fresh),
                 "ready_s": median([c for _, c in fresh])})
    rows.append({"case": "peer: from_pretrained, fresh process (imports + call)", "n": len(fresh),
                 "ready_s": median([i + c for i, c in fresh])})
    by = {r["case"]: r for r in rows}
    loader_s = by["peer: loader on the SSD copy (warm process)"]["ready_s"]
    warm_s = by["peer: from_pretrained, warm process"]["ready_s"]
    for row in rows:
        row["vs_loader"] = round(row["ready_s"] / loader_s, 3)
        row["vs_from_pretrained_warm"] = round(row["ready_s"] / warm_s, 3)
    print_table(rows, ["case", "n", "ready_s", "agent_s", "acquire_s", "map_s", "build_s", "first_forward_s", "read_s",
                       "direct_io", "vs_loader", "vs_from_pretrained_warm"],
                title=f"cache agent, {MODEL} ({index.total_bytes / 1e9:.2f} GB region)")
    write_json(args.json, rows, model_bytes=index.total_bytes, samples=raw)
    with contextlib.suppress(Exception):
        shutil.rmtree(args.work / "data" / "bench" / "meta", ignore_errors=True)


if __name__ == "__main__":
    main()
