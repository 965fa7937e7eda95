"""Continuous batching, in-process on the real demo models: a batched run is the run alone, token for token.

Every run is compared with the same request run alone through the same engine. Batches are made
real (the runs are submitted together and checked to have shared steps), with ragged prompts longer
than a step's token budget (chunked prefill), preemptions forced by a small KV budget, and one run of
the batch exported and resumed (the migration hand-off) while the others go on.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from action_runtime.batching.build import EngineConfig
from action_runtime.control import RunControl
from action_runtime.engine import Engine, GenerationResult, TextEvent
from action_runtime.loading import ModelSpec, load_model
from faas_llm.errors import ActivationTimeoutError
from faas_llm.genparams import parse_generation_params
from faas_llm.settings import Settings


def make_engine(model_dir: Path, tmp_path: Path, **config: Any) -> Engine:
    loaded = load_model(ModelSpec(checkpoint=str(model_dir)), Settings(data_dir=tmp_path))
    return Engine(loaded, EngineConfig(**config))


def run(engine: Engine, value: dict[str, Any], control: RunControl | None = None) -> GenerationResult:
    params = parse_generation_params(value)
    control = control or RunControl("test")
    if params.export_after is not None:
        control.request_stop(params.export_after)
    for item in engine.generate(engine.prepare(params), control):
        if isinstance(item, GenerationResult):
            return item
    raise AssertionError("no result")


def outcomes(engine: Engine, values: list[dict[str, Any]],
             controls: list[RunControl] | None = None) -> list[GenerationResult | BaseException | None]:
    """Run ``values`` at once (one thread each, released together): each one's result or exception."""
    results: list[GenerationResult | BaseException | None] = [None] * len(values)
    start = threading.Barrier(len(values))

    def one(i: int) -> None:
        start.wait()
        try:
            results[i] = run(engine, values[i], controls[i] if controls else None)
        except BaseException as exc:  # re-raised below, in the test's thread
            results[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(values))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    return results


def together(engine: Engine, values: list[dict[str, Any]],
             controls: list[RunControl] | None = None) -> list[GenerationResult]:
    results = outcomes(engine, values, controls)
    for r in results:
        if isinstance(r, BaseException):
            raise r
    assert all(isinstance(r, GenerationResult) for r in results)
    return [r for r in results if isinstance(r, GenerationResult)]


def ragged_prompts(n: int, vocab: int, seed: int, longest: int = 150) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(3, vocab) for _ in range(rng.randint(1, longest))] for _ in range(n)]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    eng = make_engine(tiny_model_dir, tmp_path_factory.mktemp("tiny"), step_tokens=48)
    assert eng.forward_kind == "paged" and eng.invariant
    yield eng
    eng.close()


@pytest.mark.parametrize("batch", [1, 3, 8])
def test_batched_greedy_equals_alone_with_ragged_prompts(tiny: Engine, batch: int) -> None:
    values = [{"prompt": p, "max_tokens": 120, "temperature": 0}
              for p in ragged_prompts(batch, tiny.vocab_size, seed=batch)]
    alone = [run(tiny, v) for v in values]
    batched = together(tiny, values)
    assert [r.token_ids for r in batched] == [r.token_ids for r in alone]
    assert max(r.batch.most for r in batched) == batch


def test_many_long_runs_in_shifting_batches_equal_alone(tiny: Engine) -> None:
    """24 runs of up to 300 tokens, 8 at a time: each joins and leaves batches of every size."""
    rng = random.Random(7)
    values = [{"prompt": p, "max_tokens": rng.randint(50, 300), "temperature": 0}
              for p in ragged_prompts(24, tiny.vocab_size, seed=11, longest=200)]
    alone = [run(tiny, v).token_ids for v in values]
    batched: list[list[int]] = []
    for i in range(0, 24, 8):
        batched += [r.token_ids for r in together(tiny, values[i:i + 8])]
    assert batched == alone


def test_sampled_runs_are_reproducible_per_seed_in_a_batch(tiny: Engine) -> None:
    values = [{"prompt": p, "max_tokens": 80, "temperature": 0.9, "top_p": 0.9, "seed": 100 + i}
              for i, p in enumerate(ragged_prompts(6, tiny.vocab_size, seed=3))]
    alone = [run(tiny, v).token_ids for v in values]
    assert [r.token_ids for r in together(tiny, values)] == alone
    assert len({tuple(t) for t in alone}) == 6


def test_small_model_batches_equal_alone(small_model_dir: Path, tmp_path: Path) -> None:
    eng = make_engine(small_model_dir, tmp_path, step_tokens=64)
    try:
        assert eng.forward_kind == "paged" and eng.invariant
        values = [{"prompt": p, "max_tokens": 100, "temperature": 0}
                  for p in ragged_prompts(8, eng.vocab_size, seed=5, longest=300)]
        alone = [run(eng, v).token_ids for v in values]
        batched = together(eng, values)
        assert [r.token_ids for r in batched] == alone
        assert max(r.batch.most for r in batched) == 8
    finally:
        eng.close()


def test_fp16_batches_equal_alone(tiny_model_dir_fp16: Path, tmp_path: Path) -> None:
    eng = make_engine(tiny_model_dir_fp16, tmp_path)
    try:
        assert eng.forward_kind == "paged" and eng.invariant
        values = [{"prompt": p, "max_tokens": 100, "temperature": 0}
                  for p in ragged_prompts(8, eng.vocab_size, seed=9)]
        alone = [run(eng, v).token_ids for v in values]
        assert [r.token_ids for r in together(eng, values)] == alone
    finally:
        eng.close()


def test_preempted_runs_recompute_and_still_equal_alone(tiny_model_dir: Path, tmp_path: Path) -> None:
    """A budget of ~30 blocks of 16 tokens for 8 runs of up to ~330 tokens: the newest give way and
    recompute their cache when they run again; nothing fails, every run is the run alone."""
    eng = make_engine(tiny_model_dir, tmp_path, block_tokens=16, kv_cache_bytes=1, step_tokens=32)
    try:
        assert eng.loop.scheduler.pool.num_blocks == 33  # raised to one whole context (512 tokens) + null
        values = [{"prompt": p, "max_tokens": 200, "temperature": 0}
                  for p in ragged_prompts(8, eng.vocab_size, seed=13, longest=120)]
        alone = [run(eng, v).token_ids for v in values]
        batched = together(eng, values)
        assert [r.token_ids for r in batched] == alone
        assert sum(r.batch.preemptions for r in batched) > 0
    finally:
        eng.close()


def test_requests_queue_when_the_batch_is_full(tiny_model_dir: Path, tmp_path: Path) -> None:
    eng = make_engine(tiny_model_dir, tmp_path, max_batch=2)
    try:
        values = [{"prompt": p, "max_tokens": 60, "temperature": 0} for p in ragged_prompts(5, eng.vocab_size, 17)]
        alone = [run(eng, v).token_ids for v in values]
        batched = together(eng, values)
        assert [r.token_ids for r in batched] == alone
        assert max(r.batch.most for r in batched) == 2
        assert max(r.queued_s for r in batched) > 0
    finally:
        eng.close()


def test_one_run_exported_out_of_a_batch_resumes_exactly(tiny: Engine) -> None:
    """The migration hand-off for one sequence of a running batch: stop it at token 40, prefill its
    tokens in rounds (as the destination would, here on the same engine), resume it while the
    others are still decoding; its output is the unmoved run's, and the others are unaffected."""
    values = [{"prompt": p, "max_tokens": 150, "temperature": 0 if i % 2 else 0.8, "seed": i}
              for i, p in enumerate(ragged_prompts(4, tiny.vocab_size, seed=21))]
    alone = [run(tiny, v) for v in values]
    controls = [RunControl(f"r{i}") for i in range(4)]
    controls[1].request_stop(40)
    first = together(tiny, values, controls)
    moved = first[1]
    assert moved.finish_reason == "migrated" and moved.state is not None
    assert moved.state.generated_ids == alone[1].token_ids[:40]
    tokens = moved.state.prompt_ids + moved.state.generated_ids
    tiny.prefill("m", tokens[:-9])
    tiny.prefill("m", tokens[:-2])
    resumed = together(tiny, [{"resume": moved.state.model_dump(), "prefill_session": "m"}, values[0], values[2]])
    assert resumed[0].token_ids == alone[1].token_ids and resumed[0].text == alone[1].text
    assert [first[i].token_ids for i in (0, 2, 3)] == [alone[i].token_ids for i in (0, 2, 3)]
    assert [r.token_ids for r in resumed[1:]] == [alone[0].token_ids, alone[2].token_ids]


def test_deadline_stop_string_and_max_tokens_are_per_sequence(tiny: Engine) -> None:
    prompts = ragged_prompts(3, tiny.vocab_size, seed=23)
    free = run(tiny, {"prompt": prompts[1], "max_tokens": 60, "temperature": 0})
    stop = free.text[20:23]
    values = [{"prompt": prompts[0], "max_tokens": 5000, "temperature": 0},
              {"prompt": prompts[1], "max_tokens": 60, "temperature": 0, "stop": stop},
              {"prompt": prompts[2], "max_tokens": 7, "temperature": 0}]
    controls = [RunControl("late", deadline_ms=int(time.time() * 1000) + 300), RunControl("s"), RunControl("m")]
    late, stopped, short = outcomes(tiny, values, controls)
    assert isinstance(late, ActivationTimeoutError) and late.details["completion_tokens"] > 0
    assert isinstance(stopped, GenerationResult) and isinstance(short, GenerationResult)
    assert stopped.finish_reason == "stop" and stopped.text == free.text[: free.text.index(stop)]
    assert short.finish_reason == "length" and short.completion_tokens == 7
    assert stopped.batch.most == 3


def test_a_reader_that_goes_away_frees_its_place(tiny: Engine) -> None:
    value = {"prompt": "The serverless platform", "max_tokens": 400, "temperature": 0}
    events = tiny.generate(tiny.prepare(parse_generation_params(value)), RunControl("gone"))
    first = next(events)
    assert isinstance(first, TextEvent)
    events.close()  # the client disconnected
    assert run(tiny, {**value, "max_tokens": 3}).completion_tokens == 3
    scheduler = tiny.loop.scheduler
    assert not scheduler.running and not scheduler.waiting
