"""The GPU path: storage -> pinned host staging buffers -> GPU, as a pipeline.

Each reader thread owns two pinned (page-locked) staging buffers and one CUDA stream.
It reads chunk k into a staging buffer, verifies it, and queues an asynchronous
(``non_blocking``) copy of it to its place in the GPU region on its stream; while that
copy runs it reads chunk k+1 into the other buffer. Before a buffer is refilled, the
thread waits on the event recorded after the copy out of it. The GPU region is one
allocation; tensors are views into it, as on the CPU.

Several reader threads keep the host side ahead of the PCIe link: one thread reading from the
page cache (or an O_DIRECT disk read) into pinned memory moves 2-3 GB/s, a 16-lane PCIe 5 link
55 GB/s (``bench/RESULTS.md``, H200). By default one thread per CPU, at most 16
(:func:`gpu_reader_threads`), with 16 MiB reads (:data:`GPU_CHUNK_BYTES`).

Needs CUDA; tested by the ``gpu``-marked tests and ``bench/gpu_load.py`` on a GPU machine.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from faas_llm.checkpoint.format import CheckpointIndex
from faas_llm.checkpoint.reader import LoadStats, ReadTask, plan_reads, verify_chunk
from faas_llm.checkpoint.sources import CheckpointSource, as_source
from faas_llm.errors import CheckpointError

MiB = 1024 * 1024
#: default size of one read of the GPU pipeline (each reader thread pins two such buffers)
GPU_CHUNK_BYTES = 16 * MiB
#: at most this many reader threads by default (more only adds pinned memory)
GPU_MAX_DEFAULT_THREADS = 16


def gpu_reader_threads(cpus: int | None, configured: int = 0) -> int:
    """Reader threads of the GPU pipeline: ``configured`` when set (> 0), else one per CPU, at most
    :data:`GPU_MAX_DEFAULT_THREADS` (unknown CPU count: 1)."""
    if configured > 0:
        return configured
    return max(1, min(GPU_MAX_DEFAULT_THREADS, cpus or 1))


_staging_lock = threading.Lock()
_staging_free: dict[int, list[torch.Tensor]] = {}


def _take_staging(nbytes: int) -> torch.Tensor:
    """A pinned host buffer of ``nbytes`` (reused across loads: pinning is slow)."""
    with _staging_lock:
        free = _staging_free.get(nbytes)
        if free:
            return free.pop()
    return torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)


def _give_back_staging(buffer: torch.Tensor) -> None:
    with _staging_lock:
        _staging_free.setdefault(buffer.numel(), []).append(buffer)


def prepare_staging(threads: int | None = None, chunk_bytes: int = GPU_CHUNK_BYTES) -> int:
    """Pin the staging buffers of a later :func:`load_to_device` now, ahead of the first load (pinning
    takes milliseconds per buffer): for a process that prewarms before serving on a GPU
    (``bench/gpu_load.py`` measures after it; the action runtime serves on the CPU). Returns the bytes
    pinned."""
    threads = threads or gpu_reader_threads(os.cpu_count())
    buffers = [_take_staging(chunk_bytes) for _ in range(2 * threads)]
    for buffer in buffers:
        _give_back_staging(buffer)
    return sum(b.numel() for b in buffers)


def load_to_device(
    src: str | Path | CheckpointSource,
    index: CheckpointIndex | None = None,
    *,
    device: str | torch.device = "cuda",
    verify: bool = True,
    chunk_bytes: int = GPU_CHUNK_BYTES,
    threads: int | None = None,
    direct_io: bool = True,
) -> tuple[torch.Tensor, LoadStats]:
    """Read the checkpoint into one flat uint8 tensor on ``device`` (via pinned staging buffers),
    with ``threads`` readers (default :func:`gpu_reader_threads`).

    Returns the region tensor (use :func:`~faas_llm.checkpoint.tensors.tensors_from_region`)
    and the stats. Raises CheckpointError; on an error nothing is returned."""
    dev = torch.device(device)
    if dev.type != "cuda" or not torch.cuda.is_available():
        raise CheckpointError(f"device {dev} is not an available CUDA device")
    source = as_source(src, index, direct_io=direct_io)
    index = index or source.index
    tasks = plan_reads(index, chunk_bytes)
    step = max(t.nbytes for t in tasks)
    threads = max(1, min(threads or gpu_reader_threads(os.cpu_count()), len(tasks)))
    started = time.perf_counter()
    region = torch.empty(index.total_bytes, dtype=torch.uint8, device=dev)
    pending = iter(tasks)
    lock = threading.Lock()
    failed = threading.Event()
    errors: list[BaseException] = []

    def worker() -> None:
        staging = [_take_staging(step), _take_staging(step)]
        views = [memoryview(s.numpy()) for s in staging]  # type: ignore[arg-type]
        copied: list[torch.cuda.Event | None] = [None, None]
        stream = torch.cuda.Stream(device=dev)
        stream.wait_stream(torch.cuda.current_stream(dev))  # the region's allocation is ordered on that stream
        k = 0
        try:
            while not failed.is_set():
                with lock:
                    task: ReadTask | None = next(pending, None)
                if task is None:
                    break
                i = k % 2
                k += 1
                event = copied[i]
                if event is not None:
                    event.synchronize()  # the GPU is done with this staging buffer
                part = index.partitions[task.partition]
                chunk = views[i][:task.nbytes]
                source.read(part, task.offset, chunk)
                if verify:
                    verify_chunk(index, task, chunk, source.description)
                with torch.cuda.stream(stream):
                    region[task.region_offset:task.region_offset + task.nbytes].copy_(
                        staging[i][:task.nbytes], non_blocking=True)
                    done = torch.cuda.Event()
                    done.record(stream)
                    copied[i] = done
            stream.synchronize()
        except BaseException as exc:
            with lock:
                errors.append(exc if isinstance(exc, CheckpointError) else
                              CheckpointError(f"{source.description}: GPU load failed: {exc}"))
            failed.set()
            stream.synchronize()
        finally:
            for view in views:
                view.release()
            for buffer in staging:
                _give_back_staging(buffer)

    with source:
        pool = [threading.Thread(target=worker, name=f"ckpt-gpu-reader-{i}", daemon=True) for i in range(threads)]
        for t in pool:
            t.start()
        for t in pool:
            t.join()
        direct = source.direct_io_used
    if errors:
        del region
        raise errors[0]
    elapsed = time.perf_counter() - started
    stats = LoadStats(nbytes=index.total_bytes, read_seconds=elapsed, total_seconds=elapsed, verified=verify,
                      direct_io=direct, threads=threads, chunk_bytes=step, source=source.description)
    return region, stats


def load_model_to_device(
    ckpt: str | Path | CheckpointSource,
    *,
    device: str | torch.device = "cuda",
    settings: Any = None,
    verify: bool = True,
) -> tuple[nn.Module, LoadStats]:
    """The GPU twin of :func:`~faas_llm.checkpoint.load_model`: weights in GPU memory, skeleton
    built on the CPU while the pipeline runs, CPU-built buffers moved to the device."""
    from faas_llm.checkpoint.skeleton import assign_tensors, build_in_background
    from faas_llm.checkpoint.tensors import tensors_from_region

    started = time.perf_counter()
    options: dict[str, Any] = {}
    if settings is not None:
        options = {"chunk_bytes": settings.loader_gpu_chunk_bytes,
                   "threads": gpu_reader_threads(os.cpu_count(), settings.loader_gpu_threads),
                   "direct_io": settings.loader_direct_io}
    source = as_source(ckpt, direct_io=options.get("direct_io", True))
    config_dir = source.config_dir
    if config_dir is None:
        raise CheckpointError(f"{source.description}: no directory with the model's config.json")
    builder, skeleton, failure = build_in_background(config_dir)
    try:
        region, stats = load_to_device(source, source.index, device=device, verify=verify, **options)
    finally:
        builder.join()
    if failure:
        raise failure[0]
    build_started = time.perf_counter()
    tensors = tensors_from_region(source.index, region)
    model = assign_tensors(skeleton[0], tensors, where=source.description, device=device)
    torch.cuda.synchronize(torch.device(device))
    stats.build_seconds = time.perf_counter() - build_started
    stats.total_seconds = time.perf_counter() - started
    return model, stats
