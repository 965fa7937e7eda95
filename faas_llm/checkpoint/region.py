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

import ctypes
import errno
import mmap
import os
import re
import threading
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import numpy as np

from faas_llm.checkpoint.format import ALIGNMENT, CheckpointIndex, align_up
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


MADV_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22)  # Linux 5.14+
POPULATE_CHUNK_BYTES = 64 * 1024 * 1024

_libc = ctypes.CDLL(None, use_errno=True)  # a ctypes call releases the GIL: populating threads run in parallel
_libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
_libc.madvise.restype = ctypes.c_int


def populate_plan(total: int, extents: Sequence[tuple[int, int]] = (), *, chunk_bytes: int = POPULATE_CHUNK_BYTES,
                  page_bytes: int = mmap.PAGESIZE) -> list[tuple[int, int]]:
    """The chunks ``(start, nbytes)`` to populate ``total`` bytes of a mapping in, in the order given:
    first the ``extents`` ``(offset, nbytes)`` in their order (e.g. tensors in the order the forward
    reads them), then whatever of ``[0, total)`` they left out, ascending. Every byte once; chunk starts
    are page-aligned (extents are widened to whole pages, clipped to ``total``), chunks hold at most
    ``chunk_bytes`` (rounded up to a page) and neighbours in the order that are contiguous are merged."""
    if total < 0 or chunk_bytes <= 0 or page_bytes <= 0:
        raise ValueError("total must be >= 0, chunk_bytes and page_bytes > 0")
    chunk = -(-chunk_bytes // page_bytes) * page_bytes
    done: list[tuple[int, int]] = []  # covered [start, end), sorted, disjoint
    pieces: list[tuple[int, int]] = []  # [start, end) in populate order

    def add(start: int, end: int) -> None:
        import bisect

        i = bisect.bisect_right(done, (start, end))
        if i > 0 and done[i - 1][1] > start:
            i -= 1
        cursor, j = start, i
        while cursor < end:
            if j < len(done) and done[j][0] <= cursor:
                cursor = max(cursor, done[j][1])
                j += 1
                continue
            stop = min(end, done[j][0]) if j < len(done) else end
            pieces.append((cursor, stop))
            cursor = stop
        # merge [start, end) into done
        lo, hi = start, end
        k = i
        while k < len(done) and done[k][0] <= hi:
            lo, hi = min(lo, done[k][0]), max(hi, done[k][1])
            k += 1
        done[i:k] = [(lo, hi)]

    for offset, nbytes in extents:
        if nbytes <= 0 or offset >= total:
            continue
        start = max(0, offset) // page_bytes * page_bytes
        end = min(total, -(-(offset + nbytes) // page_bytes) * page_bytes)
        if end > start:
            add(start, end)
    if total > 0:
        add(0, total)
    out: list[tuple[int, int]] = []
    for start, end in pieces:
        if out and out[-1][0] + out[-1][1] == start and out[-1][1] < chunk:
            room = chunk - out[-1][1]
            take = min(room, end - start)
            out[-1] = (out[-1][0], out[-1][1] + take)
            start += take
        while start < end:
            take = min(chunk, end - start)
            out.append((start, take))
            start += take
    return out


_HEAD = re.compile(r"(^|\.)(lm_head|output|head)(\.|$)")


def _natural_key(name: str) -> tuple[int, list[tuple[int, int | str]]]:
    parts: list[tuple[int, int | str]] = [(0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"(\d+)", name) if p]
    return (1 if _HEAD.search(name) else 0), parts


def forward_order_extents(index: CheckpointIndex) -> list[tuple[int, int]]:
    """The region extents ``(offset, nbytes)`` of ``index``'s tensors in about the order a decoder's
    forward reads them: names in natural order (``layers.2`` before ``layers.10``: a checkpoint
    converted from safetensors lies in lexical order), the output head last."""
    names = sorted(index.tensors, key=_natural_key)
    return [(index.region_offset(n), index.tensors[n].nbytes) for n in names]


def populate(buffer: memoryview, plan: Sequence[tuple[int, int]] | None = None, *, threads: int = 2,
             stop: threading.Event | None = None) -> int:
    """Build the page-table entries of a mapped ``buffer`` (page-aligned start) now, read-only
    (``MADV_POPULATE_READ`` per chunk of ``plan``, default :func:`populate_plan` of the whole buffer),
    on ``threads`` threads taking the chunks in order. Nothing is copied: on a shared mapping the pages
    stay the segment's. Where the kernel has no ``MADV_POPULATE_READ`` one byte per page is read
    instead. ``stop`` (set) makes the threads skip the chunks left. Returns the bytes populated."""
    nbytes = buffer.nbytes
    if nbytes == 0:
        return 0
    base = buffer_address(buffer)
    chunks = populate_plan(nbytes) if plan is None else list(plan)
    lock = threading.Lock()
    state = {"next": 0, "bytes": 0}
    failed: list[BaseException] = []

    def work() -> None:
        while not failed and (stop is None or not stop.is_set()):
            with lock:
                i = state["next"]
                if i >= len(chunks):
                    return
                state["next"] = i + 1
            start, length = chunks[i]
            length = min(length, nbytes - start)
            if length <= 0:
                continue
            try:
                _populate_range(buffer, base, start, length)
            except BaseException as exc:  # re-raised on the caller's thread
                failed.append(exc)
                return
            with lock:
                state["bytes"] += length

    workers = [threading.Thread(target=work, name=f"populate-{i}", daemon=True) for i in range(max(1, threads) - 1)]
    for worker in workers:
        worker.start()
    work()
    for worker in workers:
        worker.join()
    if failed:
        raise failed[0]
    return state["bytes"]


def _populate_range(buffer: memoryview, base: int, start: int, length: int) -> None:
    if _libc.madvise(ctypes.c_void_p(base + start), ctypes.c_size_t(length), MADV_POPULATE_READ) == 0:
        return
    err = ctypes.get_errno()
    if err != errno.EINVAL:  # EINVAL: a kernel without MADV_POPULATE_READ
        raise OSError(err, f"madvise(MADV_POPULATE_READ) failed: {os.strerror(err)}")
    pages = np.frombuffer(buffer, dtype=np.uint8, count=length, offset=start)
    int(pages[:: mmap.PAGESIZE].sum())  # one read per page maps it


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
        page-table entry now (MAP_POPULATE, on this thread: ~0.2 s for 2.6 GB of 4 KiB shmem pages on
        a quiet dev VM, 0.7 s measured under load); :func:`populate` does it on several threads
        after mapping. Off by default: the mapping itself is then immediate."""
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
