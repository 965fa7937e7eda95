"""The device a runtime serves its model on (``runtime_device``).

``auto`` is the first CUDA device the process sees (the invoker gives each GPU runtime its own through
``CUDA_VISIBLE_DEVICES``, so that is the runtime's GPU), else the CPU. A checkpoint then loads straight to
it through the loader's GPU path (:mod:`faas_llm.checkpoint.gpu`); any other model is moved after loading.
"""

from __future__ import annotations

from typing import Any


def serving_device(setting: str) -> str:
    """``cpu``, ``cuda`` or ``cuda:N`` for the setting (``auto`` resolved; CUDA asked for but absent: an error)."""
    import torch

    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if setting.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"runtime_device is {setting!r} but this process sees no CUDA device")
    return setting


def on_device(model: Any, device: str) -> Any:
    """``model`` on ``device`` (a no-op where it is there already)."""
    import torch

    current = next(model.parameters()).device
    if current == torch.device(device) or (current.type == "cuda" and device == "cuda"):
        return model
    return model.to(device)
