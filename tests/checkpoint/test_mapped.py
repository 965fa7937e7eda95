"""The warm path: a checkpoint entirely in the page cache is mapped (verified), not copied."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from faas_llm.checkpoint import RegionPool, load_model, read_index
from faas_llm.errors import CheckpointError
from tests.checkpoint.conftest import logits, reference


def _cache(ckpt: Path) -> None:
    for part in read_index(ckpt).partitions:
        (ckpt / part.file).read_bytes()


def _evict(ckpt: Path) -> None:
    for part in read_index(ckpt).partitions:
        fd = os.open(ckpt / part.file, os.O_RDONLY)
        os.fsync(fd)  # dirty pages (a fresh copy) cannot be dropped
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)


def test_cached_checkpoint_is_mapped_and_identical(ckpt_copy: Path, tiny_model_dir: Path) -> None:
    _cache(ckpt_copy)
    pool = RegionPool()
    model, stats = load_model(ckpt_copy, pool=pool)
    assert stats.extra.get("mapped") == 1.0 and stats.verified
    assert pool.free_bytes == 0  # no private region was needed
    assert torch.equal(logits(model), logits(reference(tiny_model_dir)))
    copied, copy_stats = load_model(ckpt_copy, pool=pool, map_cached=False)
    assert "mapped" not in copy_stats.extra
    assert torch.equal(logits(copied), logits(model))


def test_uncached_checkpoint_is_copied(ckpt_copy: Path) -> None:
    _evict(ckpt_copy)
    _, stats = load_model(ckpt_copy, pool=RegionPool())
    assert "mapped" not in stats.extra


def test_corruption_in_the_page_cache_is_caught(ckpt_copy: Path) -> None:
    part = ckpt_copy / read_index(ckpt_copy).partitions[0].file
    data = bytearray(part.read_bytes())
    data[-5000] ^= 0x80
    part.write_bytes(bytes(data))  # the damaged bytes are now what the page cache holds
    with pytest.raises(CheckpointError, match="checksum mismatch") as err:
        load_model(ckpt_copy, pool=RegionPool())
    assert part.name in str(err.value)
