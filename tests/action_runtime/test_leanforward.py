"""The lean forward (action_runtime/leanforward.py) against transformers' own forward, bit for bit:
logits at every step (torch.equal), whole runs' tokens and text (greedy and seeded sampling, several
prompts, max_tokens 1/7/40), prefill sessions of a migration, fp32 and fp16; architectures it was not
proven for fall back to the plain forward."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from action_runtime.control import RunControl
from action_runtime.engine import Engine, GenerationResult
from action_runtime.leanforward import LeanLlama, lean_forward_for, matches_model
from action_runtime.loading import LoadedModel, ModelSpec, load_model
from faas_llm.genparams import parse_generation_params
from faas_llm.settings import Settings

PROMPTS = ["The serverless platform", "a", "Once upon a time, in a cluster far away, the scheduler said:"]
SAMPLINGS: list[dict[str, Any]] = [
    {"temperature": 0},
    {"temperature": 0.9, "top_p": 0.95, "seed": 1234},
    {"temperature": 1.3, "seed": 7},
]


def load(model_dir: Path, tmp_path: Path) -> LoadedModel:
    return load_model(ModelSpec(checkpoint=str(model_dir)), Settings(data_dir=tmp_path))


def engines(model_dir: Path, tmp_path: Path) -> tuple[Engine, Engine]:
    loaded = load(model_dir, tmp_path)
    return Engine(loaded, lean=False), Engine(loaded, lean=True)


def run(engine: Engine, value: dict[str, Any]) -> GenerationResult:
    params = parse_generation_params(value)
    control = RunControl("test")
    if params.export_after is not None:
        control.request_stop(params.export_after)
    for item in engine.generate(engine.prepare(params), control):
        if isinstance(item, GenerationResult):
            return item
    raise AssertionError("no result")


@pytest.fixture(params=["float32", "float16"])
def llama_dir(request: pytest.FixtureRequest) -> Path:
    name = "tiny_model_dir" if request.param == "float32" else "tiny_model_dir_fp16"
    path: Path = request.getfixturevalue(name)
    return path


def test_lean_forward_serves_the_tiny_llama(llama_dir: Path, tmp_path: Path) -> None:
    plain, lean = engines(llama_dir, tmp_path)
    assert plain.lean is None and isinstance(lean.lean, LeanLlama)


@pytest.mark.parametrize("prompt", PROMPTS)
def test_logits_bit_identical_at_every_step(llama_dir: Path, tmp_path: Path, prompt: str) -> None:
    """Prefill, 40 single-token steps, then a multi-token extension of the cache (a migration's prefill
    round): every step's logits equal to the model's forward, bit for bit, in the model's dtype."""
    plain, lean = engines(llama_dir, tmp_path)
    ids = plain.tokenize(parse_generation_params({"prompt": prompt}))
    plain_cache, lean_cache = plain.new_cache(), lean.new_cache()
    theirs, mine = plain._forward(ids, plain_cache), lean._forward(ids, lean_cache)
    for step in range(40):
        assert mine.dtype == theirs.dtype == plain.model.dtype
        assert torch.equal(mine, theirs), f"step {step}"
        token = int(torch.argmax(theirs))
        theirs, mine = plain._forward([token], plain_cache), lean._forward([token], lean_cache)
    assert torch.equal(mine, theirs)
    extension = [(5 * i + 11) % plain.vocab_size for i in range(6)]
    assert torch.equal(lean._forward(extension, lean_cache), plain._forward(extension, plain_cache))
    assert lean_cache.length == len(ids) + 40 + 6


@pytest.mark.parametrize("sampling", SAMPLINGS, ids=["greedy", "top_p", "temperature"])
@pytest.mark.parametrize("max_tokens", [1, 7, 40])
def test_runs_equal_the_plain_forward(llama_dir: Path, tmp_path: Path, sampling: dict[str, Any],
                                      max_tokens: int) -> None:
    plain, lean = engines(llama_dir, tmp_path)
    for prompt in PROMPTS:
        value = {"prompt": prompt, "max_tokens": max_tokens, **sampling}
        theirs, mine = run(plain, value), run(lean, value)
        assert mine.token_ids == theirs.token_ids and mine.text == theirs.text
        assert mine.finish_reason == theirs.finish_reason
        assert mine.completion_tokens == max_tokens


def test_migration_through_prefill_rounds_equals_an_unmoved_plain_run(llama_dir: Path, tmp_path: Path) -> None:
    """Export after 12 tokens, prefill the destination in two rounds (multi-token extensions of a
    lean cache), resume there: the tokens are the unmoved plain run's."""
    plain, lean = engines(llama_dir, tmp_path)
    value = {"prompt": PROMPTS[0], "max_tokens": 30, "temperature": 0.8, "seed": 99}
    unmoved = run(plain, value)
    first = run(lean, {**value, "export_after": 12})
    assert first.finish_reason == "migrated" and first.state is not None
    tokens = first.state.prompt_ids + first.state.generated_ids
    assert lean.prefill("s", tokens[:-7]) == len(tokens) - 7
    assert lean.prefill("s", tokens[:-2]) == len(tokens) - 2
    resumed = run(lean, {"resume": first.state.model_dump(), "prefill_session": "s"})
    assert resumed.token_ids == unmoved.token_ids


@pytest.mark.parametrize("fixture", ["tiny_gpt2_dir", "tiny_opt_dir"])
def test_other_architectures_keep_the_plain_forward(fixture: str, request: pytest.FixtureRequest,
                                                    tmp_path: Path) -> None:
    plain, lean = engines(request.getfixturevalue(fixture), tmp_path)
    assert lean.lean is None
    value = {"prompt": PROMPTS[0], "max_tokens": 7, "temperature": 0}
    assert run(lean, value).token_ids == run(plain, value).token_ids


def test_a_model_with_hooks_keeps_the_plain_forward(tiny_model_dir: Path, tmp_path: Path) -> None:
    loaded = load(tiny_model_dir, tmp_path)
    handle = loaded.model.model.layers[0].mlp.register_forward_hook(lambda module, args, out: out * 2)
    try:
        assert Engine(loaded, lean=True).lean is None
    finally:
        handle.remove()
    assert Engine(loaded, lean=True).lean is not None


def test_eager_attention_keeps_the_plain_forward(tiny_model_dir: Path, tmp_path: Path) -> None:
    loaded = load(tiny_model_dir, tmp_path)
    loaded.model.set_attn_implementation("eager")
    assert Engine(loaded, lean=True).lean is None


def test_the_probe_rejects_a_forward_that_differs(tiny_model_dir: Path, tmp_path: Path) -> None:
    """The probe is what keeps an unproven configuration off the lean path: a lean forward whose
    norm epsilon is off by a little does not pass it."""
    model = load(tiny_model_dir, tmp_path).model
    engine = Engine(load(tiny_model_dir, tmp_path), lean=False)
    lean = LeanLlama(model)
    assert matches_model(lean, model, engine.new_cache, engine._cache_arg)
    lean.norm_eps *= 1.5
    assert not matches_model(lean, model, engine.new_cache, engine._cache_arg)
    assert lean_forward_for(model, engine.new_cache, engine._cache_arg) is not None


TEXTS = ["The serverless platform", "", " ", "a", "<s>hello</s> <pad> <|user|>", "é ü 日本語 🙂", "x" * 3000,
         "line one\nline two\r\n\ttabbed", "  leading and trailing  "]


@pytest.mark.parametrize("fixture", ["tiny_model_dir", "tiny_gpt2_dir", "tiny_opt_dir"])
def test_direct_tokenizer_backend_gives_the_wrappers_ids(fixture: str, request: pytest.FixtureRequest,
                                                          tmp_path: Path) -> None:
    engine = Engine(load(request.getfixturevalue(fixture), tmp_path))
    assert engine._backend is not None
    for text in TEXTS:
        assert engine._encode(text) == list(engine.tokenizer(text)["input_ids"]), text
    engine._backend.enable_truncation(max_length=3)  # a backend state the wrapper would undo: the wrapper serves
    assert engine._encode(TEXTS[0]) == list(engine.tokenizer(TEXTS[0])["input_ids"])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("q_len", [1, 2, 7])
def test_rolled_rotation_equals_rotate_half_bit_for_bit(dtype: torch.dtype, q_len: int) -> None:
    """The lean forward's RoPE, ``x * cos + roll(x) * signed_sin``, against transformers' ``apply_rotary_pos_emb``
    on the projections' layout (a transposed view): same values, same memory layout (what sdpa then reads)."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    generator = torch.Generator().manual_seed(q_len)
    heads, head_dim = 4, 16
    x = torch.randn(1, q_len, heads * head_dim, generator=generator).to(dtype).view(1, q_len, -1, head_dim)
    x = x.transpose(1, 2)
    cos = torch.randn(1, q_len, head_dim, generator=generator).to(dtype)
    sin = torch.randn(1, q_len, head_dim, generator=generator).to(dtype)
    theirs, _ = apply_rotary_pos_emb(x, x, cos, sin)
    half = head_dim // 2
    signed_sin = torch.cat((-sin[..., :half], sin[..., half:]), dim=-1).unsqueeze(1)
    mine = (x * cos.unsqueeze(1)) + (x.roll(half, dims=-1) * signed_sin)
    assert torch.equal(mine, theirs) and mine.stride() == theirs.stride()
