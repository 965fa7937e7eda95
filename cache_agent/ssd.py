"""The SSD tier: whole checkpoint versions in a local directory, with a byte capacity.

Install is atomic: the files are fetched into ``<root>/.tmp/<uuid>``, verified (sizes
against the registry's manifest, every checksum block of the index), described by
``.entry.json`` and renamed into place (layout in :mod:`faas_llm.cache_protocol`).
At start the directory is re-indexed from disk: leftovers in ``.tmp`` and entries that
are incomplete (no ``.entry.json``, a file of the wrong size) are deleted. Eviction is
LRU (``last_used`` persisted as the entry file's mtime) and never touches an entry being
read (pinned). Thread-safe.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cache_agent.policy import Resident, choose_ssd_victims
from faas_llm.cache_protocol import ENTRY_FILE, ssd_entry_dir
from faas_llm.checkpoint import CheckpointIndex, plan_reads, read_index
from faas_llm.checkpoint.reader import verify_chunk
from faas_llm.errors import CheckpointError, NoCapacityError
from faas_llm.registry import ModelVersion

log = logging.getLogger(__name__)
VERIFY_CHUNK = 64 * 1024 * 1024


@dataclass
class SsdEntry:
    manifest: ModelVersion
    path: Path
    last_used: float

    @property
    def key(self) -> str:
        return self.manifest.key

    @property
    def nbytes(self) -> int:
        return self.manifest.nbytes


def verify_files(ckpt_dir: Path, manifest: ModelVersion | None = None) -> CheckpointIndex:
    """Check a checkpoint directory byte for byte: manifest sizes, then every checksum block
    of its index (buffered reads through one reusable buffer). Raises CheckpointError."""
    if manifest is not None:
        for f in manifest.files:
            path = ckpt_dir / f.path
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                raise CheckpointError(f"{path}: missing") from None
            if size != f.size:
                raise CheckpointError(f"{path}: {size} bytes, the registry's manifest says {f.size}")
    index = read_index(ckpt_dir)
    buffer = bytearray(min(VERIFY_CHUNK, max(p.nbytes for p in index.partitions)))
    view = memoryview(buffer)
    for task in plan_reads(index, VERIFY_CHUNK):
        part = index.partitions[task.partition]
        path = ckpt_dir / part.file
        try:
            with open(path, "rb", buffering=0) as fh:
                fh.seek(task.offset)
                got = fh.readinto(view[:task.nbytes])
        except OSError as exc:
            raise CheckpointError(f"{path}: cannot read: {exc}") from None
        if got != task.nbytes:
            raise CheckpointError(f"{path}: truncated at byte {task.offset + (got or 0)}")
        verify_chunk(index, task, view[:task.nbytes], str(ckpt_dir))
    return index


class SsdTier:
    def __init__(self, root: Path, capacity: int) -> None:
        self.root = root
        self.capacity = capacity
        self._entries: dict[str, SsdEntry] = {}
        self._pins: dict[str, int] = {}
        self._reserved = 0
        self._lock = threading.Lock()
        self.root.mkdir(parents=True, exist_ok=True)

    # --- state ----------------------------------------------------------------------------
    @property
    def used(self) -> int:
        with self._lock:
            return sum(e.nbytes for e in self._entries.values()) + self._reserved

    def entries(self) -> list[SsdEntry]:
        with self._lock:
            return list(self._entries.values())

    def get(self, key: str) -> SsdEntry | None:
        with self._lock:
            return self._entries.get(key)

    def newest(self, name: str) -> SsdEntry | None:
        with self._lock:
            found = [e for e in self._entries.values() if e.manifest.name == name]
        return max(found, key=lambda e: e.manifest.version) if found else None

    def touch(self, key: str) -> None:
        now = time.time()
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return
            entry.last_used = now
        with contextlib.suppress(OSError):
            os.utime(entry.path / ENTRY_FILE, (now, now))

    def pin(self, key: str) -> None:
        with self._lock:
            self._pins[key] = self._pins.get(key, 0) + 1

    def unpin(self, key: str) -> None:
        with self._lock:
            left = self._pins.get(key, 0) - 1
            if left > 0:
                self._pins[key] = left
            else:
                self._pins.pop(key, None)

    def measure_read_bandwidth(self, nbytes: int = 16 * 1024 * 1024) -> float:
        """Bytes/s of an O_DIRECT read of a probe file in the tier (written once, kept); 0 on failure.
        Loads refine the figure; this is the estimate before the first one."""
        probe = self.root / ".probe"
        try:
            if not probe.is_file() or probe.stat().st_size != nbytes:
                with open(probe, "wb") as out:
                    out.write(os.urandom(nbytes))
                    out.flush()
                    os.fsync(out.fileno())
            buffer = mmap.mmap(-1, nbytes)
            try:
                flags = os.O_RDONLY | getattr(os, "O_DIRECT", 0)
                try:
                    fd = os.open(probe, flags)
                except OSError:
                    fd = os.open(probe, os.O_RDONLY)  # a file system without O_DIRECT
                try:
                    started = time.perf_counter()
                    done = 0
                    while done < nbytes:
                        n = os.preadv(fd, [memoryview(buffer)[done:]], done)
                        if n <= 0:
                            return 0.0
                        done += n
                    elapsed = time.perf_counter() - started
                finally:
                    os.close(fd)
            finally:
                buffer.close()
        except OSError as exc:
            log.warning("ssd tier: bandwidth probe failed: %s", exc)
            return 0.0
        return nbytes / elapsed if elapsed > 0 else 0.0

    # --- re-index ---------------------------------------------------------------------------
    def reindex(self) -> list[str]:
        """Rebuild the in-memory index from disk; returns the keys of entries deleted as broken."""
        shutil.rmtree(self.root / ".tmp", ignore_errors=True)
        removed: list[str] = []
        entries: dict[str, SsdEntry] = {}
        models = self.root / "models"
        for entry_dir in sorted(models.glob("*/*/*")) if models.is_dir() else []:
            meta = entry_dir / ENTRY_FILE
            try:
                manifest = ModelVersion.model_validate_json(meta.read_bytes())
                if entry_dir != ssd_entry_dir(self.root, manifest.name, manifest.version):
                    raise CheckpointError(f"{meta} describes {manifest.key}, not this directory")
                for f in manifest.files:
                    if (entry_dir / f.path).stat().st_size != f.size:
                        raise CheckpointError(f"{entry_dir / f.path}: wrong size")
            except (OSError, ValueError, CheckpointError) as exc:
                log.warning("ssd tier: removing broken entry %s: %s", entry_dir, exc)
                removed.append(str(entry_dir.relative_to(self.root)))
                shutil.rmtree(entry_dir, ignore_errors=True)
                continue
            entries[manifest.key] = SsdEntry(manifest, entry_dir, meta.stat().st_mtime)
        with self._lock:
            self._entries = entries
        return removed

    # --- install / remove ----------------------------------------------------------------------
    def install(self, manifest: ModelVersion, fetch: Callable[[Path], None]) -> tuple[SsdEntry, list[str]]:
        """Fetch ``manifest`` with ``fetch(tmp_dir)``, verify and install it; evicts LRU entries
        for room. Returns the entry and the evicted keys. Raises NoCapacityError or CheckpointError."""
        need = manifest.nbytes
        with self._lock:
            if manifest.key in self._entries:
                return self._entries[manifest.key], []
            residents = [Resident(e.key, e.nbytes, e.last_used, e.key in self._pins) for e in self._entries.values()]
            used = sum(e.nbytes for e in self._entries.values()) + self._reserved
            victims = choose_ssd_victims(residents, self.capacity, used, need)
            if victims is None:
                raise NoCapacityError(f"{manifest.key} ({need} bytes) does not fit in the SSD tier "
                                      f"({self.capacity} bytes, {used} used, the rest in use)")
            doomed = [self._entries.pop(k) for k in victims]
            self._reserved += need
        for entry in doomed:
            shutil.rmtree(entry.path, ignore_errors=True)
        tmp = self.root / ".tmp" / uuid.uuid4().hex
        try:
            tmp.mkdir(parents=True)
            fetch(tmp)
            verify_files(tmp, manifest)
            (tmp / ENTRY_FILE).write_text(manifest.model_dump_json(), encoding="utf-8")
            final = ssd_entry_dir(self.root, manifest.name, manifest.version)
            final.parent.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(final, ignore_errors=True)  # a broken leftover of the same version
            tmp.rename(final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            with self._lock:
                self._reserved -= need
            raise
        entry = SsdEntry(manifest, final, time.time())
        with self._lock:
            self._reserved -= need
            self._entries[manifest.key] = entry
        return entry, victims

    def remove(self, key: str, *, unless_pinned: bool = False) -> bool:
        """Delete an entry (e.g. found corrupt); False if it was not there (or, with
        ``unless_pinned``, is being read)."""
        with self._lock:
            if unless_pinned and key in self._pins:
                return False
            entry = self._entries.pop(key, None)
        if entry is None:
            return False
        # rename first, so a reader that lists the directory never sees a half-deleted entry
        trash = self.root / ".tmp" / f"trash-{uuid.uuid4().hex}"
        trash.parent.mkdir(parents=True, exist_ok=True)
        try:
            entry.path.rename(trash)
        except OSError:
            trash = entry.path
        shutil.rmtree(trash, ignore_errors=True)
        return True
