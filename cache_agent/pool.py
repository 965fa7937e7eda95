"""The DRAM tier's memory: ONE shared-memory segment (a file in a tmpfs such as /dev/shm),
sized and pre-faulted once when the agent starts, then carved into per-checkpoint extents
by :mod:`cache_agent.policy`. Clients map extents of the same file (no copy).

The agent removes the segment's name when it stops; a segment left by an agent that
died (its pid is gone) is removed by the next agent of the same node at start.

Which page size the pool got matters for the cold path: a runtime that maps a checkpoint of
4 KiB shmem pages pays ~640,000 page faults per 2.6 GB on its first forward pass (about 1 s on
the development VM), one on 2 MiB pages a few hundred. ``/dev/shm`` gives huge pages only where
``/sys/kernel/mm/transparent_hugepage/shmem_enabled`` is ``always``/``within_size``/``advise``;
a tmpfs mounted ``huge=always`` (``FAAS_LLM_DRAM_POOL_DIR``) gives them regardless. The pool
measures what it got after pre-faulting (:func:`mapping_pages`, from ``/proc/self/smaps``) and
the agent logs it, with :func:`pool_page_advice` when it is 4 KiB (see docs/deploy.md). On 4 KiB pages
the runtimes build their page tables ahead of the first forward instead (a prewarmed runtime maps and
populates the whole pool before /init: :func:`faas_llm.cache_client.premap_pool`; otherwise /init
populates the lease's range: ``runtime_populate_threads``).
"""

from __future__ import annotations

import contextlib
import mmap
import os
import re
import time
from pathlib import Path

import numpy as np

from faas_llm.errors import ConfigError

ALIGNMENT = 2 * 1024 * 1024  # extents start on 2 MiB boundaries (huge-page friendly, 4 KiB-aligned)
HUGE_PAGE = 2 * 1024 * 1024
SHMEM_ENABLED = Path("/sys/kernel/mm/transparent_hugepage/shmem_enabled")
MADV_POPULATE_WRITE = getattr(mmap, "MADV_POPULATE_WRITE", 23)  # Linux >= 5.14


def mapping_pages(address: int, smaps: Path = Path("/proc/self/smaps")) -> tuple[int, int]:
    """(resident bytes, bytes mapped with 2 MiB PMD entries) of this process's mapping that
    contains ``address``; (0, 0) where /proc/self/smaps cannot say."""
    try:
        text = smaps.read_text()
    except OSError:
        return 0, 0
    return parse_smaps(text, address)


def parse_smaps(text: str, address: int) -> tuple[int, int]:
    """Pure part of :func:`mapping_pages`: ``Rss`` and ``ShmemPmdMapped``/``FilePmdMapped``/``AnonHugePages``
    (bytes) of the smaps entry whose range holds ``address``."""
    inside = False
    rss = huge = 0
    for line in text.splitlines():
        head = line.split(maxsplit=1)[0] if line.strip() else ""
        if "-" in head and not head.endswith(":"):
            if inside:
                break
            start, _, end = head.partition("-")
            try:
                inside = int(start, 16) <= address < int(end, 16)
            except ValueError:
                inside = False
        elif inside and head in ("Rss:", "ShmemPmdMapped:", "FilePmdMapped:", "AnonHugePages:"):
            kib = int(line.split()[1]) * 1024
            if head == "Rss:":
                rss = kib
            else:
                huge += kib
    return rss, huge


def tmpfs_huge_option(directory: Path, mounts: Path = Path("/proc/self/mounts")) -> str | None:
    """The ``huge=`` option of the tmpfs that holds ``directory`` (None: not a tmpfs, or no option)."""
    try:
        lines = mounts.read_text().splitlines()
        target = directory.resolve()
    except OSError:
        return None
    best: tuple[int, str | None] = (-1, None)
    for line in lines:
        fields = line.split()
        if len(fields) < 4:
            continue
        point = Path(fields[1].replace("\\040", " "))
        if (target == point or point in target.parents) and len(point.parts) > best[0]:
            huge = next((o.split("=", 1)[1] for o in fields[3].split(",") if o.startswith("huge=")), None)
            best = (len(point.parts), huge if fields[2] == "tmpfs" else None)
    return best[1]


def pool_page_advice(page_bytes: int, directory: Path, mount_huge: str | None, shmem_enabled: str | None) -> str | None:
    """Why the pool got 4 KiB pages and what to do, or None when it got huge pages."""
    if page_bytes >= HUGE_PAGE:
        return None
    why = (f"the tmpfs at {directory} is mounted huge={mount_huge}" if mount_huge
           else f"shmem_enabled is '{shmem_enabled or 'unknown'}' and {directory} has no huge= mount option")
    return (f"the DRAM pool got 4 KiB pages ({why}): every runtime pays one page fault per 4 KiB of a "
            "checkpoint on its first forward pass. Put FAAS_LLM_DRAM_POOL_DIR on a tmpfs mounted with "
            "huge=always (mount -t tmpfs -o huge=always,size=SIZE none DIR; docs/deploy.md)")


def _shmem_enabled() -> str | None:
    try:
        text = SHMEM_ENABLED.read_text()
    except OSError:
        return None
    chosen = [w for w in text.split() if w.startswith("[")]
    return chosen[0].strip("[]") if chosen else text.strip()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class DramPool:
    """A pre-faulted shared-memory segment of ``capacity`` bytes."""

    def __init__(self, directory: Path, tag: str, capacity: int) -> None:
        if capacity < ALIGNMENT:
            raise ConfigError(f"the DRAM pool needs at least {ALIGNMENT} bytes, got {capacity}")
        if not directory.is_dir():
            raise ConfigError(f"DRAM pool directory {directory} does not exist")
        self.capacity = capacity // ALIGNMENT * ALIGNMENT
        self.tag = tag
        self._remove_stale(directory, tag)
        self.path = directory / f"faas-llm-{tag}-{os.getpid()}.pool"
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, self.capacity)
            self._mmap = mmap.mmap(fd, self.capacity, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError as exc:
            os.close(fd)
            self.path.unlink()
            raise ConfigError(f"cannot create the DRAM pool {self.path} ({self.capacity} bytes): {exc}") from exc
        os.close(fd)
        started = time.perf_counter()
        self._prefault()
        self.prefault_s = time.perf_counter() - started
        self.view = memoryview(self._mmap)
        self.directory = directory
        resident, huge = mapping_pages(self.address)
        #: the fraction of the pool mapped with 2 MiB pages, and the page size that says
        self.huge_share = huge / resident if resident else 0.0
        self.page_bytes = HUGE_PAGE if self.huge_share >= 0.5 else mmap.PAGESIZE
        self.advice = pool_page_advice(self.page_bytes, directory, tmpfs_huge_option(directory), _shmem_enabled())

    @property
    def address(self) -> int:
        return int(np.frombuffer(self._mmap, dtype=np.uint8, count=1).ctypes.data)

    @staticmethod
    def _remove_stale(directory: Path, tag: str) -> None:
        pattern = re.compile(rf"^faas-llm-{re.escape(tag)}-(\d+)\.pool$")
        for entry in os.listdir(directory):
            match = pattern.match(entry)
            if match and not _pid_alive(int(match.group(1))):
                with contextlib.suppress(FileNotFoundError):
                    (directory / entry).unlink()

    def _prefault(self) -> None:
        """Allocate every page of the segment now, so that no load pays page faults. Huge pages
        are asked for (honoured where /sys/kernel/mm/transparent_hugepage/shmem_enabled allows):
        O_DIRECT reads into 4 KiB shmem pages were up to 2x slower than into huge anonymous pages."""
        if hasattr(mmap, "MADV_HUGEPAGE"):
            with contextlib.suppress(OSError):
                self._mmap.madvise(mmap.MADV_HUGEPAGE)
        try:
            self._mmap.madvise(MADV_POPULATE_WRITE)
            return
        except (OSError, ValueError):
            pass
        pages = np.frombuffer(self._mmap, dtype=np.uint8)
        pages[:: mmap.PAGESIZE] = 0
        del pages

    def measure_bandwidth(self, nbytes: int = 64 * 1024 * 1024) -> float:
        """Bytes/s of a copy inside the pool (the DRAM tier's read bandwidth), or 0 if too small."""
        half = min(nbytes, self.capacity // 2) // ALIGNMENT * ALIGNMENT
        if half == 0:
            return 0.0
        arr = np.frombuffer(self._mmap, dtype=np.uint8)
        started = time.perf_counter()
        arr[half:2 * half] = arr[:half]
        elapsed = time.perf_counter() - started
        del arr
        return half / elapsed if elapsed > 0 else 0.0

    def region(self, offset: int, nbytes: int) -> memoryview:
        if offset < 0 or offset + nbytes > self.capacity:
            raise ValueError(f"extent [{offset}, {offset + nbytes}) outside the pool of {self.capacity} bytes")
        return self.view[offset:offset + nbytes]

    def close(self) -> None:
        """Unmap and remove the segment's name (clients' mappings stay valid until they unmap)."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self.view.release()
        with contextlib.suppress(BufferError):
            self._mmap.close()
