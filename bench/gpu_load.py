"""GPU loading benchmark (issue 3): storage -> pinned staging -> GPU pipeline vs the copy limit.

Needs a CUDA GPU (it exits with a message otherwise). Run from the repository root::

    .venv/bin/python -m bench.gpu_load [--repeats 3] [--size bench|tiny] [--json PATH]

It builds the demo model and our checkpoint under bench/out/ if missing, then measures,
each case in a fresh process, median of ``--repeats``:

- ``pinned H2D copy``: the host-to-GPU bandwidth of one pinned buffer copied in 64 MiB
  pieces (the limit the pipeline can reach);
- ``faas-llm load_to_device`` (warm: files in the page cache; cold: page cache dropped when
  root) — bytes in GPU memory, verified;
- ``faas-llm load_model(device="cuda")`` — model ready on the GPU (forward pass runs);
- ``safetensors load_file(device="cuda")`` from the page cache.

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
CASES = ["pinned H2D copy", "faas-llm load_to_device", "faas-llm load_model cuda", "safetensors load_file cuda"]


def dirs(size: str) -> tuple[Path, Path]:
    hf = MODELS / ("bench" if size == "bench" else "gpu-tiny")
    return hf, hf.with_name(hf.name + "-ckpt")


def _warm(files: list[Path]) -> None:
    buf = bytearray(64 * MiB)
    for path in files:
        with open(path, "rb", buffering=0) as f:
            while f.readinto(buf):
                pass


def child(case: str, mode: str, size: str) -> dict[str, Any]:
    import torch

    from faas_llm.checkpoint import load_model, load_to_device, read_index

    hf, ckpt = dirs(size)
    index = read_index(ckpt)
    dev = torch.device("cuda")
    torch.cuda.init()
    torch.empty(1, device=dev)  # create the context before timing
    files = sorted(hf.glob("*.safetensors")) if case.startswith("safetensors") else sorted(ckpt.glob("partition-*"))
    cache = "n/a"
    if case != "pinned H2D copy":
        if mode == "cold":
            cache = "drop_caches" if drop_page_cache() else "could not drop (not root)"
        else:
            _warm(files)
            cache = "warm"
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
        region, _ = load_to_device(ckpt, index, device=dev)
        torch.cuda.synchronize()
        nbytes = region.numel()
    elif case == "faas-llm load_model cuda":
        model, _ = load_model(ckpt, device=dev)
        torch.cuda.synchronize()
        nbytes = index.total_bytes
        seconds = time.perf_counter() - started
        with torch.inference_mode():
            model(torch.tensor([[1, 2, 3, 4]], device=dev))
        return {"seconds": seconds, "nbytes": nbytes, "cache": cache, "forward_ok": True}
    else:
        from safetensors.torch import load_file

        tensors = {}
        for path in files:
            tensors.update(load_file(path, device="cuda"))
        torch.cuda.synchronize()
        nbytes = sum(t.nbytes for t in tensors.values())
    return {"seconds": time.perf_counter() - started, "nbytes": nbytes, "cache": cache}


def main(argv: list[str] | None = None) -> None:
    parser = add_common_args(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", choices=["bench", "tiny"], default="bench")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="warm", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print("RESULT " + json.dumps(child(args.child, args.mode, args.size)), flush=True)
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
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    results: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for _ in range(args.repeats):
        for mode in ("warm", "cold"):
            for case in CASES:
                if mode == "cold" and case in ("pinned H2D copy", "safetensors load_file cuda"):
                    continue
                proc = subprocess.run(
                    [sys.executable, "-m", "bench.gpu_load", "--child", case, "--mode", mode, "--size", args.size],
                    cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
                line = next((x for x in reversed(proc.stdout.splitlines()) if x.startswith("RESULT ")), None)
                res = json.loads(line[7:]) if line else {"error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
                results.setdefault((case, mode), []).append(res)
                print(mode, case, res.get("error") or f"{res['seconds']:.3f} s", flush=True)
    pinned = median([r["seconds"] for r in results[("pinned H2D copy", "warm")] if "seconds" in r])
    ours = median([r["seconds"] for r in results[("faas-llm load_to_device", "warm")] if "seconds" in r])
    rows = []
    for (case, mode), runs in results.items():
        ok = [r for r in runs if "seconds" in r]
        if not ok:
            rows.append({"case": case, "mode": mode, "note": runs[0].get("error", "")})
            continue
        s = median([r["seconds"] for r in ok])
        rows.append({"case": case, "mode": mode, "seconds": round(s, 3), "GB/s": round(ok[0]["nbytes"] / s / 1e9, 2),
                     "% of pinned copy": round(100 * pinned / s, 1), "ours faster": round(s / ours, 2),
                     "cache": ok[0]["cache"], "runs": len(ok)})
    print_table(rows, title=f"GPU loading on {torch.cuda.get_device_name(0)}, median of {args.repeats}")
    write_json(args.json, rows)


if __name__ == "__main__":
    main()
