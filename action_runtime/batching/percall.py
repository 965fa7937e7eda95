"""The step forward for any other causal LM: one call of the model's own forward per sequence in a step.

Architectures without a batch-invariant forward (:mod:`.paged` serves Llama) still get everything the
engine gives (admission, the memory budget, streaming, exports, interleaved decoding), but a step runs
its sequences one after another, each on its own ``transformers`` cache: each sequence's tokens are
then exactly what it would make alone. The blocks are only counted (they size the budget): the cache
lives in ``seq.cache``.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

from action_runtime.batching.scheduler import Chunk
from action_runtime.batching.sequence import Sequence


def new_cache(config: Any) -> Any:
    from transformers import DynamicCache

    try:
        return DynamicCache(config=config)
    except TypeError:  # transformers < 4.56 takes no config
        return DynamicCache()


class PerCallForward:
    """See the module docstring."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.device = next(model.parameters()).device
        accepted = inspect.signature(model.forward).parameters
        # transformers 5 renamed past_key_values to cache; accept both generations of the API.
        self._cache_arg = "cache" if "cache" in accepted else "past_key_values"
        self._keep_last_logits = "logits_to_keep" in accepted

    def forward(self, ids: list[int], cache: Any) -> torch.Tensor:
        """The last position's logits after ``ids`` (appended to ``cache``)."""
        kwargs: dict[str, Any] = {self._cache_arg: cache, "use_cache": True}
        if self._keep_last_logits:
            kwargs["logits_to_keep"] = 1
        out = self.model(input_ids=torch.tensor([ids], device=self.device), **kwargs)
        return out.logits[0, -1]

    def run(self, chunks: list[Chunk], new_blocks: list[int]) -> tuple[list[Chunk], torch.Tensor | None]:
        sampled: list[Chunk] = []
        rows: list[torch.Tensor] = []
        for chunk in chunks:
            seq = chunk.seq
            if seq.cache is None:
                seq.cache = new_cache(self.model.config)
            held = seq.cache.get_seq_length()
            if held > chunk.start:  # an adopted session: its last token is computed again
                seq.cache.crop(chunk.start - held)  # (a negative count: that many removed, transformers 5)
            logits = self.forward(seq.tokens[chunk.start:chunk.start + chunk.length], seq.cache)
            if chunk.samples:
                sampled.append(chunk)
                rows.append(logits)
        return sampled, torch.stack(rows) if rows else None

    def release(self, seq: Sequence) -> None:
        seq.cache = None
