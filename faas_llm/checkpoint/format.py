"""The on-disk format: the index (``index.json``), its validation, and the region layout.

A checkpoint is a directory::

    index.json               this module's CheckpointIndex, as JSON
    partition-00000.bin      tensor bytes, each tensor at a 4 KiB-aligned offset,
    partition-00001.bin      the file zero-padded to a multiple of 4 KiB
    config.json, tokenizer.json, generation_config.json, ...   copied from the source

Loading lays the partitions out back to back in ONE region (partition ``p`` at
``partitions[p].region_offset``, every offset 4 KiB-aligned), so a checkpoint can be
placed anywhere in a larger pool at an aligned offset. See ``docs/checkpoint-format.md``.

Everything read from ``index.json`` is validated here; a problem raises
:class:`~faas_llm.errors.CheckpointError` naming the file and the problem.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from faas_llm.errors import CheckpointError

FORMAT_NAME = "faas-llm-checkpoint"
FORMAT_VERSION = 1
INDEX_FILE = "index.json"
ALIGNMENT = 4096
CHECKSUM_ALGORITHM = "xxh3_64"
CHECKSUM_BLOCK_BYTES = 8 * 1024 * 1024

# dtype name in the index -> bytes per element. The names are torch's (``str(dtype)`` minus "torch.").
DTYPE_SIZES: dict[str, int] = {
    "float64": 8, "float32": 4, "float16": 2, "bfloat16": 2,
    "float8_e4m3fn": 1, "float8_e5m2": 1,
    "int64": 8, "int32": 4, "int16": 2, "int8": 1, "uint8": 1, "bool": 1,
    "complex64": 8, "complex128": 16,
}


def align_up(value: int, alignment: int = ALIGNMENT) -> int:
    return (value + alignment - 1) // alignment * alignment


@dataclass(frozen=True, slots=True)
class TensorEntry:
    """Where one tensor's bytes live: ``nbytes`` at ``offset`` of partition ``partition``."""

    name: str
    partition: int
    offset: int
    nbytes: int
    shape: tuple[int, ...]
    dtype: str

    def to_json(self) -> dict[str, Any]:
        return {"partition": self.partition, "offset": self.offset, "nbytes": self.nbytes,
                "shape": list(self.shape), "dtype": self.dtype}


@dataclass(frozen=True, slots=True)
class PartitionEntry:
    """One partition file: ``nbytes`` (a multiple of the alignment), where it sits in the region,
    and one checksum per ``checksum_block`` bytes (the last block may be shorter)."""

    file: str
    nbytes: int
    region_offset: int
    checksums: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"file": self.file, "nbytes": self.nbytes, "region_offset": self.region_offset,
                "checksums": list(self.checksums)}


@dataclass(frozen=True, slots=True)
class CheckpointIndex:
    """The parsed, validated ``index.json`` of a checkpoint.

    ``aliases`` maps a tensor name to the name of the tensor it shares storage with
    (tied weights); an alias has no bytes of its own. ``files`` are the non-tensor files
    (config, tokenizer) copied alongside.
    """

    partitions: tuple[PartitionEntry, ...]
    tensors: dict[str, TensorEntry]
    aliases: dict[str, str] = field(default_factory=dict)
    files: tuple[str, ...] = ()
    alignment: int = ALIGNMENT
    checksum_block: int = CHECKSUM_BLOCK_BYTES
    metadata: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    @property
    def total_bytes(self) -> int:
        """Size of the region that holds the whole checkpoint (all partitions, padded)."""
        return sum(p.nbytes for p in self.partitions)

    @property
    def tensor_bytes(self) -> int:
        """Bytes of tensor data (no padding, aliases counted once)."""
        return sum(t.nbytes for t in self.tensors.values())

    def region_offset(self, name: str) -> int:
        """Offset of tensor ``name`` (or an alias) in the checkpoint's region."""
        entry = self.tensors[self.aliases.get(name, name)]
        return self.partitions[entry.partition].region_offset + entry.offset

    def names(self) -> list[str]:
        """Every tensor name, aliases included, in file order then alias order."""
        return [*self.tensors, *self.aliases]

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT_NAME,
            "format_version": self.format_version,
            "alignment": self.alignment,
            "checksum": {"algorithm": CHECKSUM_ALGORITHM, "block_bytes": self.checksum_block},
            "total_bytes": self.total_bytes,
            "tensor_bytes": self.tensor_bytes,
            "partitions": [p.to_json() for p in self.partitions],
            "tensors": {name: t.to_json() for name, t in self.tensors.items()},
            "aliases": dict(self.aliases),
            "files": list(self.files),
            "metadata": self.metadata,
        }

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=1) + "\n"


def checkpoint_nbytes(index: CheckpointIndex) -> int:
    """Bytes a destination region needs for this checkpoint (a multiple of the alignment)."""
    return index.total_bytes


def checksum_count(nbytes: int, block: int) -> int:
    return max(1, math.ceil(nbytes / block)) if nbytes else 0


def safe_name(name: Any, where: str, what: str) -> str:
    """A file name inside the checkpoint directory: relative, no ``..``, no separators outside it."""
    if not isinstance(name, str) or not name:
        raise CheckpointError(f"{where}: {what} must be a non-empty file name, got {name!r}")
    path = PurePosixPath(name)
    if path.is_absolute() or "\\" in name or any(part in ("..", "") for part in path.parts) or name.startswith("~"):
        raise CheckpointError(f"{where}: {what} {name!r} points outside the checkpoint directory")
    return name


def _int(value: Any, where: str, what: str, *, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise CheckpointError(f"{where}: {what} must be an integer >= {minimum}, got {value!r}")
    return value


def parse_index(data: Any, where: str = INDEX_FILE) -> CheckpointIndex:
    """Validate parsed ``index.json`` data and build the index (raises CheckpointError)."""
    if not isinstance(data, dict):
        raise CheckpointError(f"{where}: not a JSON object")
    if data.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{where}: not a faas-llm checkpoint index (format={data.get('format')!r})")
    version = _int(data.get("format_version"), where, "format_version", minimum=1)
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{where}: format version {version} is from the future; this loader reads up to {FORMAT_VERSION}"
        )
    alignment = _int(data.get("alignment"), where, "alignment", minimum=1)
    if alignment % ALIGNMENT:
        raise CheckpointError(f"{where}: alignment {alignment} is not a multiple of {ALIGNMENT}")
    checksum = data.get("checksum")
    if not isinstance(checksum, dict) or checksum.get("algorithm") != CHECKSUM_ALGORITHM:
        raise CheckpointError(f"{where}: unknown checksum {checksum!r} (expected {CHECKSUM_ALGORITHM})")
    block = _int(checksum.get("block_bytes"), where, "checksum.block_bytes", minimum=ALIGNMENT)
    if block % alignment:
        raise CheckpointError(f"{where}: checksum block {block} is not a multiple of the alignment")

    raw_parts = data.get("partitions")
    if not isinstance(raw_parts, list) or not raw_parts:
        raise CheckpointError(f"{where}: 'partitions' must be a non-empty list")
    partitions: list[PartitionEntry] = []
    region_offset = 0
    seen_files: set[str] = set()
    for i, raw in enumerate(raw_parts):
        if not isinstance(raw, dict):
            raise CheckpointError(f"{where}: partition {i} is not an object")
        file = safe_name(raw.get("file"), where, f"partition {i} file")
        if "/" in file or file in seen_files or file == INDEX_FILE:
            raise CheckpointError(f"{where}: partition {i} file {file!r} is not a plain, unique file name")
        seen_files.add(file)
        nbytes = _int(raw.get("nbytes"), where, f"partition {file} nbytes")
        if nbytes % alignment:
            raise CheckpointError(f"{where}: partition {file} size {nbytes} is not a multiple of {alignment}")
        if raw.get("region_offset") != region_offset:
            raise CheckpointError(
                f"{where}: partition {file} region_offset {raw.get('region_offset')!r}, expected {region_offset}"
            )
        sums = raw.get("checksums")
        if not isinstance(sums, list) or len(sums) != checksum_count(nbytes, block) or not all(
            isinstance(s, str) and len(s) == 16 for s in sums
        ):
            raise CheckpointError(f"{where}: partition {file} needs {checksum_count(nbytes, block)} hex checksums")
        partitions.append(PartitionEntry(file, nbytes, region_offset, tuple(sums)))
        region_offset += nbytes

    raw_tensors = data.get("tensors")
    if not isinstance(raw_tensors, dict) or not raw_tensors:
        raise CheckpointError(f"{where}: 'tensors' must be a non-empty object")
    tensors: dict[str, TensorEntry] = {}
    for name, raw in raw_tensors.items():
        tensors[name] = _parse_tensor(name, raw, partitions, alignment, where)

    raw_aliases = data.get("aliases", {})
    if not isinstance(raw_aliases, dict):
        raise CheckpointError(f"{where}: 'aliases' must be an object")
    aliases: dict[str, str] = {}
    for name, target in raw_aliases.items():
        if name in tensors or target not in tensors:
            raise CheckpointError(f"{where}: alias {name!r} -> {target!r} must name a stored tensor")
        aliases[name] = target

    raw_files = data.get("files", [])
    if not isinstance(raw_files, list):
        raise CheckpointError(f"{where}: 'files' must be a list")
    files = tuple(safe_name(f, where, "file") for f in raw_files)
    metadata = data.get("metadata", {})
    if not isinstance(metadata, dict):
        raise CheckpointError(f"{where}: 'metadata' must be an object")
    return CheckpointIndex(tuple(partitions), tensors, aliases, files, alignment, block, metadata, version)


def _parse_tensor(name: str, raw: Any, partitions: list[PartitionEntry], alignment: int, where: str) -> TensorEntry:
    if not isinstance(raw, dict):
        raise CheckpointError(f"{where}: tensor {name!r} is not an object")
    dtype = raw.get("dtype")
    if dtype not in DTYPE_SIZES:
        raise CheckpointError(f"{where}: tensor {name!r} has unknown dtype {dtype!r}")
    part = _int(raw.get("partition"), where, f"tensor {name!r} partition")
    if part >= len(partitions):
        raise CheckpointError(f"{where}: tensor {name!r} names partition {part}, there are {len(partitions)}")
    offset = _int(raw.get("offset"), where, f"tensor {name!r} offset")
    nbytes = _int(raw.get("nbytes"), where, f"tensor {name!r} nbytes")
    shape_raw = raw.get("shape")
    if not isinstance(shape_raw, list):
        raise CheckpointError(f"{where}: tensor {name!r} shape must be a list")
    shape = tuple(_int(d, where, f"tensor {name!r} dimension") for d in shape_raw)
    if offset % alignment:
        raise CheckpointError(f"{where}: tensor {name!r} offset {offset} is not {alignment}-aligned")
    expected = math.prod(shape) * DTYPE_SIZES[dtype]
    if nbytes != expected:
        raise CheckpointError(
            f"{where}: tensor {name!r} has {nbytes} bytes, shape {list(shape)} {dtype} needs {expected}"
        )
    file = partitions[part]
    if offset + nbytes > file.nbytes:
        raise CheckpointError(
            f"{where}: tensor {name!r} at offset {offset} + {nbytes} bytes is past the end of "
            f"{file.file} ({file.nbytes} bytes)"
        )
    return TensorEntry(name, part, offset, nbytes, shape, dtype)


def read_index(ckpt_dir: str | Path) -> CheckpointIndex:
    """Read and validate ``<ckpt_dir>/index.json``."""
    path = Path(ckpt_dir) / INDEX_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no checkpoint index here (missing {INDEX_FILE})") from None
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read: {exc.strerror or exc}") from None
    return loads_index(text, str(path))


def loads_index(text: str, where: str = INDEX_FILE) -> CheckpointIndex:
    """Parse and validate index JSON text (e.g. received from a cache agent)."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise CheckpointError(f"{where}: invalid JSON: {exc}") from None
    return parse_index(data, where)
