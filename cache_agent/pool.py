"""The DRAM tier's memory: ONE shared-memory segment (a file in a tmpfs such as /dev/shm),
sized and pre-faulted once when the agent starts, then carved into per-checkpoint extents
by :mod:`cache_agent.policy`. Clients map extents of the same file (no copy).

The agent removes the segment's name when it stops; a segment left by an agent that
died (its pid is gone) is removed by the next agent of the same node at start.
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
MADV_POPULATE_WRITE = getattr(mmap, "MADV_POPULATE_WRITE", 23)  # Linux >= 5.14


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
