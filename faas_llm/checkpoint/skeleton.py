"""From tensors to a ready model: a skeleton without weight memory, then the tensors assigned.

The skeleton's *parameters* are created on the ``meta`` device (no memory, no random
initialisation), while its *buffers* are built for real on the CPU by the modules' own
constructors — so non-persistent buffers such as rotary ``inv_freq`` hold exactly the
values a normal construction gives. The checkpoint's tensors are then assigned
(``load_state_dict(assign=True)``: the parameters *are* the zero-copy views), tied weights
are re-tied, and anything still on ``meta`` means the checkpoint lacks a tensor.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from faas_llm.errors import CheckpointError

_meta_params = threading.local()
_patch_lock = threading.Lock()
_patch_users = 0
_original_register_parameter = nn.Module.register_parameter


def _register_parameter(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
    if param is not None and param.device.type != "meta" and getattr(_meta_params, "active", False):
        extra = dict(param.__dict__)
        param = type(param)(param.to("meta"), requires_grad=param.requires_grad)
        param.__dict__.update(extra)
    _original_register_parameter(module, name, param)


@contextlib.contextmanager
def parameters_on_meta() -> Iterator[None]:
    """While active in this thread, every registered parameter is replaced by a ``meta`` twin
    (buffers stay real). Other threads building modules at the same time are not affected."""
    global _patch_users
    with _patch_lock:
        if _patch_users == 0:
            nn.Module.register_parameter = _register_parameter  # type: ignore[method-assign,assignment]
        _patch_users += 1
    _meta_params.active = True
    try:
        yield
    finally:
        _meta_params.active = False
        with _patch_lock:
            _patch_users -= 1
            if _patch_users == 0:
                nn.Module.register_parameter = _original_register_parameter  # type: ignore[method-assign]


def load_config(config_dir: str | Path) -> Any:
    """The model's transformers config from ``config_dir/config.json`` (CheckpointError if absent/bad)."""
    from transformers import AutoConfig

    path = Path(config_dir) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{path}: missing (the checkpoint needs the model's config)")
    try:
        json.loads(path.read_text(encoding="utf-8"))
        return AutoConfig.from_pretrained(str(config_dir), local_files_only=True)
    except (ValueError, OSError, KeyError) as exc:
        raise CheckpointError(f"{path}: cannot read the model config: {exc}") from None


def build_skeleton(config_dir: str | Path) -> nn.Module:
    """The model of ``config_dir`` with its parameters on ``meta`` and real buffers (CPU)."""
    from transformers import AutoModelForCausalLM

    config = load_config(config_dir)
    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, None)
    kwargs: dict[str, Any] = {"dtype": dtype} if isinstance(dtype, torch.dtype) else {}
    with parameters_on_meta(), _no_weight_init():
        return AutoModelForCausalLM.from_config(config, **kwargs)


def _no_weight_init() -> contextlib.AbstractContextManager[Any]:
    """Skip transformers' weight initialisation (meta parameters would get nothing from it; the
    buffers it also (re)computes, e.g. rotary ``inv_freq``, were already built by the constructors)."""
    import importlib

    for module in ("transformers.initialization", "transformers.modeling_utils"):  # v5, then v4
        try:
            factory = getattr(importlib.import_module(module), "no_init_weights", None)
        except ImportError:
            continue
        if factory is not None:
            context: contextlib.AbstractContextManager[Any] = factory()
            return context
    return contextlib.nullcontext()


def assign_tensors(model: nn.Module, tensors: dict[str, torch.Tensor], *, where: str = "checkpoint",
                   device: str | torch.device = "cpu") -> nn.Module:
    """Assign ``tensors`` to ``model``'s parameters/buffers without copying, re-tie, finish on ``device``."""
    expected = model.state_dict(keep_vars=True)
    for name, tensor in tensors.items():
        target = expected.get(name)
        if target is not None and tuple(target.shape) != tuple(tensor.shape):
            raise CheckpointError(f"{where}: tensor {name!r} has shape {list(tensor.shape)}, "
                                  f"the model expects {list(target.shape)}")
    model.load_state_dict(tensors, strict=False, assign=True)
    tie_weights = getattr(model, "tie_weights", None)
    if callable(tie_weights):
        tie_weights()
    missing = [n for n, t in model.state_dict(keep_vars=True).items() if t.device.type == "meta"]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise CheckpointError(f"{where}: missing tensor(s) {shown}")
    if torch.device(device).type != "cpu":
        model.to(device)  # buffers built on the CPU follow the tensors (already on the device: no copy)
    model.eval()
    return model


def build_model(ckpt_dir: str | Path, tensors: dict[str, torch.Tensor], device: str | torch.device = "cpu",
                *, skeleton: nn.Module | None = None) -> nn.Module:
    """A ready ``nn.Module`` (eval mode) whose weights are ``tensors`` (not copied).

    ``ckpt_dir`` holds ``config.json``; ``skeleton`` (from :func:`build_skeleton`) skips
    building it again (the loader builds it while the reads are in flight)."""
    model = skeleton if skeleton is not None else build_skeleton(ckpt_dir)
    return assign_tensors(model, tensors, where=str(ckpt_dir), device=device)


def build_in_background(config_dir: Path) -> tuple[threading.Thread, list[nn.Module], list[BaseException]]:
    skeleton: list[nn.Module] = []
    failure: list[BaseException] = []

    def build() -> None:
        try:
            skeleton.append(build_skeleton(config_dir))
        except BaseException as exc:
            failure.append(exc)

    builder = threading.Thread(target=build, name="ckpt-skeleton", daemon=True)
    builder.start()
    return builder, skeleton, failure
