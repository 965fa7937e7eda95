"""The converter: a Hugging Face model directory or an in-memory model -> the loading format.

Sources: ``*.safetensors`` (one file or sharded with ``model.safetensors.index.json``),
``pytorch_model.bin`` (one or sharded), or an ``nn.Module`` (its ``state_dict``; tensors
that share storage, like tied embeddings, are stored once and recorded as aliases).
The result is written to a temporary directory beside ``dst`` and renamed into place,
so ``dst`` is either absent or a complete checkpoint.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import torch
import xxhash

from faas_llm.checkpoint.format import (
    ALIGNMENT,
    CHECKSUM_BLOCK_BYTES,
    INDEX_FILE,
    CheckpointIndex,
    PartitionEntry,
    TensorEntry,
    align_up,
)
from faas_llm.checkpoint.tensors import dtype_name
from faas_llm.errors import CheckpointError

Progress = Callable[[int, int], None]
DEFAULT_PARTITION_BYTES = 1024 * 1024 * 1024

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf", ".onnx")
WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
SAFETENSORS_DTYPES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2", "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8",
    "BOOL": "bool", "C64": "complex64",
}


@dataclass(frozen=True, slots=True)
class SourceTensor:
    """A tensor to write: its metadata now, its bytes on demand (``load``)."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    nbytes: int
    load: Callable[[], torch.Tensor]


# --- reading sources ------------------------------------------------------------------

def _weight_files(src: Path) -> list[Path]:
    for index_name in WEIGHT_INDEXES:
        index_path = src / index_name
        if index_path.is_file():
            try:
                weight_map = json.loads(index_path.read_text(encoding="utf-8"))["weight_map"]
            except (ValueError, KeyError, TypeError) as exc:
                raise CheckpointError(f"{index_path}: invalid shard index: {exc}") from None
            names = list(dict.fromkeys(weight_map.values()))
            files = [src / n for n in names]
            for f in files:
                if f.parent.resolve() != src.resolve():
                    raise CheckpointError(f"{index_path}: shard {f.name!r} is outside the model directory")
                if not f.is_file():
                    raise CheckpointError(f"{index_path}: shard {f.name} is missing")
            return files
    safetensors = sorted(src.glob("*.safetensors"))
    if safetensors:
        return safetensors
    bins = sorted(p for p in src.glob("*.bin") if p.name.startswith("pytorch_model"))
    if bins:
        return bins
    raise CheckpointError(f"{src}: no model weights found (*.safetensors or pytorch_model*.bin)")


def _safetensors_tensors(path: Path) -> Iterator[SourceTensor]:
    from safetensors import safe_open

    try:
        handle = safe_open(str(path), framework="pt")
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot read safetensors file: {exc}") from None
    for name in handle.keys():  # noqa: SIM118 - safe_open is not a mapping
        sl = handle.get_slice(name)
        dtype = SAFETENSORS_DTYPES.get(sl.get_dtype())
        if dtype is None:
            raise CheckpointError(f"{path}: tensor {name!r} has unsupported dtype {sl.get_dtype()}")
        shape = tuple(int(d) for d in sl.get_shape())
        nbytes = _nbytes(shape, dtype)
        yield SourceTensor(name, shape, dtype, nbytes, functools.partial(handle.get_tensor, name))


def _bin_tensors(path: Path) -> Iterator[SourceTensor]:
    try:
        state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot read PyTorch weights: {exc}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a state dict")
    yield from _state_dict_tensors(state, str(path))


def _nbytes(shape: tuple[int, ...], dtype: str) -> int:
    n = 1
    for d in shape:
        n *= d
    return n * torch.empty((), dtype=getattr(torch, dtype)).element_size()


def _state_dict_tensors(state: dict[str, Any], where: str) -> Iterator[SourceTensor]:
    for name, tensor in state.items():
        if not isinstance(tensor, torch.Tensor):
            raise CheckpointError(f"{where}: entry {name!r} is not a tensor")
        if tensor.device.type == "meta":
            raise CheckpointError(f"{where}: tensor {name!r} is on the meta device (no data)")
        yield SourceTensor(name, tuple(tensor.shape), dtype_name(tensor.dtype), tensor.nbytes,
                           functools.partial(_identity, tensor))


def _identity(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


def _storage_key(tensor: torch.Tensor) -> tuple[Any, ...]:
    return (tensor.device.type, tensor.untyped_storage().data_ptr(), tensor.storage_offset(),
            tuple(tensor.shape), tuple(tensor.stride()), tensor.dtype)


def _split_aliases(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors that are the very same view of the same storage are stored once."""
    unique: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple[Any, ...], str] = {}
    for name, tensor in state.items():
        key = _storage_key(tensor)
        if tensor.numel() and key in seen:
            aliases[name] = seen[key]
        else:
            seen.setdefault(key, name)
            unique[name] = tensor
    return unique, aliases


# --- writing ----------------------------------------------------------------------------

class _PartitionWriter:
    """Writes one partition file, hashing it block by block as it goes."""

    def __init__(self, path: Path, block: int) -> None:
        self.path = path
        self.block = block
        self.file: BinaryIO = open(path, "wb", buffering=0)  # noqa: SIM115 - closed in finish()
        self.position = 0
        self.checksums: list[str] = []
        self._hasher = xxhash.xxh3_64()
        self._zeros = bytes(ALIGNMENT)

    def write(self, data: memoryview) -> None:
        while len(data):
            take = min(len(data), self.block - self.position % self.block)
            piece = data[:take]
            self._hasher.update(piece)
            written = 0
            while written < take:
                written += self.file.write(piece[written:]) or 0
            self.position += take
            if self.position % self.block == 0:
                self.checksums.append(self._hasher.hexdigest())
                self._hasher.reset()
            data = data[take:]

    def pad_to(self, offset: int) -> None:
        while self.position < offset:
            self.write(memoryview(self._zeros)[: min(ALIGNMENT, offset - self.position)])

    def finish(self) -> int:
        self.pad_to(align_up(self.position))
        if self.position % self.block:
            self.checksums.append(self._hasher.hexdigest())
        os.fsync(self.file.fileno())
        self.file.close()
        return self.position


def _tensor_bytes(tensor: torch.Tensor) -> memoryview:
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    if flat.numel() == 0:
        return memoryview(b"")
    return memoryview(flat.view(torch.uint8).numpy()).cast("B")  # type: ignore[arg-type]


def _write(tensors: list[SourceTensor], aliases: dict[str, str], out: Path, *, partition_bytes: int,
           block: int, progress: Progress | None) -> tuple[tuple[PartitionEntry, ...], dict[str, TensorEntry]]:
    total = sum(t.nbytes for t in tensors)
    done = 0
    partitions: list[PartitionEntry] = []
    entries: dict[str, TensorEntry] = {}
    writer: _PartitionWriter | None = None
    region_offset = 0

    def close_partition() -> None:
        nonlocal writer, region_offset
        if writer is None:
            return
        nbytes = writer.finish()
        partitions.append(PartitionEntry(writer.path.name, nbytes, region_offset, tuple(writer.checksums)))
        region_offset += nbytes
        writer = None

    for item in tensors:
        if item.name in entries or item.name in aliases:
            raise CheckpointError(f"tensor {item.name!r} appears twice in the source")
        if writer is not None and writer.position > 0 and align_up(writer.position) + item.nbytes > partition_bytes:
            close_partition()
        if writer is None:
            writer = _PartitionWriter(out / f"partition-{len(partitions):05d}.bin", block)
        offset = align_up(writer.position)
        writer.pad_to(offset)
        tensor = item.load()
        if tuple(tensor.shape) != item.shape or dtype_name(tensor.dtype) != item.dtype:
            raise CheckpointError(f"tensor {item.name!r}: data does not match its declared shape/dtype")
        writer.write(_tensor_bytes(tensor))
        del tensor
        entries[item.name] = TensorEntry(item.name, len(partitions), offset, item.nbytes, item.shape, item.dtype)
        done += item.nbytes
        if progress is not None:
            progress(done, total)
    close_partition()
    if not entries:
        raise CheckpointError("the source has no tensors")
    return tuple(partitions), entries


def _copy_side_files(src: Path, out: Path) -> list[str]:
    copied = []
    for path in sorted(src.iterdir()):
        name = path.name
        if not path.is_file() or name.startswith(".") or name == INDEX_FILE or name in WEIGHT_INDEXES:
            continue
        if name.endswith(WEIGHT_SUFFIXES) or name.startswith("partition-"):
            continue
        shutil.copy2(path, out / name)
        copied.append(name)
    return copied


# --- entry point ------------------------------------------------------------------------

def convert(
    src: str | Path | torch.nn.Module,
    dst: str | Path,
    progress: Progress | None = None,
    *,
    files_from: str | Path | None = None,
    partition_bytes: int = DEFAULT_PARTITION_BYTES,
    checksum_block: int = CHECKSUM_BLOCK_BYTES,
    overwrite: bool = False,
) -> CheckpointIndex:
    """Convert ``src`` (a Hugging Face model directory or an ``nn.Module``) into a checkpoint at ``dst``.

    ``progress(done_bytes, total_bytes)`` is called after each tensor. ``files_from`` adds the
    config/tokenizer files of a directory (for an in-memory model). Raises CheckpointError on a
    bad source or when ``dst`` exists (unless ``overwrite``); ``dst`` never holds a partial result.
    """
    dst = Path(dst)
    if dst.exists() and not overwrite:
        raise CheckpointError(f"{dst}: already exists (pass overwrite=True to replace it)")
    if checksum_block % ALIGNMENT or checksum_block <= 0:
        raise ValueError(f"checksum_block must be a positive multiple of {ALIGNMENT}")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.parent / f".{dst.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        tensors, aliases, files, metadata = _gather(src, tmp, files_from)
        partitions, entries = _write(tensors, aliases, tmp, partition_bytes=partition_bytes, block=checksum_block,
                                     progress=progress)
        index = CheckpointIndex(partitions, entries, aliases, tuple(sorted(files)), ALIGNMENT, checksum_block,
                                metadata)
        _write_text(tmp / INDEX_FILE, index.dumps())
        _fsync_dir(tmp)
        _install(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return index


def _gather(src: str | Path | torch.nn.Module, tmp: Path, files_from: str | Path | None
            ) -> tuple[list[SourceTensor], dict[str, str], list[str], dict[str, Any]]:
    files: list[str] = []
    if isinstance(src, torch.nn.Module):
        unique, aliases = _split_aliases(src.state_dict())
        tensors = list(_state_dict_tensors(unique, type(src).__name__))
        if files_from is not None:
            files += _copy_side_files(Path(files_from), tmp)
        for attr in ("config", "generation_config"):
            obj = getattr(src, attr, None)
            if obj is not None and hasattr(obj, "save_pretrained"):
                obj.save_pretrained(tmp)
        files = sorted({*files, *(p.name for p in tmp.iterdir() if p.is_file())})
        return tensors, aliases, files, {"source": f"nn.Module {type(src).__name__}"}
    src_dir = Path(src)
    if not src_dir.is_dir():
        raise CheckpointError(f"{src_dir}: not a model directory")
    tensors = []
    for path in _weight_files(src_dir):
        tensors.extend(_safetensors_tensors(path) if path.suffix == ".safetensors" else _bin_tensors(path))
    files = _copy_side_files(src_dir, tmp)
    if files_from is not None:
        files = sorted({*files, *_copy_side_files(Path(files_from), tmp)})
    return tensors, {}, files, {"source": str(src_dir.resolve())}


def _write_text(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _install(tmp: Path, dst: Path) -> None:
    old = None
    if dst.exists():
        old = dst.parent / f".{dst.name}.old-{uuid.uuid4().hex[:8]}"
        os.rename(dst, old)
    os.rename(tmp, dst)
    _fsync_dir(dst.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
