"""Prewarming: pay for importing torch and transformers when the process starts, not on a cold start.

A prewarmed runtime has done this before ``/init`` arrives, so the cold path is only the load. It also
maps the node's DRAM pool (:func:`~faas_llm.cache_client.premap_pool`, on a pool of 4 KiB pages): a
checkpoint leased from it later needs no page-table work on the request path.
"""

from __future__ import annotations

import importlib
import time
from typing import Any

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
    _exercise_kernels(torch)
    _premap_pool(settings)
    return time.perf_counter() - started


def _premap_pool(settings: Settings) -> None:
    """Map the node's DRAM pool in the background (:func:`~faas_llm.cache_client.start_premap`): the
    runtime is ready at once; a lease before it finished maps its own extent instead."""
    from faas_llm.cache_client import start_premap

    start_premap(settings)


def _exercise_kernels(torch: Any) -> None:
    """Run each kind of kernel a decoder forward uses once, on tiny tensors: their first call pays
    one-off set-up (thread pool, kernel dispatch, SDPA selection) that would otherwise land on the
    first request's time to first token."""
    import torch.nn.functional as F

    with torch.inference_mode():
        for dtype in (torch.float32, torch.bfloat16, torch.float16):  # fp16: the usual checkpoint dtype
            x = torch.randn(1, 4, 8, 16, dtype=dtype)
            F.scaled_dot_product_attention(x, x, x, is_causal=True)
            h = torch.randn(1, 4, 64, dtype=dtype)
            w = torch.randn(64, 64, dtype=dtype)
            y = F.silu(F.linear(h, w)) * F.gelu(F.linear(h, w))
            y = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + 1e-6)
            F.layer_norm(y, (64,))
            torch.softmax(y.float(), dim=-1)
        F.embedding(torch.tensor([[1, 2]]), torch.randn(8, 4))
        torch.multinomial(torch.ones(8), 1, generator=torch.Generator().manual_seed(0))
