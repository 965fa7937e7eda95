"""Loading a checkpoint into a ready model: read (or map) the tensors, build the skeleton meanwhile, assign.

:func:`load_model` is the loader's entry point for the CPU; the GPU path is
:func:`faas_llm.checkpoint.gpu.load_model_to_device`. The skeleton and the assignment are in
:mod:`faas_llm.checkpoint.skeleton`.
"""

from __future__ import annotations

import time
import weakref
from pathlib import Path
from typing import Any

import torch
from torch import nn

from faas_llm.checkpoint.format import CheckpointIndex
from faas_llm.checkpoint.mapped import fully_cached, map_partitions
from faas_llm.checkpoint.reader import LoadStats, read_into
from faas_llm.checkpoint.region import Region, RegionPool, default_pool
from faas_llm.checkpoint.skeleton import assign_tensors, build_in_background, build_model, build_skeleton, load_config
from faas_llm.checkpoint.sources import CheckpointSource, LocalDirSource, as_source
from faas_llm.checkpoint.tensors import region_tensor, tensors_from_region
from faas_llm.errors import CheckpointError

__all__ = ["assign_tensors", "build_model", "build_skeleton", "load_config", "load_model"]


def load_model(
    ckpt: str | Path | CheckpointSource,
    *,
    region: Region | memoryview | None = None,
    device: str | torch.device = "cpu",
    settings: Any = None,
    verify: bool = True,
    pool: RegionPool | None = None,
    map_cached: bool = True,
) -> tuple[nn.Module, LoadStats]:
    """Load a checkpoint into a ready model in one call.

    The bytes go into ``region`` (a :class:`Region`, or any writable buffer of at least
    ``checkpoint_nbytes(index)``) or, without one, into a pre-faulted region taken from
    ``pool`` (default: the process-wide pool), given back when the model is collected. The
    skeleton is built while the reads are in flight. ``settings`` (a Settings) supplies the
    chunk size, threads and O_DIRECT switch. ``device`` other than CPU goes through
    :func:`faas_llm.checkpoint.gpu.load_to_device`. With ``map_cached`` and no ``region``, a
    local checkpoint that is entirely in the page cache is mapped instead of copied
    (:mod:`faas_llm.checkpoint.mapped`; verified all the same).
    """
    if torch.device(device).type != "cpu":
        from faas_llm.checkpoint.gpu import load_model_to_device

        return load_model_to_device(ckpt, device=device, settings=settings, verify=verify)
    started = time.perf_counter()
    direct_io = settings.loader_direct_io if settings is not None else True
    source = as_source(ckpt, direct_io=direct_io)
    index = source.index
    config_dir = source.config_dir
    if config_dir is None:
        raise CheckpointError(f"{source.description}: no directory with the model's config.json")
    if region is None and map_cached and isinstance(source, LocalDirSource):
        with source:
            cached = fully_cached(source)
        if cached:
            return _load_mapped(source, index, config_dir, verify, started, settings)
    taken: Region | None = None
    if region is None:
        pool = pool or default_pool()
        taken = pool.take(index.total_bytes)
        dest: memoryview = taken.buffer
    else:
        dest = region.buffer if isinstance(region, Region) else memoryview(region)
    try:
        builder, skeleton, failure = build_in_background(config_dir)
        try:
            stats = read_into(source, index, dest, verify=verify, **_reader_options(settings))
        finally:
            builder.join()
        if failure:
            raise failure[0]
        build_started = time.perf_counter()
        tensors = tensors_from_region(index, region_tensor(dest, index.total_bytes))
        model = assign_tensors(skeleton[0], tensors, where=source.description)
    except BaseException:
        if taken is not None and pool is not None:
            pool.give_back(taken)
        raise
    if taken is not None and pool is not None:
        weakref.finalize(model, pool.give_back, taken)
    stats.build_seconds = time.perf_counter() - build_started
    stats.total_seconds = time.perf_counter() - started
    return model, stats


def _load_mapped(source: LocalDirSource, index: CheckpointIndex, config_dir: Path, verify: bool, started: float,
                 settings: Any) -> tuple[nn.Module, LoadStats]:
    builder, skeleton, failure = build_in_background(config_dir)
    try:
        tensors = map_partitions(source, index, verify=verify,
                                 threads=settings.loader_threads if settings is not None else 2)
    finally:
        builder.join()
    if failure:
        raise failure[0]
    read_done = time.perf_counter()
    model = assign_tensors(skeleton[0], tensors, where=source.description)
    done = time.perf_counter()
    stats = LoadStats(nbytes=index.total_bytes, read_seconds=read_done - started, build_seconds=done - read_done,
                      total_seconds=done - started, verified=verify, direct_io=False, threads=1, chunk_bytes=0,
                      source=f"{source.description} (page cache, mapped)", extra={"mapped": 1.0})
    return model, stats


def _reader_options(settings: Any) -> dict[str, Any]:
    if settings is None:
        return {}
    return {"chunk_bytes": settings.loader_chunk_bytes, "threads": settings.loader_threads,
            "direct_io": settings.loader_direct_io}

