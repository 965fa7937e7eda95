"""Live migration exactness (issues 8, 18): does a migrated greedy run give the unmoved run's tokens,
fp32 and fp16, and what does the destination's rebuild of the KV cache cost.

    .venv/bin/python -m bench.migration_exactness [--model-dir DIR] [--prompts 12] [--tokens 160] [--json PATH]

In-process, with the runtime's own :class:`action_runtime.engine.Engine` (the code a migrated run
executes). For each prompt a reference greedy run decodes ``--tokens`` tokens (what the source does).
At each hand-off point ``k`` the run is resumed from ``prompt + generated[:k]`` with the cache rebuilt
the two ways the protocol does: in one ``/prefill`` (``one pass``: the whole sequence as prompt chunks),
and in three rounds that each extend the session (``rounds``: the destination keeping up while the
source decodes). Before issue 18 the one-pass rebuild was the same values in another reduction order,
so an fp16 run could diverge at a near-tie; the batching engine's forward gives a row the same bits
however its sequence was chunked (``action_runtime/batching/attention.py``), so both schemes must give
the reference tokens in every dtype.

Figures: resumes whose tokens differ from the reference (of ``prompts x points``), and the time each
rebuild takes.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from action_runtime.control import RunControl
from action_runtime.engine import Engine, GenerationResult, PreparedRun
from action_runtime.loading import LoadedModel
from bench.common import Row, add_common_args, print_table, write_json
from faas_llm.genparams import SamplingParams
from faas_llm.types import LoadTier

TEXT = ("the quick brown fox jumps over the lazy dog while serverless inference of large language models "
        "starts cold when a request arrives and the checkpoint loads from the fastest tier")
WORDS = TEXT.split(" ")


def load_engine(model_dir: Path, dtype: str) -> Engine:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype)).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return Engine(LoadedModel(model, tokenizer, "m", LoadTier.LOCAL, 0.0, str(model_dir)))


def generate(engine: Engine, run: PreparedRun) -> list[int]:
    for item in engine.generate(run, RunControl("bench")):
        if isinstance(item, GenerationResult):
            return item.token_ids
    raise RuntimeError("no result")


def one_prompt(engine: Engine, prompt: list[int], tokens: int, points: list[int]) -> list[dict[str, Any]]:
    greedy = SamplingParams(max_tokens=tokens, temperature=0)
    ref = generate(engine, PreparedRun(prompt_ids=prompt, sampling=greedy, seed=0))
    out = []
    for k in points:
        if k >= len(ref):
            continue
        head = ref[:k]
        started = time.perf_counter()
        engine.prefill("one", prompt + head)
        one_s = time.perf_counter() - started
        one = generate(engine, PreparedRun(prompt_ids=prompt, sampling=greedy, seed=0, generated_ids=head,
                                           prefill_session="one"))
        started = time.perf_counter()
        for cut in (max(1, k // 3), max(1, 2 * k // 3), k):
            engine.prefill("rounds", prompt + head[:cut])
        rounds_s = time.perf_counter() - started
        rounds = generate(engine, PreparedRun(prompt_ids=prompt, sampling=greedy, seed=0, generated_ids=head,
                                              prefill_session="rounds"))
        out.append({"k": k, "one_ok": one == ref, "rounds_ok": rounds == ref, "one_s": one_s, "rounds_s": rounds_s})
    return out


def bench(label: str, engine: Engine, prompts: int, tokens: int, points: list[int]) -> Row:
    results: list[dict[str, Any]] = []
    for i in range(prompts):
        text = " ".join(WORDS[(i * 3) % len(WORDS):][: 4 + i % 5]) or "hello"
        results.extend(one_prompt(engine, list(engine.tokenizer(text)["input_ids"]), tokens, points))
    engine.close()
    n = len(results)
    return {
        "case": label, "forward": engine.forward_kind, "resumes": n,
        "one pass diverged": sum(not r["one_ok"] for r in results),
        "rounds diverged": sum(not r["rounds_ok"] for r in results),
        "rebuild ms one pass": 1000 * sum(r["one_s"] for r in results) / n,
        "rebuild ms rounds": 1000 * sum(r["rounds_s"] for r in results) / n,
        "mean k": sum(r["k"] for r in results) / n,
    }


def main() -> None:
    parser = add_common_args(argparse.ArgumentParser(description=__doc__.split("\n\n")[0]))
    parser.add_argument("--model-dir", type=Path, help="HF model directory (default: the tiny demo model, fp32+fp16)")
    parser.add_argument("--prompts", type=int, default=12)
    parser.add_argument("--tokens", type=int, default=160)
    parser.add_argument("--at", type=int, nargs="+", default=[10, 40, 100])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the runtime's default is 1 here)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="migration-exact-") as tmp:
        if args.model_dir is None:
            from faas_llm.demo_models import make_demo_model

            for dtype in ("float32", "float16"):
                model_dir = make_demo_model(Path(tmp) / dtype, size="tiny", dtype=dtype)
                rows.append(bench(f"tiny {dtype}", load_engine(model_dir, dtype), args.prompts, args.tokens, args.at))
        else:
            rows.append(bench(args.model_dir.name, load_engine(args.model_dir, "float16"), args.prompts,
                              args.tokens, args.at))
    print_table(rows, title="Migrated greedy runs: the destination's KV rebuild in one pass and in rounds")
    write_json(args.json, rows, threads=args.threads)


if __name__ == "__main__":
    main()
