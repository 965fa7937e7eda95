"""The GPU pipeline's reader-thread rule (a pure function; the pipeline itself needs CUDA)."""

from __future__ import annotations

import pytest

from faas_llm.checkpoint.gpu import GPU_MAX_DEFAULT_THREADS, gpu_reader_threads
from faas_llm.settings import Settings


@pytest.mark.parametrize(("cpus", "configured", "expected"), [
    (None, 0, 1), (1, 0, 1), (2, 0, 2), (8, 0, 8), (16, 0, 16), (128, 0, GPU_MAX_DEFAULT_THREADS),
    (2, 12, 12), (None, 3, 3),
])
def test_reader_threads(cpus: int | None, configured: int, expected: int) -> None:
    assert gpu_reader_threads(cpus, configured) == expected


def test_settings_default_to_the_rule() -> None:
    settings = Settings()
    assert settings.loader_gpu_threads == 0 and settings.loader_gpu_chunk_bytes == 16 * 1024 * 1024
    with pytest.raises(ValueError):
        Settings(loader_gpu_threads=-1)
