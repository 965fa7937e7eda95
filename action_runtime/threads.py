"""Torch intra-op threads of a runtime, chosen from its model once it is loaded.

A runtime serves one model. For a small one, each token's matrix products are too small for
intra-op parallelism to pay: splitting them costs a barrier per kernel (dozens per layer), and the
second thread takes a core from the gateway, the invoker and Redis on the same host. Measured on the
2-core bench machine with the tiny model (issue 11): one thread held 200 invocations/s at p99 90 ms,
torch's default two held 150/s.
"""

from __future__ import annotations

from typing import Any


def intra_op_threads(configured: int, n_params: int, single_thread_below: int) -> int | None:
    """The intra-op thread count to set, or ``None`` to keep torch's default.

    ``configured`` (``runtime_torch_threads``, 0 = not set) wins; otherwise a model with fewer than
    ``single_thread_below`` parameters gets one thread (``single_thread_below`` 0 turns that off).
    """
    if configured > 0:
        return configured
    if n_params < single_thread_below:
        return 1
    return None


def parameter_count(model: Any) -> int:
    """The number of parameters of a torch module (tied weights counted once)."""
    return sum(p.numel() for p in model.parameters())
