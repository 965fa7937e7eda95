"""Where a checkpoint's bytes come from: one interface, so every tier shares one loader.

A :class:`CheckpointSource` knows its index and can copy any byte range of a partition
into a destination buffer. The loader (:mod:`faas_llm.checkpoint.reader`) plans large
sequential reads and calls :meth:`CheckpointSource.read` from its reader threads.

- :class:`LocalDirSource`: a checkpoint directory on a local file system (the SSD tier),
  read with ``O_DIRECT`` where the file system and the destination's alignment allow it,
  buffered otherwise (tmpfs refuses ``O_DIRECT``; an unaligned buffer cannot use it).
  Bytes that are already in the page cache (a warm file) are copied from there instead
  (``mincore`` says which pages are resident without reading any; the rest goes through
  ``O_DIRECT``).
- :class:`SharedMemorySource`: a checkpoint already laid out in a memory region (the DRAM
  tier's shared-memory pool): reads are memory copies. To use the bytes *in place*, call
  :func:`~faas_llm.checkpoint.tensors_from_buffer` on the region instead.

A remote source (the model registry) implements the same three methods.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import threading
from abc import ABC, abstractmethod
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from faas_llm.checkpoint.format import ALIGNMENT, CheckpointIndex, PartitionEntry, read_index
from faas_llm.checkpoint.region import buffer_address
from faas_llm.errors import CheckpointError

O_DIRECT = getattr(os, "O_DIRECT", 0)


def _load_mincore() -> Any:
    try:
        fn = ctypes.CDLL(None, use_errno=True).mincore
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    fn.restype = ctypes.c_int
    return fn


_mincore = _load_mincore()


class CheckpointSource(ABC):
    """A readable checkpoint. Use as a context manager around reads (``open`` / ``close``)."""

    #: Human-readable location, used in error messages.
    description: str = "checkpoint"

    @property
    @abstractmethod
    def index(self) -> CheckpointIndex:
        """The checkpoint's validated index."""

    @property
    def config_dir(self) -> Path | None:
        """A directory with ``config.json`` (and tokenizer files), if the source has one."""
        return None

    def open(self) -> None:  # noqa: B027 - optional hook
        """Prepare for reads (open files, check sizes). Raises CheckpointError."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release what :meth:`open` took."""

    @abstractmethod
    def read(self, partition: PartitionEntry, offset: int, dest: memoryview) -> None:
        """Fill ``dest`` with bytes ``[offset, offset + len(dest))`` of ``partition`` or raise CheckpointError."""

    @property
    def direct_io_used(self) -> bool:
        return False

    def __enter__(self) -> CheckpointSource:
        self.open()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class LocalDirSource(CheckpointSource):
    """A checkpoint directory on a local file system."""

    def __init__(self, ckpt_dir: str | Path, index: CheckpointIndex | None = None, *, direct_io: bool = True,
                 use_page_cache: bool = True) -> None:
        self.root = Path(ckpt_dir)
        self.use_page_cache = use_page_cache and _mincore is not None
        self._maps: dict[str, mmap.mmap] = {}
        self.description = str(self.root)
        self._index = index
        self.direct_io = direct_io and O_DIRECT != 0
        self._direct_fds: dict[str, int] = {}
        self._buffered_fds: dict[str, int] = {}
        self._direct_reads = 0
        self._lock = threading.Lock()

    @property
    def index(self) -> CheckpointIndex:
        if self._index is None:
            self._index = read_index(self.root)
        return self._index

    @property
    def config_dir(self) -> Path:
        return self.root

    @property
    def direct_io_used(self) -> bool:
        return self._direct_reads > 0

    def path_of(self, partition: PartitionEntry) -> Path:
        path = self.root / partition.file
        if path.resolve().parent != self.root.resolve():
            raise CheckpointError(f"{path}: partition file is outside the checkpoint directory {self.root}")
        return path

    def open(self) -> None:
        for partition in self.index.partitions:
            path = self.path_of(partition)
            fd = self._open_fd(path, direct=False)
            self._buffered_fds[partition.file] = fd
            size = os.fstat(fd).st_size
            if size < partition.nbytes:
                self.close()
                raise CheckpointError(
                    f"{path}: partition is truncated: {size} bytes, the index says {partition.nbytes}"
                )
            if size > partition.nbytes:
                self.close()
                raise CheckpointError(f"{path}: partition has {size} bytes, the index says {partition.nbytes}")
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
            except (OSError, AttributeError):
                pass
            if self.direct_io and self.use_page_cache and size:
                self._maps[partition.file] = mmap.mmap(fd, size, access=mmap.ACCESS_READ)
            if self.direct_io:
                try:
                    self._direct_fds[partition.file] = os.open(path, os.O_RDONLY | O_DIRECT)
                except OSError as exc:
                    if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
                        self.close()
                        raise CheckpointError(f"{path}: cannot open: {exc.strerror}") from None
                    # The file system refuses O_DIRECT (tmpfs, some overlays): buffered reads.

    def _open_fd(self, path: Path, *, direct: bool) -> int:
        try:
            return os.open(path, os.O_RDONLY | (O_DIRECT if direct else 0))
        except FileNotFoundError:
            self.close()
            raise CheckpointError(f"{path}: partition file is missing") from None
        except OSError as exc:
            self.close()
            raise CheckpointError(f"{path}: cannot open: {exc.strerror}") from None

    def close(self) -> None:
        for mapping in self._maps.values():
            mapping.close()
        self._maps.clear()
        for fds in (self._direct_fds, self._buffered_fds):
            for fd in fds.values():
                os.close(fd)
            fds.clear()

    def read(self, partition: PartitionEntry, offset: int, dest: memoryview) -> None:
        if not self._buffered_fds:
            raise CheckpointError(f"{self.description}: source read before open()")
        direct_fd = self._direct_fds.get(partition.file)
        if direct_fd is not None and self.use_page_cache:
            # Bytes already in the page cache are copied from there (memory speed); O_DIRECT
            # reads the rest from the disk.
            cached = self.resident_prefix(partition, offset, len(dest))
            if cached:
                try:
                    self._read_fully(self._buffered_fds[partition.file], partition, offset, dest[:cached])
                except OSError as exc:
                    raise CheckpointError(f"{self.root / partition.file}: read failed: {exc.strerror}") from None
                if cached == len(dest):
                    return
                offset, dest = offset + cached, dest[cached:]
        if direct_fd is not None and offset % ALIGNMENT == 0 and len(dest) % ALIGNMENT == 0 \
                and buffer_address(dest) % ALIGNMENT == 0:
            try:
                self._read_fully(direct_fd, partition, offset, dest)
                self._direct_reads += 1
                return
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise CheckpointError(f"{self.root / partition.file}: read failed: {exc.strerror}") from None
                # O_DIRECT refused for this request after all: drop it for this file.
                with self._lock:
                    fd = self._direct_fds.pop(partition.file, None)
                    if fd is not None:
                        os.close(fd)
        try:
            self._read_fully(self._buffered_fds[partition.file], partition, offset, dest)
        except OSError as exc:
            raise CheckpointError(f"{self.root / partition.file}: read failed: {exc.strerror}") from None

    def resident_prefix(self, partition: PartitionEntry, offset: int, nbytes: int) -> int:
        """How many bytes from ``offset`` are in the page cache (whole pages), asked with
        ``mincore`` on a mapping of the file: asking reads nothing (a read with RWF_NOWAIT
        would start readahead) and costs one byte per page."""
        mapping = self._maps.get(partition.file)
        if mapping is None or offset % mmap.PAGESIZE:
            return 0
        nbytes = min(nbytes, len(mapping) - offset)
        if nbytes <= 0:
            return 0
        pages = (nbytes + mmap.PAGESIZE - 1) // mmap.PAGESIZE
        vec = np.zeros(pages, dtype=np.uint8)
        address = np.frombuffer(mapping, dtype=np.uint8, count=1, offset=offset).ctypes.data
        if _mincore(ctypes.c_void_p(address), ctypes.c_size_t(nbytes), vec.ctypes.data_as(ctypes.c_void_p)) != 0:
            return 0
        missing = np.flatnonzero((vec & 1) == 0)
        resident_pages = int(missing[0]) if missing.size else pages
        return min(resident_pages * mmap.PAGESIZE, nbytes)

    def _read_fully(self, fd: int, partition: PartitionEntry, offset: int, dest: memoryview) -> None:
        done = 0
        total = len(dest)
        while done < total:
            n = os.preadv(fd, [dest[done:]], offset + done)
            if n == 0:
                raise CheckpointError(
                    f"{self.root / partition.file}: partition is truncated: read ended at byte {offset + done}, "
                    f"the index says {partition.nbytes}"
                )
            done += n


class SharedMemorySource(CheckpointSource):
    """A checkpoint laid out (per its index) in a memory buffer, e.g. a slice of the DRAM pool."""

    def __init__(self, buffer: memoryview, index: CheckpointIndex, *, config_dir: str | Path | None = None,
                 description: str = "shared memory") -> None:
        if len(buffer) < index.total_bytes:
            raise CheckpointError(f"{description}: region has {len(buffer)} bytes, the checkpoint needs "
                                  f"{index.total_bytes}")
        self._buffer = buffer
        self._index = index
        self._config_dir = Path(config_dir) if config_dir is not None else None
        self.description = description

    @property
    def index(self) -> CheckpointIndex:
        return self._index

    @property
    def config_dir(self) -> Path | None:
        return self._config_dir

    def read(self, partition: PartitionEntry, offset: int, dest: memoryview) -> None:
        start = partition.region_offset + offset
        if offset + len(dest) > partition.nbytes:
            raise CheckpointError(f"{self.description}: read past the end of {partition.file}")
        dest[:] = self._buffer[start:start + len(dest)]


def as_source(src: str | Path | CheckpointSource, index: CheckpointIndex | None = None, *,
              direct_io: bool = True, use_page_cache: bool = True) -> CheckpointSource:
    """A source for ``src``: a source as is, a path as a :class:`LocalDirSource`."""
    if isinstance(src, CheckpointSource):
        return src
    return LocalDirSource(src, index, direct_io=direct_io, use_page_cache=use_page_cache)
