"""Exactness of a migrated greedy run (in-process, the runtime's own Engine): the destination rebuilds
the KV cache in one /prefill or in rounds; either way the resumed run is the unmoved one, in fp32 and
in fp16 (bench/migration_exactness.py measures it on more prompts and on the larger models)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.migration_exactness import load_engine, one_prompt


@pytest.mark.parametrize(("dtype", "fixture"), [("float32", "tiny_model_dir"), ("float16", "tiny_model_dir_fp16")])
def test_resumes_give_the_reference_tokens_however_the_cache_was_rebuilt(
    dtype: str, fixture: str, request: pytest.FixtureRequest
) -> None:
    model_dir: Path = request.getfixturevalue(fixture)
    engine = load_engine(model_dir, dtype)
    try:
        prompt = list(engine.tokenizer("the quick brown fox")["input_ids"])
        results = one_prompt(engine, prompt, 80, [1, 10, 40])
    finally:
        engine.close()
    assert [r["k"] for r in results] == [1, 10, 40]
    assert all(r["one_ok"] and r["rounds_ok"] for r in results), results
