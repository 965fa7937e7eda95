"""Checkpoints of the tiny demo models, converted once per session, and a helper to compare logits."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from faas_llm.checkpoint import convert


def _convert(tmp_path_factory: pytest.TempPathFactory, src: Path, name: str) -> Path:
    out = tmp_path_factory.mktemp("ckpt") / name
    convert(src, out)
    return out


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    return _convert(tmp_path_factory, tiny_model_dir, "llama")


@pytest.fixture(scope="session")
def tiny_ckpt_fp16(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir_fp16: Path) -> Path:
    return _convert(tmp_path_factory, tiny_model_dir_fp16, "llama-fp16")


@pytest.fixture(scope="session")
def tiny_gpt2_ckpt(tmp_path_factory: pytest.TempPathFactory, tiny_gpt2_dir: Path) -> Path:
    return _convert(tmp_path_factory, tiny_gpt2_dir, "gpt2")


@pytest.fixture(scope="session")
def tiny_opt_ckpt(tmp_path_factory: pytest.TempPathFactory, tiny_opt_dir: Path) -> Path:
    return _convert(tmp_path_factory, tiny_opt_dir, "opt")


@pytest.fixture
def ckpt_copy(tiny_ckpt: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny Llama checkpoint, free to damage."""
    return Path(shutil.copytree(tiny_ckpt, tmp_path / "copy"))


INPUT_IDS = torch.tensor([[1, 17, 250, 3, 999, 42, 7, 512, 64, 2], [5, 6, 7, 8, 9, 10, 11, 12, 13, 14]])


def logits(model: nn.Module) -> torch.Tensor:
    with torch.inference_mode():
        return model(INPUT_IDS.to(next(model.parameters()).device)).logits.float().cpu()


def reference(model_dir: Path, device: str = "cpu") -> nn.Module:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True).to(device).eval()
