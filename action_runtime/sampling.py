"""Choosing the next token: greedy, or temperature / top-p sampling that is reproducible per step.

Pure functions of (logits, parameters, seed, step). Token ``i`` of a sampled run is drawn from a
generator seeded with :func:`step_seed` ``(seed, i)``, so a run's whole sampling state is its seed
and the number of tokens made so far: a run resumed on another instance draws the same tokens.
Sampling happens on the CPU in float32, so a GPU run and a CPU run draw alike.
"""

from __future__ import annotations

import secrets

import torch

from faas_llm.genparams import SEED_BITS, SamplingParams

_MASK = (1 << SEED_BITS) - 1
_GOLDEN = 0x9E3779B97F4A7C15


def new_seed() -> int:
    """A fresh seed for a run that gave none (reported in its state, so it can still be resumed)."""
    return secrets.randbits(SEED_BITS)


def step_seed(seed: int, step: int) -> int:
    """The seed of the generator that draws token ``step`` (a splitmix64 mix of seed and step)."""
    z = (seed + (step + 1) * _GOLDEN) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (z ^ (z >> 31)) & _MASK


def top_p_filter(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Zero every token outside the smallest set whose mass reaches ``top_p`` (the top token always stays)."""
    if top_p >= 1.0:
        return probs
    sorted_probs, order = torch.sort(probs, descending=True)
    before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
    sorted_probs = torch.where(before < top_p, sorted_probs, torch.zeros_like(sorted_probs))
    return torch.zeros_like(probs).scatter(-1, order, sorted_probs)


def choose_token(logits: torch.Tensor, sampling: SamplingParams, seed: int, step: int) -> int:
    """The next token from a 1-D tensor of logits over the vocabulary."""
    if sampling.greedy:
        return int(torch.argmax(logits).item())
    scores = logits.detach().to("cpu", torch.float32) / sampling.temperature
    probs = top_p_filter(torch.softmax(scores, dim=-1), sampling.top_p)
    generator = torch.Generator(device="cpu").manual_seed(step_seed(seed, step))
    return int(torch.multinomial(probs, 1, generator=generator).item())
