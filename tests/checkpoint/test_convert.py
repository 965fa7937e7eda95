"""The converter: every source kind, atomicity, side files, the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from cli import cli
from faas_llm.checkpoint import RegionPool, convert, load_model, read_index
from faas_llm.errors import CheckpointError
from tests.checkpoint.conftest import logits, reference


def test_files_alongside_and_layout(tiny_ckpt: Path, tiny_model_dir: Path) -> None:
    index = read_index(tiny_ckpt)
    for name in ("config.json", "tokenizer.json", "generation_config.json"):
        assert name in index.files
        assert (tiny_ckpt / name).read_bytes() == (tiny_model_dir / name).read_bytes()
    assert not list(tiny_ckpt.glob("*.safetensors"))
    for name, entry in index.tensors.items():
        assert entry.offset % 4096 == 0, name
    source = load_file(tiny_model_dir / "model.safetensors")
    assert set(index.tensors) == set(source)
    assert not [p for p in tiny_ckpt.parent.iterdir() if p.name.startswith(".")]  # no temp dirs left


def _sharded_copy(src: Path, out: Path) -> Path:
    out.mkdir()
    for f in src.iterdir():
        if f.suffix != ".safetensors":
            shutil.copy(f, out / f.name)
    state = load_file(src / "model.safetensors")
    names = sorted(state)
    halves = [names[: len(names) // 2], names[len(names) // 2:]]
    weight_map = {}
    for i, part in enumerate(halves):
        shard = f"model-0000{i + 1}-of-00002.safetensors"
        save_file({n: state[n] for n in part}, out / shard, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, shard))
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return out


def test_sharded_safetensors_and_bin_sources(tiny_model_dir: Path, tmp_path: Path) -> None:
    expected = logits(reference(tiny_model_dir))
    sharded = _sharded_copy(tiny_model_dir, tmp_path / "sharded")
    convert(sharded, tmp_path / "ck-sharded", partition_bytes=64 * 1024)  # force several partitions
    index = read_index(tmp_path / "ck-sharded")
    assert len(index.partitions) > 1
    model, _ = load_model(tmp_path / "ck-sharded", pool=RegionPool())
    assert torch.equal(logits(model), expected)

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for f in tiny_model_dir.iterdir():
        if f.suffix != ".safetensors":
            shutil.copy(f, bin_dir / f.name)
    torch.save(load_file(tiny_model_dir / "model.safetensors"), bin_dir / "pytorch_model.bin")
    convert(bin_dir, tmp_path / "ck-bin")
    model, _ = load_model(tmp_path / "ck-bin", pool=RegionPool())
    assert torch.equal(logits(model), expected)


def test_existing_destination_and_bad_sources(tiny_model_dir: Path, tiny_ckpt: Path, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="already exists"):
        convert(tiny_model_dir, tiny_ckpt)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="no model weights"):
        convert(empty, tmp_path / "out")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage")
    with pytest.raises(CheckpointError, match=r"broken/model\.safetensors"):
        convert(broken, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]  # temp dir removed


def test_overwrite_replaces_atomically(tiny_model_dir: Path, tiny_gpt2_dir: Path, tmp_path: Path) -> None:
    dst = tmp_path / "ck"
    convert(tiny_model_dir, dst)
    convert(tiny_gpt2_dir, dst, overwrite=True)
    assert "transformer.wte.weight" in read_index(dst).tensors
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]


def test_progress_reaches_the_total(tiny_model_dir: Path, tmp_path: Path) -> None:
    seen: list[tuple[int, int]] = []
    index = convert(tiny_model_dir, tmp_path / "ck", lambda done, total: seen.append((done, total)))
    assert seen[-1][0] == seen[-1][1] == index.tensor_bytes
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_cli_convert(tiny_model_dir: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(cli, ["model", "convert", str(tiny_model_dir), str(tmp_path / "ck")])
    assert result.exit_code == 0, result.output
    assert "partition" in result.output
    assert read_index(tmp_path / "ck").tensors
    again = runner.invoke(cli, ["model", "convert", str(tiny_model_dir), str(tmp_path / "ck")])
    assert again.exit_code != 0
    assert isinstance(again.exception, CheckpointError)
