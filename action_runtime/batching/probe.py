"""Whether the paged forward may serve a model, and whether it is batch-invariant on this machine.

:func:`unsupported` says why :class:`~.paged.PagedLlama` cannot compute a model's forward (anything but a
plain Llama: another architecture, RoPE scaling, hooks, quantised or replaced layers). :func:`batch_invariant`
runs the model's first layer (and its head) on one sequence alone and inside batches chunked differently,
and checks every logit of that sequence is the same bits: the kernels' choice depends on this machine
(its BLAS, its vector width, its thread count), so it is checked where the engine runs, not assumed.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from action_runtime.batching.blocks import BlockPool
from action_runtime.batching.paged import PagedLlama
from action_runtime.batching.scheduler import Chunk
from action_runtime.batching.sequence import Sequence
from faas_llm.genparams import SamplingParams

log = logging.getLogger(__name__)


def unsupported(model: Any) -> str | None:
    """Why the paged forward cannot serve ``model`` (``None``: it can)."""
    try:
        from transformers.models.llama.modeling_llama import LlamaForCausalLM, LlamaRMSNorm
    except ImportError:  # pragma: no cover - transformers without Llama
        return "no Llama in this transformers"
    if type(model) is not LlamaForCausalLM:
        return f"architecture {type(model).__name__}"
    config = model.config
    if (config.rope_parameters or {}).get("rope_type", "default") != "default":
        return "RoPE scaling"
    if config.hidden_act != "silu":
        return f"activation {config.hidden_act!r}"
    if not getattr(config, "is_causal", True):
        return "bidirectional attention"
    if getattr(config, "sliding_window", None):
        return "sliding-window attention"
    if len({p.device for p in model.parameters()}) != 1:
        return "parameters on several devices"
    for module in model.modules():
        if module._forward_hooks or module._forward_pre_hooks or hasattr(module, "_hf_hook"):
            return "module hooks (offloading, quantisation or adapters)"
        if "forward" in vars(module):
            return "a replaced forward"
        if isinstance(module, torch.nn.Linear) and type(module) is not torch.nn.Linear:
            return f"linear layer {type(module).__name__}"
        if isinstance(module, LlamaRMSNorm) and type(module) is not LlamaRMSNorm:
            return f"norm {type(module).__name__}"
    return None


_GREEDY = SamplingParams(temperature=0.0)


def _run_steps(forward: PagedLlama, steps: list[list[tuple[Sequence, int]]], target: Sequence,
               script: dict[int, list[int]]) -> list[torch.Tensor]:
    """Run ``steps`` (each: sequences and how many tokens of each; a sequence's tokens come from its
    ``script``, whatever its logits say); ``target``'s logits at each of its samples."""
    pool = BlockPool(forward.num_blocks, forward.block_size)
    seen: list[torch.Tensor] = []
    for step in steps:
        chunks = []
        new: list[int] = []
        for seq, n in step:
            while seq.to_compute < n:
                seq.tokens.append(script[seq.seq_id][len(seq.tokens)])
            new.extend(pool.grow(seq.blocks, seq.num_computed + n))
            chunks.append(Chunk(seq, seq.num_computed, n))
        sampled, logits = forward.run(chunks, new)
        for chunk in chunks:
            chunk.seq.num_computed += chunk.length
        for row, chunk in enumerate(sampled):
            if chunk.seq is target:
                assert logits is not None
                seen.append(logits[row].clone())
    return seen


def batch_invariant(model: Any, block_size: int) -> bool:
    """The probe (see the module docstring): a 37-token prompt and three decode steps alone, then the same
    inside batches of three with other chunkings of every prompt; every logit of it equal."""
    vocab = int(model.config.vocab_size)
    ids = [(7 * i + 3) % vocab for i in range(120)]
    script = {0: ids[:40], 1: ids[40:55], 2: ids[60:114]}
    prompts = {0: 37, 1: 9, 2: 50}

    def fresh() -> tuple[PagedLlama, list[Sequence]]:
        seqs = [Sequence(i, script[i][: prompts[i]], prompts[i], 8, _GREEDY) for i in range(3)]
        return PagedLlama(model, num_blocks=16, block_size=block_size, layers_used=1), seqs

    with torch.inference_mode():
        forward, (a, _, _) = fresh()
        alone = _run_steps(forward, [[(a, 37)], [(a, 1)], [(a, 1)], [(a, 1)]], a, script)
        forward, (a, b, c) = fresh()
        plan = [[(b, 9), (c, 20)], [(a, 16), (c, 30)], [(b, 1), (a, 21)], [(c, 1), (a, 1), (b, 1)],
                [(a, 1), (b, 1)], [(b, 1), (c, 1), (a, 1)]]
        batched = _run_steps(forward, plan, a, script)
    same = len(batched) == len(alone) == 4 and all(torch.equal(x, y) for x, y in zip(batched, alone, strict=True))
    if not same:
        log.warning("the paged forward is not batch-invariant on this machine (dtype %s)", forward.dtype)
    return same
