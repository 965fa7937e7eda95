"""Pushing a model: convert a Hugging Face directory (unless it is a checkpoint already),
check it, and store it as the next version of a name."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from faas_llm.errors import RequestError
from faas_llm.registry.base import ModelVersion, Progress, Registry, validate_name

ConvertProgress = Callable[[int, int], None]


def push_model(registry: Registry, src: Path, name: str, *, work_dir: Path,
               convert_progress: ConvertProgress | None = None, upload_progress: Progress | None = None
               ) -> ModelVersion:
    """Push ``src`` (a HF model directory or a faas-llm checkpoint) as the next version of ``name``."""
    from faas_llm.checkpoint import INDEX_FILE, convert, read_index

    validate_name(name)
    if not src.is_dir():
        raise RequestError(f"{src} is not a directory")
    if (src / INDEX_FILE).is_file():
        read_index(src)  # a checkpoint already: refuse a broken one before uploading it
        return registry.push(src, name, upload_progress)
    work_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="push-", dir=work_dir))
    try:
        ckpt = tmp / "checkpoint"
        convert(src, ckpt, convert_progress)
        return registry.push(ckpt, name, upload_progress)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
