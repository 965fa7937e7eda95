"""The engine on real tiny models, in-process: equal to transformers' generate, stop rules,
and exact resumption (the migration property) at every kind of boundary, on both forwards."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from action_runtime.batching.build import EngineConfig
from action_runtime.control import RunControl
from action_runtime.engine import Engine, GenerationResult, TextEvent
from action_runtime.loading import ModelSpec, load_model
from faas_llm.errors import ActivationTimeoutError, RequestError
from faas_llm.genparams import parse_generation_params
from faas_llm.settings import Settings

PROMPT = "The serverless platform"


def make_engine(model_dir: Path, tmp_path: Path, paged: bool | None = None) -> Engine:
    loaded = load_model(ModelSpec(checkpoint=str(model_dir)), Settings(data_dir=tmp_path))
    return Engine(loaded, EngineConfig(paged=paged))


@pytest.fixture(scope="module", params=[False, None], ids=["percall", "paged"])
def engine(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory,
           request: pytest.FixtureRequest) -> Iterator[Engine]:
    """The tiny Llama on transformers' forward (one call per sequence), and on the paged batched forward."""
    eng = make_engine(tiny_model_dir, tmp_path_factory.mktemp("engine"), paged=request.param)
    assert eng.forward_kind == ("percall" if request.param is False else "paged")
    yield eng
    eng.close()


def run(engine: Engine, value: dict[str, Any], control: RunControl | None = None) -> tuple[GenerationResult,
                                                                                             list[TextEvent]]:
    params = parse_generation_params(value)
    control = control or RunControl("test")
    if params.export_after is not None:
        control.request_stop(params.export_after)
    events: list[TextEvent] = []
    for item in engine.generate(engine.prepare(params), control):
        if isinstance(item, GenerationResult):
            return item, events
        events.append(item)
    raise AssertionError("no result")


def hf_greedy(engine: Engine, prompt_ids: list[int], max_new_tokens: int, **kwargs: Any) -> list[int]:
    with torch.inference_mode():
        out = engine.model.generate(torch.tensor([prompt_ids]), attention_mask=torch.ones(1, len(prompt_ids),
                                    dtype=torch.long), max_new_tokens=max_new_tokens, do_sample=False, **kwargs)
    return [int(t) for t in out[0, len(prompt_ids):]]


@pytest.mark.parametrize("arch", ["llama", "gpt2", "opt"])
def test_greedy_equals_transformers_generate(arch: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    fixture = {"llama": "tiny_model_dir", "gpt2": "tiny_gpt2_dir", "opt": "tiny_opt_dir"}[arch]
    eng = make_engine(request.getfixturevalue(fixture), tmp_path)
    result, events = run(eng, {"prompt": PROMPT, "max_tokens": 40, "temperature": 0})
    prompt_ids = eng.tokenize(parse_generation_params({"prompt": PROMPT}))
    assert result.token_ids == hf_greedy(eng, prompt_ids, 40)
    assert result.finish_reason == "length" and result.completion_tokens == 40
    assert [e.token_id for e in events if e.token_id is not None] == result.token_ids
    assert "".join(e.text for e in events) == result.text == eng.tokenizer.decode(result.token_ids,
                                                                                 skip_special_tokens=True)
    eng.close()


def test_eos_ends_the_run_like_generate(engine: Engine) -> None:
    free, _ = run(engine, {"prompt": PROMPT, "max_tokens": 30, "temperature": 0})
    eos = free.token_ids[12]
    first = free.token_ids.index(eos)
    engine.eos_ids, saved = frozenset({eos}), engine.eos_ids
    try:
        result, _ = run(engine, {"prompt": PROMPT, "max_tokens": 30, "temperature": 0})
    finally:
        engine.eos_ids = saved
    assert result.finish_reason == "stop"
    assert result.token_ids == free.token_ids[: first + 1]
    prompt_ids = engine.tokenize(parse_generation_params({"prompt": PROMPT}))
    assert hf_greedy(engine, prompt_ids, 30, eos_token_id=eos)[: first + 1] == result.token_ids


def test_stop_string_ends_the_run_and_is_not_returned(engine: Engine) -> None:
    free, _ = run(engine, {"prompt": PROMPT, "max_tokens": 40, "temperature": 0})
    stop = free.text[20:24]
    cut = free.text.index(stop)
    result, events = run(engine, {"prompt": PROMPT, "max_tokens": 40, "temperature": 0, "stop": ["zzzz", stop]})
    assert result.finish_reason == "stop"
    assert result.text == free.text[:cut]
    assert "".join(e.text for e in events) == result.text
    assert result.token_ids == free.token_ids[: len(result.token_ids)]


def test_chat_messages_use_the_chat_template(engine: Engine) -> None:
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "what is a cold start?"}]
    result, _ = run(engine, {"messages": messages, "max_tokens": 12, "temperature": 0})
    ids = engine.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)["input_ids"]
    assert result.prompt_tokens == len(ids)
    assert result.token_ids == hf_greedy(engine, list(ids), 12)


def test_seeded_sampling_is_reproducible(engine: Engine) -> None:
    value = {"prompt": PROMPT, "max_tokens": 24, "temperature": 0.9, "top_p": 0.95, "seed": 1234}
    a, _ = run(engine, value)
    b, _ = run(engine, value)
    c, _ = run(engine, {**value, "seed": 4321})
    assert a.token_ids == b.token_ids
    assert a.token_ids != c.token_ids


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_resume_continues_exactly_at_every_boundary(engine: Engine, temperature: float) -> None:
    base = {"prompt": PROMPT, "max_tokens": 32, "temperature": temperature, "seed": 77, "stop": "~~"}
    full, _ = run(engine, base)
    assert full.completion_tokens == 32
    for k in (0, 1, 2, 7, 16, 31):
        first, events = run(engine, {**base, "export_after": k})
        assert first.finish_reason == "migrated" and first.state is not None
        assert first.state.generated_ids == full.token_ids[:k]
        assert first.state.emitted_chars == len("".join(e.text for e in events))
        second, more = run(engine, {"resume": first.state.model_dump()})
        assert second.token_ids == full.token_ids, k
        assert second.text == full.text
        assert second.resumed_tokens == k
        assert "".join(e.text for e in events + more) == full.text


def test_resume_through_prefill_rounds(engine: Engine) -> None:
    base = {"prompt": PROMPT, "max_tokens": 30, "temperature": 0}
    full, _ = run(engine, base)
    first, _ = run(engine, {**base, "export_after": 21})
    assert first.state is not None
    tokens = first.state.prompt_ids + first.state.generated_ids
    assert engine.prefill("s", tokens[:-15]) == len(tokens) - 15
    assert engine.prefill("s", tokens[:-4]) == len(tokens) - 4
    second, _ = run(engine, {"resume": first.state.model_dump(), "prefill_session": "s"})
    assert second.token_ids == full.token_ids
    assert engine.prefill("t", tokens) == len(tokens)  # a complete prefill: nothing left to compute
    third, _ = run(engine, {"resume": first.state.model_dump(), "prefill_session": "t"})
    assert third.token_ids == full.token_ids


def test_context_limits(engine: Engine) -> None:
    with pytest.raises(RequestError, match="context is 512 tokens"):
        engine.prepare(parse_generation_params({"prompt": [5] * 512}))
    result, _ = run(engine, {"prompt": [5] * 509, "max_tokens": 10, "temperature": 0})
    assert result.finish_reason == "length" and result.completion_tokens == 3
    with pytest.raises(RequestError, match="outside the vocabulary"):
        engine.prepare(parse_generation_params({"prompt": [1, 99999]}))
    other = {"model": "another", "prompt_ids": [1], "sampling": {}, "seed": 1}
    with pytest.raises(RequestError, match="this runtime serves"):
        engine.prepare(parse_generation_params({"resume": other}))


def test_past_deadline_raises_timeout(engine: Engine) -> None:
    with pytest.raises(ActivationTimeoutError):
        run(engine, {"prompt": PROMPT, "max_tokens": 5}, RunControl("late", deadline_ms=1))


def test_zero_max_tokens(engine: Engine) -> None:
    result, events = run(engine, {"prompt": PROMPT, "max_tokens": 0})
    assert (result.token_ids, result.text, result.finish_reason, events) == ([], "", "length", [])
