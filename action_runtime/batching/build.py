"""Building a model's step loop from the settings: which forward, how many blocks, how big a batch.

The forward: :class:`~.paged.PagedLlama` for a model it supports (:func:`.probe.unsupported`) whose
batch invariance holds on this machine (:func:`.probe.batch_invariant`), else
:class:`~.percall.PerCallForward`. With ``batch_invariance`` ``require`` (``auto`` on a CPU) a paged forward
that fails the probe is not used: exactness (a batched run equals the run alone) is kept over throughput;
``off`` (``auto`` on a GPU, where library kernels are not batch-invariant) serves batched anyway.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

from action_runtime.batching.blocks import BlockPool, blocks_for, blocks_for_budget
from action_runtime.batching.loop import BatchLoop, StepModel
from action_runtime.batching.paged import PagedLlama, kv_bytes_per_token
from action_runtime.batching.percall import PerCallForward
from action_runtime.batching.probe import batch_invariant, unsupported
from action_runtime.batching.scheduler import Scheduler
from faas_llm.settings import Settings

log = logging.getLogger(__name__)

Invariance = Literal["auto", "require", "off"]


@dataclass(frozen=True)
class EngineConfig:
    """The batching engine's knobs (:meth:`from_settings` reads them from the ``runtime_*`` settings)."""

    block_tokens: int = 32
    kv_cache_bytes: int = 512 * 1024 * 1024
    max_batch: int = 256
    step_tokens: int = 64
    prefill_sessions: int = 4
    batch_invariance: Invariance = "auto"
    paged: bool | None = None
    """``None``: the paged forward where it serves; ``False``: always one model call per sequence."""

    @classmethod
    def from_settings(cls, settings: Settings) -> EngineConfig:
        return cls(block_tokens=settings.runtime_kv_block_tokens, kv_cache_bytes=settings.runtime_kv_cache_bytes,
                   max_batch=settings.runtime_max_batch, step_tokens=settings.runtime_step_tokens,
                   batch_invariance=settings.runtime_batch_invariance)


@dataclass(frozen=True)
class BuiltLoop:
    loop: BatchLoop
    kind: Literal["paged", "percall"]
    invariant: bool
    """A batched run is the same run alone, bit for bit (the paged forward passed the probe, or one call per
    sequence)."""
    num_blocks: int


def _num_blocks(config: EngineConfig, model: Any, context: int) -> int:
    """Blocks for the budget, and at least enough for one sequence of the whole context (else a request
    the model accepts could never be admitted)."""
    per_token = kv_bytes_per_token(model)
    wanted = blocks_for_budget(config.kv_cache_bytes, per_token, config.block_tokens)
    least = blocks_for(context, config.block_tokens) + 1
    if wanted < least:
        log.warning("runtime_kv_cache_bytes holds %d tokens, less than one context of %d: raised to that",
                    (wanted - 1) * config.block_tokens, context)
    return max(wanted, least)


def _use_paged(config: EngineConfig, model: Any) -> tuple[bool, bool]:
    """Whether the paged forward serves, and whether the engine is batch-invariant."""
    if config.paged is False:
        return False, True
    reason = unsupported(model)
    if reason is not None:
        log.info("one model call per sequence (no paged forward: %s)", reason)
        return False, True
    device = next(model.parameters()).device
    mode = config.batch_invariance
    if mode == "auto":
        mode = "require" if device.type == "cpu" else "off"
    invariant = batch_invariant(model, config.block_tokens)
    if not invariant and mode == "require":
        log.warning("one model call per sequence: the paged forward is not batch-invariant here")
        return False, True
    return True, invariant


def build_loop(model: Any, context: int, config: EngineConfig) -> BuiltLoop:
    num_blocks = _num_blocks(config, model, context)
    paged, invariant = _use_paged(config, model)
    forward: StepModel
    if paged:
        forward = PagedLlama(model, num_blocks, config.block_tokens)
        kind: Literal["paged", "percall"] = "paged"
    else:
        forward = PerCallForward(model)
        kind = "percall"
    pool = BlockPool(num_blocks, config.block_tokens)
    scheduler = Scheduler(pool, config.max_batch, config.step_tokens, config.prefill_sessions)
    log.info("batching engine: %s forward, %d blocks of %d tokens, at most %d sequences, %d tokens a step",
             kind, num_blocks, config.block_tokens, config.max_batch, config.step_tokens)
    return BuiltLoop(BatchLoop(forward, scheduler), kind, invariant, num_blocks)
