"""Action runtime: what a cold start costs with and without a prewarmed runtime, generation speed
over HTTP, and the hand-over cost of a migration (recompute vs prefilled in rounds).

    .venv/bin/python -m bench.runtime_bench [--model-dir DIR] [--tokens 64] [--json PATH]

Every figure is measured on real runtime processes (gunicorn, gthread) over HTTP on this machine.
Without --model-dir a tiny demo model is built in a temporary directory.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

from bench.common import Row, add_common_args, print_table, write_json
from faas_llm.redis_server import free_port
from faas_llm.settings import Settings, child_environ

PROMPT = "Serverless inference of large language models starts cold when"


class Runtime:
    def __init__(self, data_dir: Path) -> None:
        self.settings = Settings(data_dir=data_dir, runtime_port=free_port(), loader_direct_io=False)
        self.url = f"http://127.0.0.1:{self.settings.runtime_port}"
        self.started = time.perf_counter()
        self.proc = subprocess.Popen([sys.executable, "-m", "action_runtime"], env=child_environ(self.settings),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def wait_up(self) -> float:
        while True:
            try:
                if requests.get(self.url + "/health", timeout=5).status_code == 200:
                    return time.perf_counter() - self.started
            except (requests.ConnectionError, requests.Timeout):
                time.sleep(0.02)

    def post(self, path: str, body: Any) -> Any:
        reply = requests.post(self.url + path, json=body, timeout=600)
        reply.raise_for_status()
        return reply.json()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)


def cold_start_rows(model_dir: Path, data_dir: Path, tokens: int) -> list[Row]:
    """No prewarm: start the process, wait, /init, first run. Prewarmed: /init and first run only."""
    rt = Runtime(data_dir)
    boot = rt.wait_up()
    health = requests.get(rt.url + "/health", timeout=10).json()
    t0 = time.perf_counter()
    init = rt.post("/init", {"value": {"checkpoint": str(model_dir)}})
    first = rt.post("/run", {"value": {"prompt": PROMPT, "max_tokens": tokens, "temperature": 0}})
    to_first_token_prewarmed = time.perf_counter() - t0 - first["timings"]["total_s"] + first["timings"]["ttft_s"]
    rt.stop()
    cold = boot + to_first_token_prewarmed
    return [
        {"case": "cold start, no prewarmed runtime", "seconds": cold, "vs prewarmed": cold / to_first_token_prewarmed,
         "note": f"process boot {boot:.2f} s (imports {health['prewarm_s']:.2f} s) + init + first token"},
        {"case": "cold start, prewarmed runtime", "seconds": to_first_token_prewarmed, "vs prewarmed": 1.0,
         "note": f"/init {init['init_s']:.3f} s ({init['source']}), ttft {first['timings']['ttft_s']:.3f} s"},
    ]


def generation_rows(rt: Runtime, tokens: int, repeats: int) -> list[Row]:
    rows = []
    for stream in (False, True):
        walls, rates, ttfts = [], [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            value = {"prompt": PROMPT, "max_tokens": tokens, "temperature": 0, "stream": stream}
            if stream:
                with requests.post(rt.url + "/run", json={"value": value}, stream=True, timeout=600) as reply:
                    lines = [line for line in reply.iter_lines() if line]
                result = json.loads(lines[-1])["result"]
            else:
                result = rt.post("/run", {"value": value})
            walls.append(time.perf_counter() - t0)
            rates.append(result["timings"]["tokens_per_s"])
            ttfts.append(result["timings"]["ttft_s"])
        rows.append({"case": f"generate {tokens} tokens, {'stream' if stream else 'blocking'}",
                     "seconds": statistics.median(walls), "tokens/s": statistics.median(rates),
                     "ttft s": statistics.median(ttfts)})
    return rows


def migration_rows(a: Runtime, b: Runtime, tokens: int) -> list[Row]:
    """The destination's time to its first new token after a hand-over at k tokens."""
    rows = []
    value = {"prompt": PROMPT, "max_tokens": tokens, "temperature": 0}
    whole = a.post("/run", {"value": value})
    for k in (tokens // 4, tokens // 2, tokens - 1):
        state = a.post("/run", {"value": {**value, "export_after": k}})["state"]
        resumed = b.post("/run", {"value": {"resume": state, "max_tokens": tokens}})
        recompute = resumed["timings"]["ttft_s"]
        assert resumed["token_ids"] == whole["token_ids"], "migration changed the output"
        session = f"s{k}"
        b.post("/prefill", {"session": session, "token_ids": state["prompt_ids"] + state["generated_ids"][:-2]})
        prefilled = b.post("/run", {"value": {"resume": state, "prefill_session": session}})
        assert prefilled["token_ids"] == whole["token_ids"], "prefilled migration changed the output"
        rows.append({"case": f"resume after {k} tokens: recompute KV", "seconds": recompute,
                     "vs prefilled": recompute / max(prefilled["timings"]["ttft_s"], 1e-9)})
        rows.append({"case": f"resume after {k} tokens: prefilled in rounds", "seconds": prefilled["timings"]["ttft_s"],
                     "vs prefilled": 1.0})
    return rows


def main() -> None:
    parser = add_common_args(argparse.ArgumentParser(description=__doc__))
    parser.add_argument("--model-dir", type=Path, default=None, help="a HF or faas-llm checkpoint directory")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="runtime-bench-") as tmp:
        model_dir = args.model_dir
        if model_dir is None:
            from faas_llm.demo_models import make_demo_model

            model_dir = make_demo_model(Path(tmp) / "tiny", size="tiny")
        rows = cold_start_rows(model_dir, Path(tmp), args.tokens)
        a, b = Runtime(Path(tmp)), Runtime(Path(tmp))
        try:
            a.wait_up()
            b.wait_up()
            for rt in (a, b):
                rt.post("/init", {"value": {"checkpoint": str(model_dir)}})
            rows += generation_rows(a, args.tokens, args.repeats)
            rows += migration_rows(a, b, args.tokens)
        finally:
            a.stop()
            b.stop()
    print_table(rows, ["case", "seconds", "vs prewarmed", "tokens/s", "ttft s", "vs prefilled", "note"],
                title=f"action runtime ({model_dir.name})")
    write_json(args.json, rows, model=str(model_dir), tokens=args.tokens)


if __name__ == "__main__":
    main()
