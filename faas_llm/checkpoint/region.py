"""Destination memory: one contiguous, page-aligned, pre-faulted region per checkpoint.

On this kind of VM the first touch of fresh memory (page faults, zeroing) costs more than
reading the bytes from disk, so a loader's destination is allocated once, pre-faulted
(one write per page; transparent huge pages where the kernel
allows), and reused across loads:

- :class:`Region`: private anonymous memory (``mmap``), the default destination;
- :class:`SharedRegion`: a named POSIX shared-memory segment (a file in ``/dev/shm``)
  that another process attaches without copying — the cache agent's DRAM pool is one;
- :class:`RegionPool`: hands out pre-faulted regions and takes them back for reuse.

A region must not be reused while tensors still view it; :func:`~faas_llm.checkpoint.load_model`
gives a pooled region back only when its model is garbage-collected.
"""

from __future__ import annotations

import mmap
import os
import re
import threading
from pathlib import Path
from types import TracebackType

import numpy as np

from faas_llm.checkpoint.format import ALIGNMENT, align_up
from faas_llm.errors import CheckpointError

SHM_DIR = Path("/dev/shm")
_SHM_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,200}$")


def buffer_address(buffer: memoryview) -> int:
    """The address of a buffer's first byte (to check O_DIRECT alignment)."""
    if buffer.nbytes == 0:
        return 0
    array = np.frombuffer(buffer, dtype=np.uint8, count=1)
    return int(array.ctypes.data)


def prefault(mapping: mmap.mmap, nbytes: int, *, huge_pages: bool = True) -> None:
    """Make every page of ``mapping`` resident and writable now, not on first touch."""
    if nbytes == 0:
        return
    if huge_pages and hasattr(mmap, "MADV_HUGEPAGE"):
        try:
            mapping.madvise(mmap.MADV_HUGEPAGE)
        except OSError:
            pass
    # One write per page. (MADV_POPULATE_WRITE does the same in the kernel but measured slower
    # on this VM's first-touch faults, so the portable way is also the default.)
    pages = np.frombuffer(mapping, dtype=np.uint8, count=nbytes)
    pages[:: mmap.PAGESIZE] = 0  # one write per page faults it in
    del pages


class Region:
    """A page-aligned region of private memory, optionally pre-faulted.

    ``buffer`` is a writable memoryview of the whole region; ``view(offset, n)`` a slice.
    """

    def __init__(self, mapping: mmap.mmap, nbytes: int, name: str = "") -> None:
        self._mmap: mmap.mmap | None = mapping
        self.nbytes = nbytes
        self.name = name
        self.buffer = memoryview(mapping)[:nbytes]

    @classmethod
    def allocate(cls, nbytes: int, *, huge_pages: bool = True, prefault_pages: bool = True) -> Region:
        """Allocate ``nbytes`` (rounded up to the alignment) of anonymous memory."""
        if nbytes < 0:
            raise ValueError("nbytes must be >= 0")
        size = max(align_up(nbytes), ALIGNMENT)
        mapping = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS,
                            prot=mmap.PROT_READ | mmap.PROT_WRITE)
        if prefault_pages:
            prefault(mapping, size, huge_pages=huge_pages)
        return cls(mapping, size)

    @property
    def address(self) -> int:
        return buffer_address(self.buffer)

    def view(self, offset: int = 0, nbytes: int | None = None) -> memoryview:
        """A slice of the region (``nbytes`` from ``offset``; default: to the end)."""
        end = self.nbytes if nbytes is None else offset + nbytes
        if offset < 0 or end > self.nbytes or end < offset:
            raise ValueError(f"slice [{offset}, {end}) outside the region of {self.nbytes} bytes")
        return self.buffer[offset:end]

    def close(self) -> None:
        """Unmap (fails with BufferError while tensors or views still use the memory)."""
        if self._mmap is not None:
            self.buffer.release()
            self._mmap.close()
            self._mmap = None

    def __enter__(self) -> Region:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class SharedRegion(Region):
    """A named shared-memory segment (``/dev/shm/<name>``), mapped ``MAP_SHARED``.

    The creator (the cache agent) makes it writable and pre-faulted; another process
    attaches it (read-only by default) and views tensors in it without copying. Both
    map the same physical pages. The segment lives until :meth:`unlink` (or reboot).
    """

    def __init__(self, mapping: mmap.mmap, nbytes: int, name: str, path: Path, writable: bool) -> None:
        super().__init__(mapping, nbytes, name)
        self.path = path
        self.writable = writable

    @staticmethod
    def path_for(name: str, shm_dir: Path = SHM_DIR) -> Path:
        if not _SHM_NAME.match(name) or name.startswith("."):
            raise CheckpointError(f"invalid shared-memory segment name {name!r} (letters, digits, _ . -)")
        return shm_dir / name

    @classmethod
    def create(cls, name: str, nbytes: int, *, shm_dir: Path = SHM_DIR, prefault_pages: bool = True,
               exist_ok: bool = False) -> SharedRegion:
        """Create (or with ``exist_ok`` re-open and resize) segment ``name`` of ``nbytes``, writable."""
        path = cls.path_for(name, shm_dir)
        size = max(align_up(nbytes), ALIGNMENT)
        flags = os.O_RDWR | os.O_CREAT | (0 if exist_ok else os.O_EXCL)
        try:
            fd = os.open(path, flags, 0o600)
        except FileExistsError:
            raise CheckpointError(f"shared-memory segment {name!r} already exists ({path})") from None
        try:
            os.ftruncate(fd, size)
            mapping = mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError as exc:
            os.close(fd)
            raise CheckpointError(f"cannot create shared-memory segment {path}: {exc.strerror or exc}") from None
        os.close(fd)
        if prefault_pages:
            prefault(mapping, size, huge_pages=True)
        return cls(mapping, size, name, path, True)

    @classmethod
    def attach(cls, name: str, *, writable: bool = False, shm_dir: Path = SHM_DIR,
               populate: bool = False) -> SharedRegion:
        """Map an existing segment; the pages are shared, never copied. ``populate`` builds every
        page-table entry now (MAP_POPULATE): measured 0.7 s for 2.6 GB of 4 KiB shmem pages on the
        dev VM against 0.06 s lazily, with no faster first forward pass, so it is off by default."""
        path = cls.path_for(name, shm_dir)
        try:
            fd = os.open(path, os.O_RDWR if writable else os.O_RDONLY)
        except FileNotFoundError:
            raise CheckpointError(f"shared-memory segment {name!r} does not exist ({path})") from None
        try:
            size = os.fstat(fd).st_size
            if size == 0:
                raise CheckpointError(f"shared-memory segment {path} is empty")
            prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
            flags = mmap.MAP_SHARED | (getattr(mmap, "MAP_POPULATE", 0) if populate else 0)
            mapping = mmap.mmap(fd, size, flags=flags, prot=prot)
        except OSError as exc:
            raise CheckpointError(f"cannot map shared-memory segment {path}: {exc.strerror or exc}") from None
        finally:
            os.close(fd)
        return cls(mapping, size, name, path, writable)

    def unlink(self) -> None:
        """Remove the segment's name (mappings stay valid until closed)."""
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass


class RegionPool:
    """Pre-faulted private regions, reused across loads.

    ``take(n)`` returns a free region of at least ``n`` bytes (the smallest that fits),
    allocating and pre-faulting a new one when none does; ``give_back`` returns it for
    the next load. Thread-safe.
    """

    def __init__(self, *, huge_pages: bool = True) -> None:
        self.huge_pages = huge_pages
        self._free: list[Region] = []
        self._lock = threading.Lock()

    def take(self, nbytes: int) -> Region:
        with self._lock:
            fitting = [r for r in self._free if r.nbytes >= nbytes]
            if fitting:
                region = min(fitting, key=lambda r: r.nbytes)
                self._free.remove(region)
                return region
        return Region.allocate(nbytes, huge_pages=self.huge_pages)

    def reserve(self, nbytes: int) -> None:
        """Allocate and pre-fault a region now (e.g. in a prewarmed runtime) for a later take()."""
        self.give_back(Region.allocate(nbytes, huge_pages=self.huge_pages))

    def give_back(self, region: Region) -> None:
        with self._lock:
            self._free.append(region)

    @property
    def free_bytes(self) -> int:
        with self._lock:
            return sum(r.nbytes for r in self._free)

    def clear(self) -> None:
        with self._lock:
            regions, self._free = self._free, []
        for region in regions:
            region.close()


_default_pool: RegionPool | None = None
_default_pool_lock = threading.Lock()


def default_pool() -> RegionPool:
    """The process-wide pool :func:`~faas_llm.checkpoint.load_model` uses when given no region."""
    global _default_pool
    with _default_pool_lock:
        if _default_pool is None:
            _default_pool = RegionPool()
        return _default_pool
