"""Populating a mapping up front (the cache client does it on a pool of 4 KiB pages): the chunk plan,
the forward's tensor order, and MADV_POPULATE_READ over a real shared-memory segment."""

from __future__ import annotations

import mmap
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from faas_llm.checkpoint import SharedRegion, read_index
from faas_llm.checkpoint.format import CheckpointIndex, PartitionEntry, TensorEntry
from faas_llm.checkpoint.region import buffer_address, forward_order_extents, populate, populate_plan

PAGE = 4096


def covered(plan: list[tuple[int, int]]) -> list[int]:
    return sorted(b for start, n in plan for b in range(start, start + n))


def test_plan_covers_every_byte_once_in_page_aligned_chunks_of_at_most_chunk_bytes() -> None:
    total = 10 * PAGE + 100  # the last page is partial
    plan = populate_plan(total, chunk_bytes=3 * PAGE, page_bytes=PAGE)
    assert plan == [(0, 3 * PAGE), (3 * PAGE, 3 * PAGE), (6 * PAGE, 3 * PAGE), (9 * PAGE, PAGE + 100)]
    assert covered(plan) == list(range(total))


def test_plan_takes_the_extents_first_in_their_order_then_the_rest_ascending() -> None:
    total = 10 * PAGE
    # the second extent widens to pages 6..7 and overlaps the first's page 7; a third repeats page 6
    plan = populate_plan(total, [(7 * PAGE, PAGE), (6 * PAGE + 5, PAGE), (6 * PAGE, 10)], chunk_bytes=4 * PAGE,
                         page_bytes=PAGE)
    assert plan == [(7 * PAGE, PAGE), (6 * PAGE, PAGE), (0, 4 * PAGE), (4 * PAGE, 2 * PAGE), (8 * PAGE, 2 * PAGE)]
    assert covered(plan) == list(range(total))
    assert all(start % PAGE == 0 for start, _ in plan)


def test_plan_merges_contiguous_neighbours_up_to_a_chunk_and_clips_to_the_total() -> None:
    plan = populate_plan(8 * PAGE, [(0, PAGE), (PAGE, PAGE), (2 * PAGE, PAGE), (6 * PAGE, 100 * PAGE), (-5, 0)],
                         chunk_bytes=2 * PAGE, page_bytes=PAGE)
    assert plan == [(0, 2 * PAGE), (2 * PAGE, PAGE), (6 * PAGE, 2 * PAGE), (3 * PAGE, 2 * PAGE), (5 * PAGE, PAGE)]
    assert populate_plan(0) == []
    with pytest.raises(ValueError):
        populate_plan(PAGE, chunk_bytes=0)


def _index(names: list[str]) -> CheckpointIndex:
    tensors = {n: TensorEntry(n, 0, i * PAGE, PAGE, (PAGE // 2,), "float16") for i, n in enumerate(names)}
    return CheckpointIndex((PartitionEntry("p0", len(names) * PAGE, 0, ("x",)),), tensors)


def test_forward_order_is_natural_with_the_head_last() -> None:
    lexical = ["lm_head.weight", "model.embed_tokens.weight", "model.layers.0.mlp.weight", "model.layers.1.mlp.weight",
               "model.layers.10.mlp.weight", "model.layers.2.mlp.weight", "model.norm.weight"]
    index = _index(lexical)
    order = [lexical[offset // PAGE] for offset, _ in forward_order_extents(index)]
    assert order == ["model.embed_tokens.weight", "model.layers.0.mlp.weight", "model.layers.1.mlp.weight",
                     "model.layers.2.mlp.weight", "model.layers.10.mlp.weight", "model.norm.weight",
                     "lm_head.weight"]
    assert all(n == PAGE for _, n in forward_order_extents(index))


def test_forward_order_of_a_real_checkpoint_covers_each_tensor(tiny_ckpt: Path) -> None:
    index = read_index(tiny_ckpt)
    extents = forward_order_extents(index)
    assert sorted(extents) == sorted((index.region_offset(n), e.nbytes) for n, e in index.tensors.items())
    assert extents[0][0] == index.region_offset("model.embed_tokens.weight")


def resident_kib(address: int, nbytes: int) -> int:
    """This process's resident KiB (mapped page-table entries) of the mapping at ``address``."""
    lines = Path("/proc/self/smaps").read_text().splitlines()
    for i, line in enumerate(lines):
        head = line.split()[0]
        if "-" in head and ":" not in head:
            start, end = (int(x, 16) for x in head.split("-"))
            if start <= address < end:
                assert address + nbytes <= end
                rss = next(ln for ln in lines[i + 1:] if ln.startswith("Rss:"))
                return int(rss.split()[1])
    raise AssertionError("mapping not found")


@pytest.fixture
def segment() -> Iterator[SharedRegion]:
    region = SharedRegion.create(f"faas-llm-test-populate-{uuid.uuid4().hex[:12]}", 8 * 1024 * 1024)
    try:
        yield region
    finally:
        region.unlink()
        region.close()


@pytest.mark.parametrize("threads", [1, 3])
def test_populate_maps_every_page_of_a_lazy_shared_mapping(segment: SharedRegion, threads: int) -> None:
    attached = SharedRegion.attach(segment.name)  # lazily: nothing mapped yet
    try:
        buffer = attached.buffer
        address = buffer_address(buffer)
        assert resident_kib(address, buffer.nbytes) == 0
        plan = populate_plan(buffer.nbytes, [(5 * 1024 * 1024, PAGE)], chunk_bytes=1024 * 1024)
        assert populate(buffer, plan, threads=threads) == buffer.nbytes
        assert resident_kib(address, buffer.nbytes) * 1024 == buffer.nbytes
    finally:
        attached.close()


def test_populate_stopped_maps_nothing(segment: SharedRegion) -> None:
    attached = SharedRegion.attach(segment.name)
    try:
        stop = threading.Event()
        stop.set()
        assert populate(attached.buffer, threads=2, stop=stop) == 0
        assert resident_kib(buffer_address(attached.buffer), attached.nbytes) == 0
    finally:
        attached.close()


def test_populate_of_a_partial_last_page() -> None:
    with mmap.mmap(-1, 3 * PAGE) as mapping:
        view = memoryview(mapping)[: 2 * PAGE + 1]
        try:
            assert populate(view, threads=2) == 2 * PAGE + 1
        finally:
            view.release()
