"""Loading-optimised checkpoints and the multi-tier loader (ServerlessLLM's first technique).

The format (``docs/checkpoint-format.md``): a directory with a few large partition files
(tensors 4 KiB-aligned), ``index.json`` (format version, tensor -> partition/offset/size/
shape/dtype, aliases for shared storage, per-block xxh3 checksums) and the model's config
and tokenizer files. Loaded, the partitions lie back to back in ONE region of
:func:`checkpoint_nbytes` bytes; tensors are zero-copy views into it.

Public API::

    convert(src, dst, progress=None) -> CheckpointIndex        HF dir / nn.Module -> checkpoint
    read_index(ckpt_dir) -> CheckpointIndex                    validated index.json
    checkpoint_nbytes(index) -> int                            region size (partition p at
                                                               index.partitions[p].region_offset)
    read_into(src, index, dest, *, verify, chunk_bytes, threads, direct_io) -> LoadStats
                                                               large (O_DIRECT) reads straight into dest
    tensors_from_buffer(index, buffer) -> dict[str, Tensor]    zero-copy views (aliases share)
    tensors_from_region(index, uint8_tensor) -> dict            same, over a CPU or GPU uint8 tensor
    build_model(ckpt_dir, tensors, device="cpu") -> nn.Module  meta skeleton + assign, re-tied, eval
    load_model(ckpt, *, region=None, device="cpu", settings=None) -> (nn.Module, LoadStats)

    CheckpointSource / LocalDirSource / SharedMemorySource     where bytes come from (tiers)
    Region / SharedRegion / RegionPool                         pre-faulted destinations;
                                                               SharedRegion = /dev/shm segment
    load_to_device(src, ..., device="cuda")                    pinned-staging GPU pipeline (gpu.py)

Every problem with a checkpoint raises :class:`~faas_llm.errors.CheckpointError` naming the
file and the problem; no function returns half-loaded data.
"""

from faas_llm.checkpoint.convert import DEFAULT_PARTITION_BYTES, convert
from faas_llm.checkpoint.format import (
    ALIGNMENT,
    CHECKSUM_BLOCK_BYTES,
    FORMAT_VERSION,
    INDEX_FILE,
    CheckpointIndex,
    PartitionEntry,
    TensorEntry,
    checkpoint_nbytes,
    loads_index,
    parse_index,
    read_index,
)
from faas_llm.checkpoint.gpu import load_model_to_device, load_to_device
from faas_llm.checkpoint.model import assign_tensors, build_model, build_skeleton, load_model
from faas_llm.checkpoint.reader import DEFAULT_CHUNK_BYTES, LoadStats, ReadTask, plan_reads, read_into
from faas_llm.checkpoint.region import Region, RegionPool, SharedRegion, default_pool, prefault
from faas_llm.checkpoint.sources import CheckpointSource, LocalDirSource, SharedMemorySource
from faas_llm.checkpoint.tensors import tensors_from_buffer, tensors_from_region

__all__ = [
    "ALIGNMENT",
    "CHECKSUM_BLOCK_BYTES",
    "DEFAULT_CHUNK_BYTES",
    "DEFAULT_PARTITION_BYTES",
    "FORMAT_VERSION",
    "INDEX_FILE",
    "CheckpointIndex",
    "CheckpointSource",
    "LoadStats",
    "LocalDirSource",
    "PartitionEntry",
    "ReadTask",
    "Region",
    "RegionPool",
    "SharedMemorySource",
    "SharedRegion",
    "TensorEntry",
    "assign_tensors",
    "build_model",
    "build_skeleton",
    "checkpoint_nbytes",
    "convert",
    "default_pool",
    "load_model",
    "load_model_to_device",
    "load_to_device",
    "loads_index",
    "parse_index",
    "plan_reads",
    "prefault",
    "read_index",
    "read_into",
    "tensors_from_buffer",
    "tensors_from_region",
]
