"""The GPU pipeline (pinned staging -> CUDA stream). Runs only where CUDA is available."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from faas_llm.checkpoint import load_model, load_to_device, read_index, tensors_from_region
from faas_llm.errors import CheckpointError
from tests.checkpoint.conftest import logits, reference

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("threads", [1, 2])
def test_region_on_gpu_matches_the_files(tiny_ckpt: Path, threads: int) -> None:
    index = read_index(tiny_ckpt)
    region, stats = load_to_device(tiny_ckpt, index, device="cuda", chunk_bytes=1, threads=threads)
    assert region.device.type == "cuda" and region.numel() == index.total_bytes
    expected = b"".join((tiny_ckpt / p.file).read_bytes() for p in index.partitions)
    assert bytes(region.cpu().numpy().tobytes()) == expected
    tensors = tensors_from_region(index, region)
    assert all(t.device.type == "cuda" for t in tensors.values())
    assert stats.nbytes == index.total_bytes


@pytest.mark.parametrize(
    ("ckpt", "model_dir"), [("tiny_ckpt", "tiny_model_dir"), ("tiny_ckpt_fp16", "tiny_model_dir_fp16"),
                            ("tiny_gpt2_ckpt", "tiny_gpt2_dir")],
)
def test_gpu_model_matches_from_pretrained_on_gpu(request: pytest.FixtureRequest, ckpt: str, model_dir: str) -> None:
    model, _ = load_model(request.getfixturevalue(ckpt), device="cuda")
    ref = reference(request.getfixturevalue(model_dir), device="cuda")
    assert all(p.device.type == "cuda" for p in model.parameters())
    assert all(b.device.type == "cuda" for b in model.buffers())
    assert torch.equal(logits(model), logits(ref))


def test_gpu_load_detects_corruption(ckpt_copy: Path) -> None:
    part = ckpt_copy / read_index(ckpt_copy).partitions[0].file
    data = bytearray(part.read_bytes())
    data[100] ^= 0xFF
    part.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        load_to_device(ckpt_copy, device="cuda")
