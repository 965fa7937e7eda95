"""Checkpoint loading benchmark (issue 3): our loader against the disk's own limit and the peers.

Run from the repository root (it builds what it needs under bench/out/ once)::

    .venv/bin/python -m bench.load_bench [--repeats 3] [--json bench/out/load_bench.json]

Every case runs in a fresh subprocess that first imports torch, transformers and the Llama
modelling code (what a prewarmed runtime has), then — cold — drops the page cache (root:
``echo 3 > /proc/sys/vm/drop_caches``; otherwise ``POSIX_FADV_DONTNEED`` on the files) or —
warm — reads the files once, and then times the load. A load is done when every byte of
every tensor is resident: each case ends with a pass that touches one byte of every page of
every tensor (free for resident memory, the real reads for mmap-based loaders) inside the
timed region, and after it the child reports an xxh3 checksum over all tensors, which must
equal every other case's. "model" cases end with a model whose forward pass then runs.

Peers: ``safetensors.torch.load_file``, ``from_pretrained``, ``torch.load`` and, where they
install (``pip install --target bench/out/peers-site tensorizer runai-model-streamer
fastsafetensors``), tensorizer, Run:ai Model Streamer and fastsafetensors (CPU mode).
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

from bench.common import add_common_args, drop_page_cache, machine_info, median, print_table, write_json

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
MODELS = OUT / "models"
HF_DIR = MODELS / "bench"
CKPT_DIR = MODELS / "bench-ckpt"
BIN_DIR = MODELS / "bench-bin"
TENSORIZER_FILE = MODELS / "bench-tensorizer" / "model.tensors"
PEERS_SITE = OUT / "peers-site"
MiB = 1024 * 1024

# case -> (level of readiness, files it reads)
CASES: dict[str, str] = {
    "disk O_DIRECT 64MiB x1": "bytes",
    "disk O_DIRECT 64MiB x2": "bytes",
    "dd iflag=direct bs=16M": "bytes",
    "faas-llm load_model": "model",
    "faas-llm load_model (O_DIRECT only)": "model",
    "faas-llm load_model (mapped if cached)": "model",
    "faas-llm load_model (mapped, no verify)": "model",
    "safetensors load_file": "tensors",
    "from_pretrained": "model",
    "torch.load": "tensors",
    "tensorizer": "tensors",
    "runai-model-streamer": "tensors",
    "fastsafetensors": "tensors",
}


def case_files(case: str) -> list[Path]:
    if case.startswith(("disk", "dd", "faas-llm")):
        return sorted(CKPT_DIR.glob("partition-*.bin"))
    if case == "torch.load":
        return [BIN_DIR / "pytorch_model.bin"]
    if case == "tensorizer":
        return [TENSORIZER_FILE]
    return sorted(HF_DIR.glob("*.safetensors"))


# --- the child: one measurement in a fresh process ------------------------------------------

def _evict(files: list[Path]) -> str:
    if drop_page_cache():
        return "drop_caches"
    for path in files:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return "fadvise"


def _warm(files: list[Path]) -> str:
    buf = bytearray(64 * MiB)
    for path in files:
        with open(path, "rb", buffering=0) as f:
            while f.readinto(buf):
                pass
    return "read once"


def touch_pages(tensors: dict[str, Any]) -> None:
    """Read one byte of every page of every tensor (makes mmap-backed tensors resident)."""
    import torch

    for t in tensors.values():
        flat = t.detach().reshape(-1)
        if flat.numel():
            int(flat.view(torch.uint8)[::4096].sum())


def tensors_checksum(tensors: dict[str, Any]) -> str:
    import torch
    import xxhash

    h = xxhash.xxh3_64()
    for name in sorted(tensors):
        flat = tensors[name].detach().contiguous().reshape(-1)
        h.update(name.encode())
        if flat.numel():
            h.update(memoryview(flat.view(torch.uint8).numpy()))
    return h.hexdigest()


def _disk_direct(threads: int, chunk: int) -> tuple[dict[str, Any], Any]:
    """Raw O_DIRECT reads of the partition files into a pre-faulted buffer: the disk's limit."""
    import threading

    from faas_llm.checkpoint import Region

    files = case_files("disk")
    sizes = [p.stat().st_size for p in files]
    region = Region.allocate(sum(sizes))
    tasks = []
    base = 0
    for path, size in zip(files, sizes, strict=True):
        tasks += [(path, off, min(chunk, size - off), base + off) for off in range(0, size, chunk)]
        base += size
    fds = {p: os.open(p, os.O_RDONLY | os.O_DIRECT) for p in files}
    it = iter(tasks)
    lock = threading.Lock()

    def worker() -> None:
        while True:
            with lock:
                task = next(it, None)
            if task is None:
                return
            path, off, n, dst = task
            view = region.buffer[dst:dst + n]
            done = 0
            while done < n:
                got = os.preadv(fds[path], [view[done:]], off + done)
                if got <= 0:
                    raise OSError(f"short read of {path}")
                done += got

    started = time.perf_counter()
    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    seconds = time.perf_counter() - started
    for fd in fds.values():
        os.close(fd)
    return {"seconds": seconds, "nbytes": sum(sizes)}, None


def _dd() -> dict[str, Any]:
    total = 0
    started = time.perf_counter()
    for path in case_files("dd"):
        subprocess.run(["dd", f"if={path}", "of=/dev/null", "iflag=direct", "bs=16M"], check=True,
                       capture_output=True)
        total += path.stat().st_size
    return {"seconds": time.perf_counter() - started, "nbytes": total}


def _run_case(case: str) -> dict[str, Any]:
    """Time one load; returns seconds, bytes, checksum and extras."""
    import torch

    result: dict[str, Any] = {}
    if case.startswith("disk"):
        threads = int(case.rsplit("x", 1)[1])
        out, _ = _disk_direct(threads, 64 * MiB)
        return out
    if case.startswith("dd"):
        return _dd()
    model = None
    keep: Any = None
    if case.startswith("faas-llm"):
        from faas_llm.checkpoint import RegionPool, load_model, read_index
        from faas_llm.settings import Settings

        index = read_index(CKPT_DIR)
        pool = RegionPool()
        t = time.perf_counter()
        pool.reserve(index.total_bytes)
        result["prefault_s"] = time.perf_counter() - t
        settings = Settings()
        started = time.perf_counter()
        if "O_DIRECT only" in case:
            from faas_llm.checkpoint import LocalDirSource

            model, stats = load_model(LocalDirSource(CKPT_DIR, use_page_cache=False), pool=pool, settings=settings)
        elif "mapped" in case:  # the default: a checkpoint wholly in the page cache is mapped, not copied
            model, stats = load_model(CKPT_DIR, pool=pool, settings=settings, verify="no verify" not in case)
        else:  # always into the pre-faulted pool
            model, stats = load_model(CKPT_DIR, pool=pool, settings=settings, map_cached=False)
        tensors = model.state_dict()
        result.update(read_s=stats.read_seconds, direct_io=stats.direct_io)
    elif case == "safetensors load_file":
        from safetensors.torch import load_file

        started = time.perf_counter()
        tensors = {}
        for path in case_files(case):
            tensors.update(load_file(path))
    elif case == "from_pretrained":
        from transformers import AutoModelForCausalLM

        started = time.perf_counter()
        model = AutoModelForCausalLM.from_pretrained(HF_DIR, local_files_only=True).eval()
        tensors = model.state_dict()
    elif case == "torch.load":
        started = time.perf_counter()
        tensors = torch.load(case_files(case)[0], map_location="cpu", weights_only=True)
    elif case == "tensorizer":
        from tensorizer import TensorDeserializer

        started = time.perf_counter()
        deserializer = TensorDeserializer(str(TENSORIZER_FILE), device="cpu", lazy_load=False)
        tensors = dict(deserializer.items())
        keep = deserializer
    elif case == "runai-model-streamer":
        from runai_model_streamer import SafetensorsStreamer

        started = time.perf_counter()
        streamer = SafetensorsStreamer()
        streamer.__enter__()
        for path in case_files(case):
            streamer.stream_file(str(path))
        tensors = dict(streamer.get_tensors())
        keep = streamer
    elif case == "fastsafetensors":
        from fastsafetensors import SafeTensorsFileLoader, SingleGroup

        started = time.perf_counter()
        loader = SafeTensorsFileLoader(SingleGroup(), torch.device("cpu"), nogds=True)
        loader.add_filenames({0: [str(p) for p in case_files(case)]})
        buffers = loader.copy_files_to_device()
        tensors = {k: buffers.get_tensor(k) for k in buffers.key_to_rank_lidx}
        keep = (loader, buffers)
    else:
        raise SystemExit(f"unknown case {case!r}")
    touch_pages(tensors)
    result["seconds"] = time.perf_counter() - started
    result["nbytes"] = sum(t.nbytes for t in tensors.values())
    result["checksum"] = tensors_checksum(tensors)
    if model is not None:
        with torch.inference_mode():
            model(torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8]]))
        result["forward_ok"] = True
    del keep
    return result


def _run_sweep() -> list[dict[str, Any]]:
    """Our reader alone (verify on), every chunk size x threads, cold, in this one process."""
    from faas_llm.checkpoint import Region, read_index, read_into

    index = read_index(CKPT_DIR)
    region = Region.allocate(index.total_bytes)
    rows = []
    for chunk_mib in (16, 32, 64, 128):
        for threads in (1, 2):
            how = _evict(case_files("disk"))
            stats = read_into(CKPT_DIR, index, region.buffer, chunk_bytes=chunk_mib * MiB, threads=threads)
            rows.append({"chunk_mib": chunk_mib, "threads": threads, "seconds": stats.read_seconds,
                         "nbytes": stats.nbytes, "evict": how})
    return rows


def _run_dram(populate: bool) -> dict[str, Any]:
    """Model ready from a checkpoint already in a shared-memory segment (torch already imported)."""
    import torch

    from faas_llm.checkpoint import SharedRegion, build_model, read_index, tensors_from_buffer

    name = os.environ["FAAS_LLM_BENCH_SEGMENT"]
    index = read_index(CKPT_DIR)
    started = time.perf_counter()
    segment = SharedRegion.attach(name, populate=populate)
    tensors = tensors_from_buffer(index, segment.view(0, index.total_bytes))
    model = build_model(CKPT_DIR, tensors)
    seconds = time.perf_counter() - started
    t = time.perf_counter()
    with torch.inference_mode():
        model(torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8]]))
    first_forward = time.perf_counter() - t
    state = model.state_dict()
    lo, hi = segment.address, segment.address + segment.nbytes
    zero_copy = all(lo <= p.data_ptr() < hi for p in model.parameters())
    return {"seconds": seconds, "nbytes": index.total_bytes, "first_forward_s": first_forward,
            "zero_copy": zero_copy, "checksum": tensors_checksum(state)}


def child(case: str, mode: str) -> None:
    import torch  # noqa: F401 - imported before timing, as in a prewarmed runtime
    import transformers  # noqa: F401
    from transformers.models.llama import configuration_llama, modeling_llama  # noqa: F401

    import faas_llm.checkpoint  # noqa: F401

    if case.startswith("dram"):
        out = _run_dram(populate="nopopulate" not in case)
        print("RESULT " + json.dumps(out), flush=True)
        return
    files = case_files("disk" if case == "sweep" else case)
    how = _evict(files) if mode == "cold" else _warm(files)
    out = {"rows": _run_sweep()} if case == "sweep" else _run_case(case)
    out["cache"] = how
    print("RESULT " + json.dumps(out), flush=True)


# --- the parent: prepare, run every case in fresh processes, report ---------------------------

def _env() -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(ROOT)] + ([str(PEERS_SITE)] if PEERS_SITE.is_dir() else [])
    env["PYTHONPATH"] = os.pathsep.join([*paths, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return env


def spawn(case: str, mode: str, extra_env: dict[str, str] | None = None, timeout: float = 600) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench.load_bench", "--child", case, "--mode", mode]
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env={**_env(), **(extra_env or {})}, capture_output=True, text=True,
                              timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT "):
            return dict(json.loads(line[len("RESULT "):]))
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
    return {"error": f"exit {proc.returncode}: {tail[0][:200]}"}


def prepare() -> dict[str, str]:
    """Build the bench model, our checkpoint, a torch .bin and a tensorizer file once."""
    notes: dict[str, str] = {}
    if not HF_DIR.is_dir():
        from faas_llm.demo_models import make_demo_model

        print("building the bench model (a few minutes) ...", flush=True)
        make_demo_model(HF_DIR, size="bench")
    if not CKPT_DIR.is_dir():
        from faas_llm.checkpoint import convert

        print("converting ...", flush=True)
        convert(HF_DIR, CKPT_DIR)
    if not (BIN_DIR / "pytorch_model.bin").is_file():
        import torch
        from safetensors.torch import load_file

        BIN_DIR.mkdir(parents=True, exist_ok=True)
        state = {}
        for path in sorted(HF_DIR.glob("*.safetensors")):
            state.update(load_file(path))
        torch.save(state, BIN_DIR / "pytorch_model.bin")
    if not TENSORIZER_FILE.is_file():
        code = (
            "import sys; from safetensors.torch import load_file; from tensorizer import TensorSerializer\n"
            f"s = TensorSerializer({str(TENSORIZER_FILE)!r}); sd = {{}}\n"
            f"[sd.update(load_file(p)) for p in sorted(__import__('glob').glob({str(HF_DIR / '*.safetensors')!r}))]\n"
            "s.write_state_dict(sd); s.close()\n"
        )
        TENSORIZER_FILE.parent.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            notes["tensorizer"] = "could not serialize: " + (proc.stderr.strip().splitlines() or ["?"])[-1][:200]
            TENSORIZER_FILE.unlink(missing_ok=True)
    return notes


def main(argv: list[str] | None = None) -> None:
    parser = add_common_args(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="cold", help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cases", default="", help="semicolon-separated subset of cases (default: all)")
    parser.add_argument("--no-sweep", action="store_true", help="skip the chunk size x threads sweep")
    parser.add_argument("--no-dram", action="store_true", help="skip the shared-memory (DRAM tier) cases")
    parser.add_argument("--modes", default="cold,warm", help="which of cold,warm to run")
    parser.add_argument("--runs-log", type=Path, default=OUT / "load_bench_runs.jsonl",
                        help="every run is appended here as it finishes")
    parser.add_argument("--report-only", action="store_true", help="report the runs already in --runs-log")
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.mode)
        return

    if args.report_only:
        report(*_read_runs(args.runs_log), {}, args)
        return
    args.runs_log.parent.mkdir(parents=True, exist_ok=True)
    args.runs_log.write_text("")
    notes = prepare()
    cases = [c for c in CASES if not args.cases or c in args.cases.split(";")]
    raw: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for rep in range(args.repeats):
        for mode in args.modes.split(","):
            for case in cases:
                if mode == "warm" and case.startswith(("disk", "dd")):
                    continue  # O_DIRECT never uses the page cache: warm = cold
                if mode == "cold" and ("O_DIRECT only" in case or "mapped" in case):
                    continue  # identical to load_model when nothing is cached
                if case == "tensorizer" and "tensorizer" in notes:
                    continue
                res = spawn(case, mode)
                raw.setdefault((case, mode), []).append(res)
                _log_run(args.runs_log, {"case": case, "mode": mode, **res})
                shown = res.get("error") or f"{res['seconds']:.2f} s"
                print(f"[{rep + 1}/{args.repeats}] {mode:4} {case:38} {shown}", flush=True)

    sweep_runs = []
    if not args.no_sweep:
        for rep in range(args.repeats):
            res = spawn("sweep", "cold")
            sweep_runs.append(res)
            _log_run(args.runs_log, {"case": "sweep", "mode": "cold", **res})
            status = "error " + res["error"] if "error" in res else "done"
            print(f"[{rep + 1}/{args.repeats}] sweep {status}", flush=True)

    dram_runs: dict[str, list[dict[str, Any]]] = {}
    if args.no_dram:
        report(raw, sweep_runs, dram_runs, notes, args)
        return
    seg_name = f"faas-llm-bench-{os.getpid()}"
    from faas_llm.checkpoint import SharedRegion, read_index, read_into

    index = read_index(CKPT_DIR)
    segment = SharedRegion.create(seg_name, index.total_bytes)
    try:
        read_into(CKPT_DIR, index, segment.buffer)
        for rep in range(args.repeats):
            for case in ("dram populate", "dram nopopulate"):
                res = spawn(case, "warm", {"FAAS_LLM_BENCH_SEGMENT": seg_name})
                dram_runs.setdefault(case, []).append(res)
                _log_run(args.runs_log, {"case": case, "mode": "warm", **res})
                print(f"[{rep + 1}/{args.repeats}] {case}: {res.get('error') or format(res['seconds'], '.3f')}",
                      flush=True)
    finally:
        segment.unlink()
        segment.close()

    report(raw, sweep_runs, dram_runs, notes, args)


def _log_run(path: Path, run: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(run) + "\n")


def _read_runs(path: Path) -> tuple[dict[tuple[str, str], list[dict[str, Any]]], list[dict[str, Any]],
                                    dict[str, list[dict[str, Any]]]]:
    raw: dict[tuple[str, str], list[dict[str, Any]]] = {}
    sweep: list[dict[str, Any]] = []
    dram: dict[str, list[dict[str, Any]]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        run = json.loads(line)
        case, mode = run.pop("case"), run.pop("mode")
        if case == "sweep":
            sweep.append(run)
        elif case.startswith("dram"):
            dram.setdefault(case, []).append(run)
        else:
            raw.setdefault((case, mode), []).append(run)
    return raw, sweep, dram


def report(raw: dict[tuple[str, str], list[dict[str, Any]]], sweep_runs: list[dict[str, Any]],
           dram_runs: dict[str, list[dict[str, Any]]], notes: dict[str, str], args: argparse.Namespace) -> None:
    checksums = {r["checksum"] for runs in raw.values() for r in runs if "checksum" in r}
    checksums |= {r["checksum"] for runs in dram_runs.values() for r in runs if "checksum" in r}
    disk = min((median([r["seconds"] for r in runs if "seconds" in r]) for (c, m), runs in raw.items()
                if c.startswith("disk") and any("seconds" in r for r in runs)), default=float("nan"))
    disk_case = min((c for (c, _), runs in raw.items() if c.startswith("disk") and any("seconds" in r for r in runs)),
                    key=lambda c: median([r["seconds"] for r in raw[(c, "cold")] if "seconds" in r]), default="")
    rows = []
    for (case, mode), runs in raw.items():
        ok = [r for r in runs if "seconds" in r]
        if not ok:
            rows.append({"case": case, "mode": mode, "level": CASES[case], "seconds": "", "GB/s": "",
                         "% of disk": "", "ours faster": "", "runs": 0, "note": runs[0].get("error", "")})
            continue
        seconds = median([r["seconds"] for r in ok])
        nbytes = ok[0]["nbytes"]
        ours = raw.get(("faas-llm load_model", mode), [])
        ours_s = median([r["seconds"] for r in ours if "seconds" in r]) if any("seconds" in r for r in ours) else 0
        note = ""
        if case.startswith("faas-llm"):
            note = f"prefault {median([r.get('prefault_s', 0) for r in ok]):.2f} s (setup, untimed)"
        rows.append({
            "case": case, "mode": mode, "level": CASES[case], "seconds": round(seconds, 3),
            "GB/s": round(nbytes / seconds / 1e9, 2), "% of disk": round(100 * disk / seconds, 1),
            "ours faster": round(seconds / ours_s, 2) if ours_s else "", "runs": len(ok),
            "min": round(min(r["seconds"] for r in ok), 3), "max": round(max(r["seconds"] for r in ok), 3),
            "note": note,
        })
    print_table(rows, title=f"Checkpoint loading, {args.repeats} runs each, median seconds "
                            f"(disk limit = {disk_case}: {disk:.3f} s)")

    sweep_rows = []
    by_cfg: dict[tuple[int, int], list[float]] = {}
    for run in sweep_runs:
        for r in run.get("rows", []):
            by_cfg.setdefault((r["chunk_mib"], r["threads"]), []).append(r["seconds"])
            nbytes = r["nbytes"]
    for (chunk, threads), secs in sorted(by_cfg.items()):
        s = median(secs)
        sweep_rows.append({"case": f"read_into {chunk} MiB x{threads}", "mode": "cold", "seconds": round(s, 3),
                           "GB/s": round(nbytes / s / 1e9, 2), "% of disk": round(100 * disk / s, 1),
                           "runs": len(secs)})
    if sweep_rows:
        print_table(sweep_rows, title="Reader only (verify on), chunk size x threads, cold")

    dram_rows = []
    for case, runs in dram_runs.items():
        ok = [r for r in runs if "seconds" in r]
        if ok:
            dram_rows.append({"case": case, "seconds": round(median([r["seconds"] for r in ok]), 3),
                              "first forward s": round(median([r["first_forward_s"] for r in ok]), 3),
                              "zero-copy": all(r["zero_copy"] for r in ok), "runs": len(ok)})
        else:
            dram_rows.append({"case": case, "seconds": "", "note": runs[0].get("error", "")})
    if dram_rows:
        print_table(dram_rows, title="DRAM tier: model ready from a shared-memory segment (torch imported)")
    print(f"checksums over all tensors: {'all equal' if len(checksums) == 1 else f'DIFFER: {sorted(checksums)}'}")
    for name, note in notes.items():
        print(f"note: {name}: {note}")
    write_json(args.json, rows + sweep_rows + dram_rows, notes=notes, checksums_equal=len(checksums) == 1,
               disk_limit_case=disk_case, disk_limit_s=disk, machine_at_start=machine_info())


if __name__ == "__main__":
    main()
