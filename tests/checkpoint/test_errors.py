"""Every bad checkpoint gets a CheckpointError naming the file and the problem; nothing half-loaded."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from faas_llm.checkpoint import RegionPool, load_model, read_index, read_into
from faas_llm.errors import CheckpointError


def _edit_index(ckpt: Path, edit: Callable[[dict], None]) -> None:
    path = ckpt / "index.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def _first_partition(ckpt: Path) -> Path:
    return ckpt / read_index(ckpt).partitions[0].file


def _expect_failure(ckpt: Path, *patterns: str) -> None:
    """load_model raises naming the problem, returns nothing, and gives its region back to the pool."""
    pool = RegionPool()
    pool.reserve(1 << 20)
    for map_cached in (True, False):  # the mapped (page cache) path and the copying path
        with pytest.raises(CheckpointError) as err:
            load_model(ckpt, pool=pool, map_cached=map_cached)
        for pattern in patterns:
            assert pattern in str(err.value), (pattern, str(err.value))
        assert pool.free_bytes == 1 << 20  # the region went back (or was never taken), unused by any model


def test_truncated_partition(ckpt_copy: Path) -> None:
    part = _first_partition(ckpt_copy)
    os.truncate(part, part.stat().st_size - 4096)
    _expect_failure(ckpt_copy, str(part), "truncated")


def test_checksum_mismatch(ckpt_copy: Path) -> None:
    part = _first_partition(ckpt_copy)
    with open(part, "r+b") as f:
        f.seek(5000)
        byte = f.read(1)
        f.seek(5000)
        f.write(bytes([byte[0] ^ 0x01]))  # one flipped bit
    _expect_failure(ckpt_copy, part.name, "checksum mismatch in block 0")
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        read_into(ckpt_copy, None, bytearray(read_index(ckpt_copy).total_bytes), direct_io=False, threads=1)


def test_index_offset_past_the_end(ckpt_copy: Path) -> None:
    def edit(data: dict) -> None:
        name = next(iter(data["tensors"]))
        data["tensors"][name]["offset"] = data["partitions"][0]["nbytes"]

    _edit_index(ckpt_copy, edit)
    with pytest.raises(CheckpointError, match=r"index\.json: tensor .* past the end of partition-00000\.bin"):
        load_model(ckpt_copy, pool=RegionPool())


def test_unknown_dtype(ckpt_copy: Path) -> None:
    _edit_index(ckpt_copy, lambda d: next(iter(d["tensors"].values())).update(dtype="float7"))
    with pytest.raises(CheckpointError, match=r"index\.json: tensor .* unknown dtype 'float7'"):
        load_model(ckpt_copy, pool=RegionPool())


def test_missing_tensor(ckpt_copy: Path) -> None:
    _edit_index(ckpt_copy, lambda d: d["tensors"].pop("model.norm.weight"))
    _expect_failure(ckpt_copy, str(ckpt_copy), "missing tensor(s) model.norm.weight")


def test_format_version_from_the_future(ckpt_copy: Path) -> None:
    _edit_index(ckpt_copy, lambda d: d.update(format_version=99))
    with pytest.raises(CheckpointError, match=r"index\.json: format version 99 is from the future"):
        load_model(ckpt_copy, pool=RegionPool())


def test_path_outside_the_checkpoint_dir(ckpt_copy: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside.bin"
    outside.write_bytes(_first_partition(ckpt_copy).read_bytes())
    _edit_index(ckpt_copy, lambda d: d["partitions"][0].update(file="../outside.bin"))
    with pytest.raises(CheckpointError, match=r"index\.json: .*'\.\./outside\.bin' points outside the checkpoint"):
        load_model(ckpt_copy, pool=RegionPool())


def test_symlink_escaping_the_checkpoint_dir(ckpt_copy: Path, tmp_path: Path) -> None:
    part = _first_partition(ckpt_copy)
    outside = tmp_path / "outside.bin"
    os.rename(part, outside)
    part.symlink_to(outside)
    _expect_failure(ckpt_copy, str(part), "outside the checkpoint directory")


def test_missing_partition_file(ckpt_copy: Path) -> None:
    part = _first_partition(ckpt_copy)
    part.unlink()
    _expect_failure(ckpt_copy, str(part), "missing")


def test_missing_config(ckpt_copy: Path) -> None:
    (ckpt_copy / "config.json").unlink()
    _expect_failure(ckpt_copy, "config.json", "missing")


def test_destination_too_small_or_read_only(tiny_ckpt: Path) -> None:
    index = read_index(tiny_ckpt)
    with pytest.raises(CheckpointError, match="needs"):
        read_into(tiny_ckpt, index, bytearray(index.total_bytes - 4096))
    with pytest.raises(CheckpointError, match="read-only"):
        read_into(tiny_ckpt, index, memoryview(bytes(index.total_bytes)))
