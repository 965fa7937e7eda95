"""GPU loading benchmark (issue 3): storage -> pinned staging -> GPU pipeline vs the copy limit.

Needs a CUDA GPU (it exits with a message otherwise). Run from the repository root::

    .venv/bin/python -m bench.gpu_load [--repeats 3] [--size bench|tiny] [--json PATH]

It builds the demo model and our checkpoint under bench/out/ if missing, then measures each case
in a fresh process that first does what a prewarmed runtime has done (imports torch, transformers
and the model's module, creates the CUDA context, pins the staging buffers; ``imports s``: what a
naive fresh process pays on top), median of ``--repeats`` in that process:

- ``pinned H2D copy``: the host-to-GPU bandwidth of one pinned buffer copied in 64 MiB
  pieces (the limit the pipeline can reach);
- ``faas-llm load_to_device`` (warm: files in the page cache; cold: page cache dropped when
  root) — bytes in GPU memory, verified;
- ``faas-llm load_model(device="cuda")`` — model ready on the GPU (forward pass runs);
- ``safetensors load_file(device="cuda")`` from the page cache;
- ``transformers from_pretrained cuda``: what a user would write (``device_map="cuda"``, the
  checkpoint's dtype), page cache warm and dropped: model ready on the GPU.

``--sweep`` adds the pipeline's reader threads x read size, page cache warm and dropped.

Targets: warm ``load_to_device`` >= 80% of the pinned-copy bandwidth; >= 3x faster than
``safetensors`` to CUDA from the page cache.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import add_common_args, drop_page_cache, median, print_table, write_json

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "bench" / "out" / "models"
MiB = 1024 * 1024
CASES = ["pinned H2D copy", "faas-llm load_to_device", "faas-llm load_model cuda", "safetensors load_file cuda",
         "transformers from_pretrained cuda"]


def dirs(size: str) -> tuple[Path, Path]:
    hf = MODELS / ("bench" if size == "bench" else "gpu-tiny")
    return hf, hf.with_name(hf.name + "-ckpt")


def _warm(files: list[Path]) -> None:
    buf = bytearray(64 * MiB)
    for path in files:
        with open(path, "rb", buffering=0) as f:
            while f.readinto(buf):
                pass


def _prewarm() -> float:
    """What a prewarmed runtime has done before its first request: import torch, transformers and the
    model's module, create the CUDA context. Returns the seconds it took (the naive baseline pays it)."""
    started = time.perf_counter()
    import torch
    import transformers.models.llama.modeling_llama  # noqa: F401

    torch.cuda.init()
    torch.empty(1, device="cuda")
    torch.cuda.synchronize()
    return time.perf_counter() - started


def _one(case: str, mode: str, hf: Path, ckpt: Path, index: Any, options: dict[str, Any]) -> dict[str, Any]:
    import torch

    from faas_llm.checkpoint import load_model, load_to_device

    dev = torch.device("cuda")
    theirs = case.startswith(("safetensors", "transformers"))
    files = sorted(hf.glob("*.safetensors")) if theirs else sorted(ckpt.glob("partition-*"))
    cache = "n/a"
    if case != "pinned H2D copy":
        if mode == "cold":
            cache = "drop_caches" if drop_page_cache() else "could not drop (not root)"
        else:
            _warm(files)
            cache = "warm"
    torch.cuda.synchronize()
    if case == "pinned H2D copy":
        n = index.total_bytes
        host = torch.empty(n, dtype=torch.uint8, pin_memory=True)
        host.fill_(1)
        gpu = torch.empty(n, dtype=torch.uint8, device=dev)
        torch.cuda.synchronize()
        started = time.perf_counter()
        for off in range(0, n, 64 * MiB):
            gpu[off:off + 64 * MiB].copy_(host[off:off + 64 * MiB], non_blocking=True)
        torch.cuda.synchronize()
        return {"seconds": time.perf_counter() - started, "nbytes": n, "cache": cache}
    started = time.perf_counter()
    if case == "faas-llm load_to_device":
        region, stats = load_to_device(ckpt, index, device=dev, **options)
        torch.cuda.synchronize()
        out = {"seconds": time.perf_counter() - started, "nbytes": region.numel(), "cache": cache,
               "threads": stats.threads, "chunk MiB": stats.chunk_bytes // MiB}
        del region
        return out
    if case == "faas-llm load_model cuda":
        model, stats = load_model(ckpt, device=dev)
        torch.cuda.synchronize()
        seconds = time.perf_counter() - started
        with torch.inference_mode():
            model(torch.tensor([[1, 2, 3, 4]], device=dev))
        return {"seconds": seconds, "nbytes": index.total_bytes, "cache": cache, "read s": stats.read_seconds,
                "build s": stats.build_seconds, "threads": stats.threads}
    if case == "transformers from_pretrained cuda":
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(hf, local_files_only=True, dtype="auto", device_map="cuda")
        torch.cuda.synchronize()
        seconds = time.perf_counter() - started
        with torch.inference_mode():
            model(torch.tensor([[1, 2, 3, 4]], device=dev))
        return {"seconds": seconds, "nbytes": sum(p.nbytes for p in model.parameters()), "cache": cache}
    from safetensors.torch import load_file

    tensors = {}
    for path in files:
        tensors.update(load_file(path, device="cuda"))
    torch.cuda.synchronize()
    return {"seconds": time.perf_counter() - started, "nbytes": sum(t.nbytes for t in tensors.values()),
            "cache": cache}


#: (mode, threads, chunk MiB) of the sweep of the pipeline's two knobs
SWEEP = [("warm", t, c) for c in (16, 64) for t in (1, 2, 4, 8, 16)] + [("cold", t, 16) for t in (1, 4, 8, 16)]


def child(case: str, mode: str, size: str, repeats: int) -> list[dict[str, Any]]:
    imports_s = _prewarm()
    from faas_llm.checkpoint import read_index
    from faas_llm.checkpoint.gpu import prepare_staging

    hf, ckpt = dirs(size)
    index = read_index(ckpt)
    if case == "sweep":
        runs = []
        for sweep_mode, threads, chunk in SWEEP:
            prepare_staging(threads, chunk * MiB)
            for _ in range(repeats):
                res = _one("faas-llm load_to_device", sweep_mode, hf, ckpt, index,
                           {"threads": threads, "chunk_bytes": chunk * MiB})
                runs.append({**res, "mode": sweep_mode, "imports s": imports_s})
        return runs
    prepare_staging()  # as the prewarmed runtime does
    return [{**_one(case, mode, hf, ckpt, index, {}), "imports s": imports_s} for _ in range(repeats)]


def main(argv: list[str] | None = None) -> None:
    parser = add_common_args(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", choices=["bench", "tiny"], default="bench")
    parser.add_argument("--sweep", action="store_true", help="also sweep the pipeline's threads and read size")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="warm", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print("RESULT " + json.dumps(child(args.child, args.mode, args.size, args.repeats)), flush=True)
        return

    import torch

    if not torch.cuda.is_available():
        raise SystemExit("gpu_load: no CUDA device here; run it on a GPU machine")
    hf, ckpt = dirs(args.size)
    if not hf.is_dir():
        from faas_llm.demo_models import make_demo_model

        make_demo_model(hf, size=args.size)
    if not ckpt.is_dir():
        from faas_llm.checkpoint import convert

        convert(hf, ckpt)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "HF_HUB_OFFLINE": "1"}
    results: dict[tuple[str, str], list[dict[str, Any]]] = {}
    plan = [(case, mode) for mode in ("warm", "cold") for case in CASES
            if not (mode == "cold" and case in ("pinned H2D copy", "safetensors load_file cuda"))]
    if args.sweep:
        plan.append(("sweep", "-"))
    for case, mode in plan:
        proc = subprocess.run(
            [sys.executable, "-m", "bench.gpu_load", "--child", case, "--mode", mode, "--size", args.size,
             "--repeats", str(args.repeats)],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
        line = next((x for x in reversed(proc.stdout.splitlines()) if x.startswith("RESULT ")), None)
        runs = json.loads(line[7:]) if line else [{"error": (proc.stderr.strip().splitlines() or ["?"])[-1]}]
        if case == "sweep":
            for run in runs:
                if "seconds" in run:
                    key = (f"load_to_device {run['threads']} threads x {run['chunk MiB']} MiB", run["mode"])
                    results.setdefault(key, []).append(run)
        else:
            results[(case, mode)] = runs
        print(mode, case, [r.get("error") or round(r["seconds"], 3) for r in runs], flush=True)
    def typical(key: tuple[str, str]) -> float:
        values = [r["seconds"] for r in results.get(key, []) if "seconds" in r]
        return median(values) if values else float("nan")

    pinned, ours = typical(("pinned H2D copy", "warm")), typical(("faas-llm load_to_device", "warm"))
    rows = []
    for (case, mode), runs in results.items():
        ok = [r for r in runs if "seconds" in r]
        if not ok:
            rows.append({"case": case, "mode": mode, "note": runs[0].get("error", "")})
            continue
        s = median([r["seconds"] for r in ok])
        row: dict[str, Any] = {"case": case, "mode": mode, "seconds": round(s, 3),
                               "GB/s": round(ok[0]["nbytes"] / s / 1e9, 2),
                               "% of pinned copy": round(100 * pinned / s, 1), "x ours (warm)": round(s / ours, 2),
                               "cache": ok[0]["cache"], "runs": len(ok),
                               "imports s": round(median([r["imports s"] for r in ok]), 2)}
        for extra in ("read s", "build s", "threads"):
            if extra in ok[0]:
                row[extra] = round(median([r[extra] for r in ok]), 3)
        rows.append(row)
    print_table(rows, title=f"GPU loading on {torch.cuda.get_device_name(0)}, median of {args.repeats}")
    write_json(args.json, rows)


if __name__ == "__main__":
    main()
