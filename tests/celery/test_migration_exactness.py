"""Exactness of a migrated greedy run (in-process, the runtime's own Engine): the destination rebuilds
the KV cache in one batched pass (the protocol) or with the source's shapes, one token per pass
(bench/migration_exactness.py measures both, and how often fp16 diverges on a larger model)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.migration_exactness import load_engine, one_prompt


@pytest.mark.parametrize(("dtype", "fixture"), [("float32", "tiny_model_dir"), ("float16", "tiny_model_dir_fp16")])
def test_resumes_give_the_reference_tokens_and_stepwise_rebuilds_are_bit_identical(
    dtype: str, fixture: str, request: pytest.FixtureRequest
) -> None:
    model_dir: Path = request.getfixturevalue(fixture)
    engine = load_engine(model_dir, dtype)
    prompt = list(engine.tokenizer("the quick brown fox")["input_ids"])
    results = one_prompt(engine, prompt, 80, [1, 10, 40])
    assert [r["k"] for r in results] == [1, 10, 40]
    # the source's shapes reproduced: the same bits, hence the same tokens, in fp32 and fp16
    assert all(r["same_bits"] and r["stepwise_ok"] for r in results), results
    if dtype == "float32":
        # fp32: the batched rebuild differs from the stepwise one by rounding only, far below a greedy near-tie
        assert all(r["batched_ok"] and r["diff"] < 1e-4 for r in results), results
