"""Live migration exactness (issue 8): how often a migrated greedy run diverges, fp32 vs fp16, and what an
exact scheme would cost.

    .venv/bin/python -m bench.migration_exactness [--model-dir DIR] [--prompts 12] [--tokens 160] [--json PATH]

In-process, with the runtime's own :class:`action_runtime.engine.Engine` (the code a migrated run
executes). For each prompt a reference greedy run decodes ``--tokens`` tokens step by step (what the
source does). At each hand-off point ``k`` the run is resumed the two ways a destination can rebuild
the KV cache of ``prompt + generated[:k]``:

* ``batched`` (the protocol today): one forward pass over the whole sequence (``Engine.prefill``);
* ``stepwise`` (an exact scheme): the prompt in one pass, then one pass per generated token, the
  shapes the source used.

Figures: resumes whose tokens differ from the reference (of ``prompts x points``), the largest logit
difference between the two caches' next-token logits and the reference's, and the time each scheme
takes to rebuild the cache (the stepwise one is what it adds to the work, and to the pause for the
tokens recomputed while the source is stopped).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from action_runtime.control import RunControl
from action_runtime.engine import Engine, GenerationResult, PreparedRun, new_cache
from action_runtime.loading import LoadedModel
from action_runtime.prefill import PrefillState
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


def stepwise_cache(engine: Engine, prompt: list[int], generated: list[int]) -> PrefillState:
    """The KV cache built with the source's shapes: the prompt in one pass, then one token per pass."""
    cache = new_cache(engine.model.config)
    logits = engine._forward(prompt, cache)
    for token in generated:
        logits = engine._forward([token], cache)
    return PrefillState(prompt + generated, cache, logits)


def one_prompt(engine: Engine, prompt: list[int], tokens: int, points: list[int]) -> list[dict[str, Any]]:
    greedy = SamplingParams(max_tokens=tokens, temperature=0)
    ref = generate(engine, PreparedRun(prompt_ids=prompt, sampling=greedy, seed=0))
    out = []
    for k in points:
        if k >= len(ref):
            continue
        head = ref[:k]
        started = time.perf_counter()
        engine.prefill("batched", prompt + head)
        batched_s = time.perf_counter() - started
        batched_logits = engine.sessions.take("batched")
        started = time.perf_counter()
        state = stepwise_cache(engine, prompt, head)
        stepwise_s = time.perf_counter() - started
        reference = stepwise_cache(engine, prompt, head)  # a second stepwise build: bit-identical?
        assert batched_logits is not None
        diff = float((batched_logits.logits.float() - state.logits.float()).abs().max())
        same_bits = bool(torch.equal(state.logits, reference.logits))
        engine.sessions.put("batched", batched_logits)
        batched = generate(engine, PreparedRun(prompt_ids=prompt, sampling=greedy, seed=0, generated_ids=head,
                                               prefill_session="batched"))
        engine.sessions.put("stepwise", state)
        stepwise = generate(engine, PreparedRun(prompt_ids=prompt, sampling=greedy, seed=0, generated_ids=head,
                                                prefill_session="stepwise"))
        out.append({"k": k, "batched_ok": batched == ref, "stepwise_ok": stepwise == ref, "diff": diff,
                    "same_bits": same_bits, "batched_s": batched_s, "stepwise_s": stepwise_s})
    return out


def bench(label: str, engine: Engine, prompts: int, tokens: int, points: list[int]) -> Row:
    results: list[dict[str, Any]] = []
    for i in range(prompts):
        text = " ".join(WORDS[(i * 3) % len(WORDS):][: 4 + i % 5]) or "hello"
        results.extend(one_prompt(engine, list(engine.tokenizer(text)["input_ids"]), tokens, points))
    n = len(results)
    return {
        "case": label, "resumes": n,
        "batched diverged": sum(not r["batched_ok"] for r in results),
        "stepwise diverged": sum(not r["stepwise_ok"] for r in results),
        "max logit diff": max(r["diff"] for r in results),
        "stepwise bit-identical": all(r["same_bits"] for r in results),
        "rebuild ms batched": 1000 * sum(r["batched_s"] for r in results) / n,
        "rebuild ms stepwise": 1000 * sum(r["stepwise_s"] for r in results) / n,
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
    print_table(rows, title="Migrated greedy runs: batched vs stepwise KV rebuild at the destination")
    write_json(args.json, rows, threads=args.threads)


if __name__ == "__main__":
    main()
