"""The batched forward of a Llama model over a paged KV cache, batch-invariant on the CPU.

One call computes a step: the new tokens of every scheduled sequence as the rows of one matrix
(decodes one row each, prompt chunks many), so each weight matrix is read once per step for all of
them. Each row's result is the same bits whatever else is in the step (see
:mod:`.attention` for why and how attention achieves it); the rest:

- matrix products take two or more rows (a single row is doubled: a one-row product takes another
  kernel). In float32 the weights are kept transposed and contiguous (``x @ W^T`` with ``W^T``
  row-major): measured, MKL then gives every row count from 2 up the same bits per row, where
  ``F.linear`` on the stored layout has three row-count classes. Other dtypes (fp16 / bf16) take
  ``F.linear`` on the model's own weights (no copy), which measured invariant from two rows;
- float32 weights are copied once at start (fused: q, k and v in one product, gate and up in one),
  and the MLP's intermediate width is padded with zero columns to a multiple of 32, so SiLU's
  vectorised loop has no scalar tail (the scalar ``exp`` differs from the vector one in the last bit,
  and which elements fall in the tail depends on the row count);
- RoPE comes from one table of every position (a position's cos/sin never depends on the chunk);
- RMSNorm is ``F.rms_norm`` (a per-row reduction of fixed length).

:func:`batch_invariant` checks the property on the model's own weights (its first layer) at start.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from action_runtime.batching.attention import AttentionGroup, attend, build_group
from action_runtime.batching.scheduler import Chunk

log = logging.getLogger(__name__)

#: the MLP's intermediate width is padded to a multiple of this (two AVX-512 float vectors)
_VECTOR_ALIGN = 32

Projection = tuple[torch.Tensor, torch.Tensor | None]


#: matrix products take at least this many rows (fewer would take other kernels): the first row repeated
MIN_ROWS = 3


def _padded(x: torch.Tensor) -> torch.Tensor:
    n = x.shape[0]
    return x if n >= MIN_ROWS else torch.cat((x, x[:1].expand(MIN_ROWS - n, *x.shape[1:])))


def _project(x: torch.Tensor, weight: Projection, transposed: bool) -> torch.Tensor:
    w, b = weight
    if transposed:
        y = torch.mm(x, w)
        return y if b is None else y + b
    return F.linear(x, w, b)


@dataclass(frozen=True)
class _Layer:
    input_norm: torch.Tensor
    input_eps: float
    post_norm: torch.Tensor
    post_eps: float
    qkv: list[Projection]  # one fused (transposed) or three (q, k, v)
    o: Projection
    gate_up: list[Projection]  # one fused (transposed) or two (gate, up)
    down: Projection


def _pad_columns(w: torch.Tensor, width: int) -> torch.Tensor:
    return w if w.shape[1] == width else torch.cat((w, w.new_zeros(w.shape[0], width - w.shape[1])), dim=1)


def _bias(*linears: Any) -> torch.Tensor | None:
    biases = [lin.bias for lin in linears]
    if all(b is None for b in biases):
        return None
    return torch.cat([b if b is not None else lin.weight.new_zeros(lin.weight.shape[0])
                      for b, lin in zip(biases, linears, strict=True)])


def _padded_bias(linear: Any, width: int) -> torch.Tensor:
    bias = linear.bias if linear.bias is not None else linear.weight.new_zeros(linear.weight.shape[0])
    return F.pad(bias, (0, width - bias.numel()))


def _transposed_layer(layer: Any, intermediate: int) -> _Layer:
    attn, mlp = layer.self_attn, layer.mlp
    qkv = torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]).t().contiguous()
    gate = _pad_columns(mlp.gate_proj.weight.t(), intermediate)
    up = _pad_columns(mlp.up_proj.weight.t(), intermediate)
    gate_up_bias = None
    if mlp.gate_proj.bias is not None or mlp.up_proj.bias is not None:
        gate_up_bias = torch.cat((_padded_bias(mlp.gate_proj, intermediate), _padded_bias(mlp.up_proj, intermediate)))
    down = mlp.down_proj.weight.t()
    down = torch.cat((down, down.new_zeros(intermediate - down.shape[0], down.shape[1]))).contiguous()
    return _Layer(
        input_norm=layer.input_layernorm.weight, input_eps=float(layer.input_layernorm.variance_epsilon),
        post_norm=layer.post_attention_layernorm.weight,
        post_eps=float(layer.post_attention_layernorm.variance_epsilon),
        qkv=[(qkv, _bias(attn.q_proj, attn.k_proj, attn.v_proj))],
        o=(attn.o_proj.weight.t().contiguous(), attn.o_proj.bias),
        gate_up=[(torch.cat((gate, up), dim=1).contiguous(), gate_up_bias)],
        down=(down, mlp.down_proj.bias),
    )


def _direct_layer(layer: Any) -> _Layer:
    attn, mlp = layer.self_attn, layer.mlp

    def wb(linear: Any) -> Projection:
        return linear.weight, linear.bias

    return _Layer(
        input_norm=layer.input_layernorm.weight, input_eps=float(layer.input_layernorm.variance_epsilon),
        post_norm=layer.post_attention_layernorm.weight,
        post_eps=float(layer.post_attention_layernorm.variance_epsilon),
        qkv=[wb(attn.q_proj), wb(attn.k_proj), wb(attn.v_proj)], o=wb(attn.o_proj),
        gate_up=[wb(mlp.gate_proj), wb(mlp.up_proj)], down=wb(mlp.down_proj),
    )


def kv_bytes_per_token(model: Any) -> int:
    """Bytes of K and V of every layer for one position of ``model``."""
    config = model.config
    heads = int(config.num_attention_heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    itemsize = next(model.parameters()).element_size()
    return int(config.num_hidden_layers) * 2 * kv_heads * head_dim * itemsize


@dataclass(frozen=True)
class StepLayout:
    """A step's rows: token ids and positions, where each row's K and V go, the attention groups, and
    which rows' logits are wanted (``sampled`` chunks, in order)."""

    ids: torch.Tensor
    positions: torch.Tensor
    slots: torch.Tensor
    groups: list[AttentionGroup]
    sample_rows: torch.Tensor
    sampled: list[Chunk]
    rows: int


class PagedLlama:
    """The step forward of a ``LlamaForCausalLM`` (see the module docstring) and its KV pool."""

    def __init__(self, model: Any, num_blocks: int, block_size: int, layers_used: int | None = None) -> None:
        inner, config = model.model, model.config
        self.embed = inner.embed_tokens.weight
        self.device, self.dtype = self.embed.device, self.embed.dtype
        self.hidden = int(config.hidden_size)
        self.norm = (inner.norm.weight, float(inner.norm.variance_epsilon))
        first = inner.layers[0].self_attn
        self.head_dim = int(first.head_dim)
        self.heads = int(config.num_attention_heads)
        self.kv_heads = int(getattr(config, "num_key_value_heads", None) or self.heads)
        self.scaling = float(first.scaling)
        self.block_size = block_size
        self.num_blocks = num_blocks
        #: float32 weights transposed (copied); other dtypes used in place
        self.transposed = self.dtype == torch.float32
        layers = list(inner.layers)[: layers_used or int(config.num_hidden_layers)]
        width = int(config.intermediate_size)
        self.intermediate = -(-width // _VECTOR_ALIGN) * _VECTOR_ALIGN if self.transposed else width
        with torch.no_grad():
            self.layers = [_transposed_layer(layer, self.intermediate) if self.transposed else _direct_layer(layer)
                           for layer in layers]
            head = model.lm_head
            self.lm_head: Projection = ((head.weight.t().contiguous(), head.bias) if self.transposed
                                        else (head.weight, head.bias))
            self.cos, self.signed_sin = self._rotary_table(inner.rotary_emb, int(config.max_position_embeddings))
        self.pool = torch.empty(len(layers), 2, num_blocks * self.kv_heads, block_size * self.head_dim,
                                dtype=self.dtype, device=self.device)
        self.clear_blocks([0])
        self._heads = torch.arange(self.kv_heads, dtype=torch.long, device=self.device)

    def _rotary_table(self, rotary: Any, context: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``LlamaRotaryEmbedding`` (default RoPE) for every position, once; sin signed so that
        ``x * cos + roll(x) * signed_sin`` is ``x * cos + rotate_half(x) * sin`` (negation is exact)."""
        positions = torch.arange(context, device=self.device).float()
        freqs = positions[:, None] * rotary.inv_freq.to(device=self.device, dtype=torch.float)[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        cos = (emb.cos() * rotary.attention_scaling).to(self.dtype)
        sin = (emb.sin() * rotary.attention_scaling).to(self.dtype)
        half = sin.shape[-1] // 2
        return cos, torch.cat((-sin[:, :half], sin[:, half:]), dim=-1)

    def clear_blocks(self, blocks: list[int]) -> None:
        """Zero ``blocks`` in every layer: a block's unwritten positions are masked, and weigh 0 only
        while they hold finite values (0 * NaN is NaN)."""
        if blocks:
            ids = torch.tensor(blocks, dtype=torch.long, device=self.device)
            rows = (ids[:, None] * self.kv_heads + torch.arange(self.kv_heads, device=self.device)).reshape(-1)
            self.pool.index_fill_(2, rows, 0)

    # --- a step's layout ---------------------------------------------------------------
    def layout(self, chunks: list[Chunk]) -> StepLayout:
        """Rows in this order: every one-token chunk (decodes, attended as one group), then each longer chunk."""
        ordered = [c for c in chunks if c.length == 1] + [c for c in chunks if c.length > 1]
        size = self.block_size
        ids: list[int] = []
        positions: list[int] = []
        blocks: list[int] = []
        sample_rows: list[int] = []
        sampled: list[Chunk] = []
        for chunk in ordered:
            end = chunk.start + chunk.length
            ids.extend(chunk.seq.tokens[chunk.start:end])
            span = range(chunk.start, end)
            positions.extend(span)
            table = chunk.seq.blocks
            blocks.extend(table[p // size] for p in span)
            if chunk.samples:
                sample_rows.append(len(ids) - 1)
                sampled.append(chunk)
        device = self.device
        pos = torch.tensor(positions, dtype=torch.long, device=device)
        blk = torch.tensor(blocks, dtype=torch.long, device=device)
        slots = ((blk[:, None] * self.kv_heads + self._heads[None, :]) * size + (pos % size)[:, None]).reshape(-1)
        return StepLayout(
            ids=torch.tensor(ids, dtype=torch.long, device=device), positions=pos, slots=slots,
            groups=self._groups(ordered), sample_rows=torch.tensor(sample_rows, dtype=torch.long, device=device),
            sampled=sampled, rows=len(ids),
        )

    def _groups(self, ordered: list[Chunk]) -> list[AttentionGroup]:
        per_kv = self.heads // self.kv_heads
        singles = [c for c in ordered if c.length == 1]
        groups = []
        if singles:
            groups.append(build_group(0, [c.seq.blocks for c in singles], [[c.start] for c in singles],
                                      self.kv_heads, per_kv, self.block_size, self.device))
        first = len(singles)
        for chunk in ordered[len(singles):]:
            groups.append(build_group(first, [chunk.seq.blocks], [list(range(chunk.start, chunk.start + chunk.length))],
                                      self.kv_heads, per_kv, self.block_size, self.device))
            first += chunk.length
        return groups

    # --- the forward -------------------------------------------------------------------
    def forward(self, layout: StepLayout) -> torch.Tensor | None:
        """Writes every row's K and V into the pool; returns the logits of the ``sampled`` chunks'
        last rows (``None`` when no chunk samples). Call under ``torch.inference_mode()``."""
        ids, positions = layout.ids, layout.positions
        if layout.rows < MIN_ROWS:
            ids, positions = _padded(ids), _padded(positions)
        hidden = F.embedding(ids, self.embed)
        cos = self.cos.index_select(0, positions)[:, None, :]
        sin = self.signed_sin.index_select(0, positions)[:, None, :]
        for layer, kv in zip(self.layers, self.pool, strict=True):
            hidden = self._layer(layer, kv, hidden, cos, sin, layout)
        if not layout.sampled:
            return None
        last = hidden.index_select(0, layout.sample_rows)
        n = last.shape[0]
        last = F.rms_norm(_padded(last), (self.hidden,), self.norm[0], self.norm[1])
        return _project(last, self.lm_head, self.transposed)[:n]

    def _qkv(self, layer: _Layer, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Rotated queries ``(rows, heads, d)``, rotated keys and values ``(rows, kv_heads, d)``."""
        rows, d, half = x.shape[0], self.head_dim, self.head_dim // 2
        if self.transposed:  # one product; queries and keys rotated together
            qkv = _project(x, layer.qkv[0], True)
            split = (self.heads + self.kv_heads) * d
            qk = qkv[:, :split].view(rows, -1, d)
            qk = qk * cos + qk.roll(half, dims=-1) * sin
            return qk[:, : self.heads], qk[:, self.heads:], qkv[:, split:].view(rows, self.kv_heads, d)
        q = F.linear(x, *layer.qkv[0]).view(rows, self.heads, d)
        k = F.linear(x, *layer.qkv[1]).view(rows, self.kv_heads, d)
        v = F.linear(x, *layer.qkv[2]).view(rows, self.kv_heads, d)
        q = q * cos + q.roll(half, dims=-1) * sin
        k = k * cos + k.roll(half, dims=-1) * sin
        return q, k, v

    def _layer(self, layer: _Layer, kv: torch.Tensor, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
               layout: StepLayout) -> torch.Tensor:
        rows = layout.rows
        x = F.rms_norm(hidden, (self.hidden,), layer.input_norm, layer.input_eps)
        q, k, v = self._qkv(layer, x, cos, sin)
        new = torch.stack((k[:rows], v[:rows])).view(2, rows * self.kv_heads, self.head_dim)
        kv.view(2, -1, self.head_dim).index_copy_(1, layout.slots, new)
        parts = [attend(g, q[g.first: g.first + g.seqs * g.rows], kv, self.block_size, self.scaling)
                 for g in layout.groups]
        attn = parts[0] if len(parts) == 1 else torch.cat(parts)
        attn = _padded(attn).to(self.dtype)
        hidden = hidden + _project(attn, layer.o, self.transposed)
        x = F.rms_norm(hidden, (self.hidden,), layer.post_norm, layer.post_eps)
        if self.transposed:
            gate_up = _project(x, layer.gate_up[0], True)
            gate, up = gate_up[:, : self.intermediate], gate_up[:, self.intermediate:]
        else:
            gate, up = F.linear(x, *layer.gate_up[0]), F.linear(x, *layer.gate_up[1])
        return hidden + _project(F.silu(gate) * up, layer.down, self.transposed)

    # --- the loop's interface (.loop.StepModel) ---------------------------------------
    def run(self, chunks: list[Chunk], new_blocks: list[int]) -> tuple[list[Chunk], torch.Tensor | None]:
        self.clear_blocks(new_blocks)
        layout = self.layout(chunks)
        return layout.sampled, self.forward(layout)

    def release(self, seq: Any) -> None:
        """Nothing is kept per sequence: its blocks are the scheduler's."""
