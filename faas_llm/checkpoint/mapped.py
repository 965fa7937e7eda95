"""The warm path: a checkpoint whose partitions are all in the page cache is mapped, not copied.

When every page of every partition file is already resident (``mincore``), copying them
into a private region would only spend memory bandwidth (and, on a small VM, most of the
load's time). Instead each partition is mapped read-only (``MAP_SHARED``: the page-cache
pages themselves), every checksum block is verified over the mapping (which also maps
every page, so the bytes are resident before the model is returned), and the tensors are
views into the mappings. A checkpoint file is never modified in place (conversion writes
a new directory and renames it), so the mapping stays valid; deleting the directory keeps
the mapped inodes alive.
"""

from __future__ import annotations

import mmap
import os
from concurrent.futures import ThreadPoolExecutor

import torch
import xxhash

from faas_llm.checkpoint.format import CheckpointIndex
from faas_llm.checkpoint.sources import LocalDirSource
from faas_llm.checkpoint.tensors import region_tensor, torch_dtype
from faas_llm.errors import CheckpointError


def fully_cached(source: LocalDirSource) -> bool:
    """Whether every partition of an *open* source is entirely in the page cache."""
    return source.use_page_cache and all(
        source.resident_prefix(part, 0, part.nbytes) == part.nbytes for part in source.index.partitions
    )


def map_partitions(source: LocalDirSource, index: CheckpointIndex, *, verify: bool = True,
                   threads: int = 2) -> dict[str, torch.Tensor]:
    """Tensors viewing read-only mappings of the partition files (checksums verified over them)."""
    mappings: list[mmap.mmap] = []
    for part in index.partitions:
        path = source.path_of(part)
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError as exc:
            raise CheckpointError(f"{path}: cannot open: {exc.strerror}") from None
        try:
            if os.fstat(fd).st_size != part.nbytes:
                raise CheckpointError(f"{path}: partition has {os.fstat(fd).st_size} bytes, the index says "
                                      f"{part.nbytes} (truncated or replaced)")
            mappings.append(mmap.mmap(fd, part.nbytes, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ))
        finally:
            os.close(fd)
    if verify:
        _verify(source, index, mappings, threads)
    bases = [region_tensor(memoryview(m), len(m)) for m in mappings]
    out: dict[str, torch.Tensor] = {}
    for name, entry in index.tensors.items():
        raw = bases[entry.partition][entry.offset:entry.offset + entry.nbytes]
        out[name] = raw.view(torch_dtype(entry.dtype)).view(entry.shape)
    for alias, target in index.aliases.items():
        out[alias] = out[target]
    return out


def _verify(source: LocalDirSource, index: CheckpointIndex, mappings: list[mmap.mmap], threads: int) -> None:
    block = index.checksum_block
    jobs = [(p, start) for p, part in enumerate(index.partitions) for start in range(0, part.nbytes, block)]

    def check(job: tuple[int, int]) -> str | None:
        p, start = job
        part = index.partitions[p]
        view = memoryview(mappings[p])[start:start + block]
        try:
            if xxhash.xxh3_64(view).hexdigest() != part.checksums[start // block]:
                return (f"{source.root / part.file}: checksum mismatch in block {start // block} (bytes {start}.."
                        f"{min(start + block, part.nbytes)}): the checkpoint is corrupt")
        finally:
            view.release()
        return None

    with ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="ckpt-verify") as pool:
        problems = [p for p in pool.map(check, jobs) if p]
    if problems:
        raise CheckpointError(problems[0])
