"""Loading: logits bit-identical to from_pretrained, zero-copy views, reader options, the region pool."""

from __future__ import annotations

import gc
import os
from pathlib import Path

import pytest
import torch

from faas_llm.checkpoint import (
    LocalDirSource,
    Region,
    RegionPool,
    SharedMemorySource,
    build_model,
    checkpoint_nbytes,
    load_model,
    read_index,
    read_into,
    tensors_from_buffer,
)
from faas_llm.settings import Settings
from tests.checkpoint.conftest import logits, reference


@pytest.mark.parametrize(
    ("ckpt", "model_dir", "dtype"),
    [
        ("tiny_ckpt", "tiny_model_dir", torch.float32),
        ("tiny_ckpt_fp16", "tiny_model_dir_fp16", torch.float16),
        ("tiny_gpt2_ckpt", "tiny_gpt2_dir", torch.float32),
        ("tiny_opt_ckpt", "tiny_opt_dir", torch.float32),
    ],
)
def test_logits_bit_identical_to_from_pretrained(
    request: pytest.FixtureRequest, ckpt: str, model_dir: str, dtype: torch.dtype
) -> None:
    ckpt_dir: Path = request.getfixturevalue(ckpt)
    model, stats = load_model(ckpt_dir, pool=RegionPool(), map_cached=False)
    ref = reference(request.getfixturevalue(model_dir))
    assert next(model.parameters()).dtype == dtype
    assert not model.training
    assert torch.equal(logits(model), logits(ref))
    # every buffer (persistent or not, e.g. rotary inv_freq) equals from_pretrained's
    ref_buffers = dict(ref.named_buffers())
    for name, buf in model.named_buffers():
        assert buf.device.type == "cpu"
        assert torch.equal(buf, ref_buffers[name]), name
    assert stats.verified and stats.nbytes == checkpoint_nbytes(read_index(ckpt_dir))


def test_tied_weights_are_one_parameter(tiny_gpt2_ckpt: Path, tiny_opt_ckpt: Path) -> None:
    gpt2, _ = load_model(tiny_gpt2_ckpt, pool=RegionPool())
    assert gpt2.lm_head.weight is gpt2.transformer.wte.weight
    opt, _ = load_model(tiny_opt_ckpt, pool=RegionPool())
    assert opt.lm_head.weight is opt.model.decoder.embed_tokens.weight


def test_parameters_are_zero_copy_views_of_the_region(tiny_ckpt: Path) -> None:
    index = read_index(tiny_ckpt)
    region = Region.allocate(checkpoint_nbytes(index))
    model, _ = load_model(tiny_ckpt, region=region)
    lo, hi = region.address, region.address + region.nbytes
    for name, param in model.named_parameters():
        assert lo <= param.data_ptr() < hi, name
        assert param.data_ptr() == lo + index.region_offset(name)


def test_module_with_tied_weights_converts_to_aliases(tiny_gpt2_dir: Path, tmp_path: Path) -> None:
    from faas_llm.checkpoint import convert

    ref = reference(tiny_gpt2_dir)
    index = convert(ref, tmp_path / "ck", files_from=tiny_gpt2_dir)
    assert index.aliases == {"lm_head.weight": "transformer.wte.weight"}
    assert "config.json" in index.files and "tokenizer.json" in index.files
    buffer = bytearray(checkpoint_nbytes(index))
    read_into(tmp_path / "ck", index, buffer)
    tensors = tensors_from_buffer(index, buffer)
    assert tensors["lm_head.weight"] is tensors["transformer.wte.weight"]
    model = build_model(tmp_path / "ck", tensors)
    assert model.lm_head.weight is model.transformer.wte.weight
    assert torch.equal(logits(model), logits(ref))


@pytest.mark.parametrize(
    ("threads", "chunk", "direct", "page_cache", "evict"),
    [(1, 1, True, True, False), (2, 8 << 20, True, False, False), (2, 64 << 20, False, True, False),
     (2, 1, True, True, True)],
)
def test_read_into_options_give_identical_bytes(
    tiny_ckpt: Path, threads: int, chunk: int, direct: bool, page_cache: bool, evict: bool
) -> None:
    index = read_index(tiny_ckpt)
    if evict:  # not in the page cache: the RWF_NOWAIT probe misses and O_DIRECT reads the disk
        for part in index.partitions:
            fd = os.open(tiny_ckpt / part.file, os.O_RDONLY)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(fd)
    region = Region.allocate(checkpoint_nbytes(index))
    stats = read_into(tiny_ckpt, index, region.buffer, threads=threads, chunk_bytes=chunk, direct_io=direct,
                      use_page_cache=page_cache)
    expected = b"".join((tiny_ckpt / p.file).read_bytes() for p in index.partitions)
    assert bytes(region.view(0, index.total_bytes)) == expected
    assert stats.nbytes == index.total_bytes
    if not direct:
        assert not stats.direct_io


def test_unaligned_destination_falls_back_to_buffered_reads(tiny_ckpt: Path) -> None:
    index = read_index(tiny_ckpt)
    backing = bytearray(index.total_bytes + 1)
    dest = memoryview(backing)[1:]  # one byte off any page boundary: O_DIRECT impossible
    stats = read_into(tiny_ckpt, index, dest, direct_io=True)
    assert not stats.direct_io
    tensors = tensors_from_buffer(index, dest)
    assert set(tensors) == set(index.names())


def test_shared_memory_source_reads_the_same_bytes(tiny_ckpt: Path) -> None:
    index = read_index(tiny_ckpt)
    first = Region.allocate(index.total_bytes)
    read_into(tiny_ckpt, index, first.buffer)
    second = Region.allocate(index.total_bytes)
    source = SharedMemorySource(first.buffer, index, config_dir=tiny_ckpt)
    read_into(source, index, second.buffer)
    assert bytes(second.buffer[: index.total_bytes]) == bytes(first.buffer[: index.total_bytes])
    model, _ = load_model(source, pool=RegionPool())
    assert torch.equal(logits(model), logits(load_model(tiny_ckpt, pool=RegionPool())[0]))


def test_pool_reuses_a_region_once_the_model_is_gone(tiny_ckpt: Path) -> None:
    pool = RegionPool()
    pool.reserve(checkpoint_nbytes(read_index(tiny_ckpt)))
    assert pool.free_bytes > 0
    model, _ = load_model(tiny_ckpt, pool=pool, map_cached=False)
    assert pool.free_bytes == 0  # the reserved region is in use
    address = next(model.parameters()).data_ptr()
    del model
    gc.collect()
    assert pool.free_bytes > 0
    again, _ = load_model(tiny_ckpt, pool=pool, map_cached=False)
    assert next(again.parameters()).data_ptr() == address


def test_settings_choose_reader_options(tiny_ckpt: Path, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, loader_threads=1, loader_chunk_bytes=1 << 20, loader_direct_io=False)
    _, stats = load_model(tiny_ckpt, settings=settings, pool=RegionPool(), map_cached=False)
    assert stats.threads == 1 and not stats.direct_io
    assert stats.chunk_bytes == read_index(tiny_ckpt).checksum_block  # rounded up to whole checksum blocks


def test_local_source_describes_itself(tiny_ckpt: Path) -> None:
    source = LocalDirSource(tiny_ckpt)
    assert source.config_dir == tiny_ckpt
    assert source.index == read_index(tiny_ckpt)


def test_module_with_odd_dtypes_and_views_round_trips(tmp_path: Path) -> None:
    from faas_llm.checkpoint import convert

    module = torch.nn.Module()
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    module.register_buffer("transposed", base.t())  # not contiguous
    module.register_buffer("bf16", torch.linspace(-2, 2, 7).to(torch.bfloat16))
    module.register_buffer("mask", torch.tensor([True, False, True]))
    module.register_buffer("scalar", torch.tensor(3, dtype=torch.int64))
    module.register_buffer("empty", torch.zeros(0, 5))
    index = convert(module, tmp_path / "ck")
    buffer = bytearray(checkpoint_nbytes(index))
    read_into(tmp_path / "ck", index, buffer)
    tensors = tensors_from_buffer(index, buffer)
    for name, expected in module.state_dict().items():
        assert tensors[name].dtype == expected.dtype and torch.equal(tensors[name], expected), name
