"""Zero-copy tensor views into a loaded region."""

from __future__ import annotations

import warnings
from typing import Any

import torch

from faas_llm.checkpoint.format import CheckpointIndex
from faas_llm.errors import CheckpointError


def torch_dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise CheckpointError(f"dtype {name!r} is not known to this torch")
    return dtype


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def region_tensor(buffer: Any, nbytes: int) -> torch.Tensor:
    """A flat uint8 tensor over the first ``nbytes`` of ``buffer``, sharing its memory.

    A read-only buffer (a shared segment attached read-only) gives a tensor torch cannot
    write to; torch warns about that, and we know, so the warning is silenced here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given buffer is not writable")
        return torch.frombuffer(buffer, dtype=torch.uint8, count=nbytes)


def tensors_from_region(index: CheckpointIndex, region: torch.Tensor) -> dict[str, torch.Tensor]:
    """Typed, shaped views of every tensor (aliases included) into a flat uint8 ``region`` tensor
    (CPU or GPU) laid out per the index. Aliases are the same tensor object as their target."""
    if region.dtype != torch.uint8 or region.dim() != 1:
        raise CheckpointError("the region must be a flat uint8 tensor")
    if region.numel() < index.total_bytes:
        raise CheckpointError(f"region has {region.numel()} bytes, the checkpoint needs {index.total_bytes}")
    out: dict[str, torch.Tensor] = {}
    for name, entry in index.tensors.items():
        start = index.partitions[entry.partition].region_offset + entry.offset
        raw = region[start:start + entry.nbytes]
        out[name] = raw.view(torch_dtype(entry.dtype)).view(entry.shape)
    for alias, target in index.aliases.items():
        out[alias] = out[target]
    return out


def tensors_from_buffer(index: CheckpointIndex, buffer: Any) -> dict[str, torch.Tensor]:
    """Zero-copy CPU tensors for every name of ``index`` over ``buffer`` (a memoryview, mmap,
    bytearray or a slice of a shared-memory segment holding the checkpoint's region).
    The tensors keep ``buffer`` alive; tied weights share one tensor."""
    view = memoryview(buffer)
    if view.nbytes < index.total_bytes:
        raise CheckpointError(f"buffer has {view.nbytes} bytes, the checkpoint needs {index.total_bytes}")
    return tensors_from_region(index, region_tensor(view, index.total_bytes))
