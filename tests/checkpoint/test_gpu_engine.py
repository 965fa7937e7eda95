"""Generation on a checkpoint loaded straight to the device (on a GPU: the pinned-staging pipeline):
the runtime's engine, on transformers' forward (one call per sequence) and on the paged batched forward,
against transformers' own model on the same device.
The ``cuda`` cases run only where CUDA is available (a lent GPU machine); CI runs the ``cpu`` ones."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from action_runtime.batching.build import EngineConfig
from action_runtime.control import RunControl
from action_runtime.engine import Engine, GenerationResult
from action_runtime.loading import LoadedModel
from faas_llm.checkpoint import load_model
from faas_llm.genparams import parse_generation_params
from faas_llm.types import LoadTier
from tests.checkpoint.conftest import reference

DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device here (run on a lent GPU machine)")])]

PROMPT = "Once upon a time, in a cluster far away, the scheduler said:"


def _engine(model: Any, model_dir: Path, paged: bool) -> Engine:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    loaded = LoadedModel(model=model, tokenizer=tokenizer, name="tiny", tier=LoadTier.SSD, load_s=0.0, source="test")
    return Engine(loaded, EngineConfig(paged=None if paged else False))


def _run(engine: Engine, value: dict[str, Any]) -> GenerationResult:
    params = parse_generation_params(value)
    for item in engine.generate(engine.prepare(params), RunControl("gpu-test")):
        if isinstance(item, GenerationResult):
            return item
    raise AssertionError("no result")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("model_dir_name", "ckpt_name"), [("tiny_model_dir", "tiny_ckpt"),
                                                          ("tiny_model_dir_fp16", "tiny_ckpt_fp16")])
def test_engine_on_device_matches_from_pretrained(request: pytest.FixtureRequest, device: str, model_dir_name: str,
                                                  ckpt_name: str) -> None:
    model_dir: Path = request.getfixturevalue(model_dir_name)
    ours, _ = load_model(request.getfixturevalue(ckpt_name), device=device)
    theirs = reference(model_dir, device=device)
    assert all(p.device.type == device for p in ours.parameters())
    value = {"prompt": PROMPT, "max_tokens": 24, "temperature": 0}
    plain_ours = _run(_engine(ours, model_dir, paged=False), value)
    plain_theirs = _run(_engine(theirs, model_dir, paged=False), value)
    assert plain_ours.token_ids == plain_theirs.token_ids and plain_ours.text == plain_theirs.text
    paged = _engine(ours, model_dir, paged=True)
    # the paged forward reduces in its own (batch-invariant) order, so its logits are not transformers' bits;
    # the greedy tokens of a short run are the same (no near-tie within that rounding on these models)
    assert paged.forward_kind == "paged"
    assert _run(paged, value).token_ids == plain_ours.token_ids
    sampled = {"prompt": PROMPT, "max_tokens": 16, "temperature": 0.9, "top_p": 0.95, "seed": 1234}
    assert _run(paged, sampled).token_ids == _run(_engine(ours, model_dir, paged=False), sampled).token_ids
