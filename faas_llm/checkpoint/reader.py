"""The loader's core: large sequential reads of a checkpoint into one destination region.

:func:`plan_reads` (pure) cuts the partitions into chunks of whole checksum blocks;
:func:`read_into` runs them on one or two reader threads, each thread reading a chunk
straight into its place in the destination; a separate thread verifies each chunk's
checksums as soon as it lands, so the disk always has the readers' requests in flight.
Any problem (truncation, checksum mismatch, I/O error) raises
:class:`~faas_llm.errors.CheckpointError` after every thread has stopped, so a caller
never gets a half-loaded region back as if it were good.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import xxhash

from faas_llm.checkpoint.format import CheckpointIndex, align_up
from faas_llm.checkpoint.sources import CheckpointSource, as_source
from faas_llm.errors import CheckpointError

MiB = 1024 * 1024
DEFAULT_CHUNK_BYTES = 64 * MiB


@dataclass(frozen=True, slots=True)
class ReadTask:
    """Read ``nbytes`` at ``offset`` of partition ``partition`` to ``region_offset`` of the destination."""

    partition: int
    offset: int
    nbytes: int
    region_offset: int


@dataclass(slots=True)
class LoadStats:
    """What one load did and how long it took (seconds are wall-clock)."""

    nbytes: int = 0
    read_seconds: float = 0.0
    build_seconds: float = 0.0
    total_seconds: float = 0.0
    verified: bool = False
    direct_io: bool = False
    threads: int = 1
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    source: str = ""
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def read_gbps(self) -> float:
        return self.nbytes / self.read_seconds / 1e9 if self.read_seconds > 0 else 0.0


def plan_reads(index: CheckpointIndex, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> list[ReadTask]:
    """Cut every partition into reads of ``chunk_bytes`` (rounded up to whole checksum blocks), in region order."""
    if chunk_bytes <= 0:
        raise ValueError("chunk_bytes must be > 0")
    step = align_up(chunk_bytes, index.checksum_block)
    tasks = []
    for p, part in enumerate(index.partitions):
        for offset in range(0, part.nbytes, step):
            n = min(step, part.nbytes - offset)
            tasks.append(ReadTask(p, offset, n, part.region_offset + offset))
    return tasks


def verify_chunk(index: CheckpointIndex, task: ReadTask, data: memoryview, where: str) -> None:
    """Check the checksum blocks of one read (raises CheckpointError on a mismatch)."""
    part = index.partitions[task.partition]
    block = index.checksum_block
    for start in range(0, task.nbytes, block):
        i = (task.offset + start) // block
        digest = xxhash.xxh3_64(data[start:start + block]).hexdigest()
        if digest != part.checksums[i]:
            raise CheckpointError(
                f"{where}/{part.file}: checksum mismatch in block {i} (bytes {task.offset + start}.."
                f"{min(task.offset + start + block, part.nbytes)}): the checkpoint is corrupt"
            )


def read_into(
    src: str | Path | CheckpointSource,
    index: CheckpointIndex | None,
    dest: memoryview | bytearray,
    *,
    verify: bool = True,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    threads: int = 2,
    direct_io: bool = True,
    use_page_cache: bool = True,
) -> LoadStats:
    """Read the whole checkpoint into ``dest`` (at least ``index.total_bytes``; it may be a
    slice of a shared-memory pool). ``src`` is a checkpoint directory or a source.
    ``direct_io`` reads through O_DIRECT where possible; ``use_page_cache`` first takes what
    the page cache already holds (see :class:`LocalDirSource`).
    Raises CheckpointError naming the file and the problem; returns only when every byte
    is in place (and verified, with ``verify``)."""
    source = as_source(src, index, direct_io=direct_io, use_page_cache=use_page_cache)
    index = index or source.index
    view = memoryview(dest).cast("B") if not isinstance(dest, memoryview) or dest.format != "B" else dest
    if view.readonly:
        raise CheckpointError(f"{source.description}: the destination buffer is read-only")
    if len(view) < index.total_bytes:
        raise CheckpointError(f"{source.description}: destination has {len(view)} bytes, "
                              f"the checkpoint needs {index.total_bytes}")
    tasks = plan_reads(index, chunk_bytes)
    threads = max(1, min(threads, len(tasks)))
    started = time.perf_counter()
    with source:
        errors = _run(source, index, view, tasks, threads, verify)
        direct = source.direct_io_used
    if errors:
        raise errors[0]
    elapsed = time.perf_counter() - started
    return LoadStats(nbytes=index.total_bytes, read_seconds=elapsed, total_seconds=elapsed, verified=verify,
                     direct_io=direct, threads=threads, chunk_bytes=align_up(chunk_bytes, index.checksum_block),
                     source=source.description)


def _run(source: CheckpointSource, index: CheckpointIndex, view: memoryview, tasks: list[ReadTask],
         threads: int, verify: bool) -> list[BaseException]:
    """Reader threads keep ``threads`` reads in flight; checksums are computed on one more
    thread, off the readers' path, so verification never leaves the disk idle."""
    pending = iter(tasks)
    lock = threading.Lock()
    failed = threading.Event()
    errors: list[BaseException] = []
    verifier = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ckpt-verify") if verify else None
    checks: list[Future[None]] = []

    def fail(exc: BaseException, file: str) -> None:
        with lock:
            errors.append(exc if isinstance(exc, CheckpointError | KeyboardInterrupt) else CheckpointError(
                f"{source.description}/{file}: read failed: {exc}"))
        failed.set()

    def check(task: ReadTask) -> None:
        if failed.is_set():
            return
        try:
            verify_chunk(index, task, view[task.region_offset:task.region_offset + task.nbytes], source.description)
        except BaseException as exc:
            fail(exc, index.partitions[task.partition].file)

    def worker() -> None:
        while not failed.is_set():
            with lock:
                task = next(pending, None)
            if task is None:
                return
            part = index.partitions[task.partition]
            chunk = view[task.region_offset:task.region_offset + task.nbytes]
            try:
                source.read(part, task.offset, chunk)
            except BaseException as exc:
                fail(exc, part.file)
                return
            finally:
                chunk.release()
            if verifier is not None:
                future = verifier.submit(check, task)
                with lock:
                    checks.append(future)

    try:
        if threads == 1:
            worker()
        else:
            pool = [threading.Thread(target=worker, name=f"ckpt-reader-{i}", daemon=True) for i in range(threads)]
            for t in pool:
                t.start()
            for t in pool:
                t.join()
    finally:
        if verifier is not None:
            verifier.shutdown(wait=True)
    return errors
