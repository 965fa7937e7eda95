"""Torch intra-op threads chosen from the model: the policy, the runtime applying it at init, and
generation results that do not depend on the thread count."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from action_runtime.control import RunControl
from action_runtime.engine import Engine, GenerationResult
from action_runtime.loading import ModelSpec, load_model
from action_runtime.service import RuntimeService
from action_runtime.threads import intra_op_threads, parameter_count
from faas_llm.genparams import parse_generation_params
from faas_llm.settings import Settings


@pytest.fixture
def restore_threads() -> Iterator[int]:
    before = torch.get_num_threads()
    yield before
    torch.set_num_threads(before)


def test_configured_threads_win() -> None:
    assert intra_op_threads(3, n_params=10, single_thread_below=1000) == 3
    assert intra_op_threads(2, n_params=10**10, single_thread_below=1000) == 2


def test_small_model_gets_one_thread_large_keeps_default() -> None:
    assert intra_op_threads(0, n_params=999, single_thread_below=1000) == 1
    assert intra_op_threads(0, n_params=1000, single_thread_below=1000) is None
    assert intra_op_threads(0, n_params=10**10, single_thread_below=1000) is None


def test_threshold_zero_always_keeps_default() -> None:
    assert intra_op_threads(0, n_params=0, single_thread_below=0) is None
    assert intra_op_threads(0, n_params=10, single_thread_below=0) is None


def test_parameter_count_counts_tied_weights_once() -> None:
    a = torch.nn.Linear(4, 3)  # 12 + 3
    b = torch.nn.Linear(4, 3, bias=False)
    b.weight = a.weight
    assert parameter_count(torch.nn.ModuleList([a, b])) == 15


def init_service(tmp_path: Path, model_dir: Path, **settings: Any) -> RuntimeService:
    service = RuntimeService(Settings(data_dir=tmp_path, **settings))
    service.init({"value": {"name": "t", "checkpoint": str(model_dir)}})
    return service


def test_init_sets_one_thread_for_the_tiny_model(tmp_path: Path, tiny_model_dir: Path,
                                                 restore_threads: int) -> None:
    torch.set_num_threads(2)
    service = init_service(tmp_path / "a", tiny_model_dir)
    assert parameter_count(service.engine().model) < Settings().runtime_single_thread_below_params
    assert torch.get_num_threads() == 1
    service.close()


def test_init_keeps_the_configured_or_default_threads(tmp_path: Path, tiny_model_dir: Path,
                                                      restore_threads: int) -> None:
    torch.set_num_threads(2)
    init_service(tmp_path / "a", tiny_model_dir, runtime_torch_threads=3).close()
    assert torch.get_num_threads() == 3
    torch.set_num_threads(2)
    init_service(tmp_path / "b", tiny_model_dir, runtime_single_thread_below_params=0).close()
    assert torch.get_num_threads() == 2
    torch.set_num_threads(2)
    init_service(tmp_path / "c", tiny_model_dir, runtime_single_thread_below_params=100).close()
    assert torch.get_num_threads() == 2  # the tiny model has more than 100 parameters


def generate(engine: Engine, value: dict[str, Any]) -> list[int]:
    params = parse_generation_params(value)
    for item in engine.generate(engine.prepare(params), RunControl("test")):
        if isinstance(item, GenerationResult):
            return item.token_ids
    raise AssertionError("no result")


PROMPTS = ["The serverless platform", "a", "Once upon a time in a data centre far away, " * 4]


@pytest.mark.parametrize("fixture", ["tiny_model_dir", "tiny_gpt2_dir"])
def test_tokens_do_not_depend_on_the_thread_count(fixture: str, request: pytest.FixtureRequest, tmp_path: Path,
                                                   restore_threads: int) -> None:
    engine = Engine(load_model(ModelSpec(checkpoint=str(request.getfixturevalue(fixture))),
                               Settings(data_dir=tmp_path)))
    values: list[dict[str, Any]] = []
    for prompt in PROMPTS:
        for max_tokens in (1, 7, 40):
            values.append({"prompt": prompt, "max_tokens": max_tokens, "temperature": 0})
            values.append({"prompt": prompt, "max_tokens": max_tokens, "temperature": 0.9, "top_p": 0.9,
                           "seed": 1234 + max_tokens})
    by_threads = {}
    for threads in (1, 2, 4):
        torch.set_num_threads(threads)
        by_threads[threads] = [generate(engine, v) for v in values]
    assert by_threads[1] == by_threads[2] == by_threads[4]
    assert all(len(tokens) >= 1 for tokens in by_threads[1])
