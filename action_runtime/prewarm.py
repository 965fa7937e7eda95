"""Prewarming: pay for importing torch and transformers when the process starts, not on a cold start.

A prewarmed runtime has done this before ``/init`` arrives, so the cold path is only the load.
"""

from __future__ import annotations

import importlib
import time

from faas_llm.settings import Settings

# The transformers modules a load touches (the lazy module would import them on first use).
_MODULES = (
    "torch",
    "transformers",
    "transformers.models.auto.modeling_auto",
    "transformers.models.auto.tokenization_auto",
    "transformers.cache_utils",
    "transformers.models.llama.modeling_llama",
)


def prewarm(settings: Settings) -> float:
    """Import torch and transformers (and set torch's threads); returns the seconds it took."""
    started = time.perf_counter()
    for name in _MODULES:
        importlib.import_module(name)
    import torch
    import transformers

    # Touching the classes resolves transformers' lazy attributes now.
    _ = (transformers.AutoModelForCausalLM, transformers.AutoTokenizer, transformers.DynamicCache)
    if settings.runtime_torch_threads:
        torch.set_num_threads(settings.runtime_torch_threads)
    torch.zeros(8) @ torch.zeros(8)  # initialise the intra-op thread pool
    return time.perf_counter() - started
