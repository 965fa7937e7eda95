"""Attention over the paged KV cache with a fixed reduction order: a row's result does not depend on
the batch it is in.

Why this form. A token's output must be the same bits whether it is decoded alone, in a batch of 8,
or recomputed inside a prompt chunk after a preemption or a migration (then a batched run is the
same run alone, token for token, and a resumed run continues exactly). Library kernels choose their
blocking from the matrix shapes, so the same row can be reduced in another order (measured on this
CPU: a matrix product with one row takes another path than with two or more; a product whose reduced
dimension grows by zero padding changes its blocking; fused attention kernels split keys by length).
So every reduction here has a length that does not depend on the batch:

- scores are ``K @ Q^T`` per sequence and KV head: the reduced dimension is ``head_dim``, the keys are
  the rows (padding only adds rows), the queries the columns (two or more: a single one is doubled);
- padded key positions (block table padding with the all-zero null block, and the unused tail of a
  sequence's last block) are masked to ``-inf`` before the softmax, so they weigh exactly 0;
- ``P @ V`` is reduced block by block (``block_size`` keys each, a fixed length), then the per-block
  partial sums are added over blocks in order; trailing all-zero blocks add exact zeros.

The padded length is always a whole number of blocks. Tests fuzz the invariance (``tests/action_runtime/
test_batch_invariance.py``); the engine checks it at start (:func:`.paged.batch_invariant`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class AttentionGroup:
    """Sequences attended together: ``seqs`` sequences of ``rows`` query rows each (decodes: many
    sequences of one row; a prompt chunk: one sequence of many rows), step rows ``first ..
    first + seqs * rows - 1``."""

    first: int
    seqs: int
    rows: int
    blocks: int
    """Blocks per sequence after padding (the longest table in the group)."""
    gather: torch.Tensor
    """``(seqs * kv_heads * blocks,)`` rows of the pool's ``(num_blocks * kv_heads, block_size * d)`` view."""
    valid: torch.Tensor
    """``(seqs, 1, rows * groups or 1, blocks * block_size)`` bool: key position visible to the query row."""


def build_group(first: int, tables: list[list[int]], query_positions: list[list[int]], kv_heads: int,
                q_per_kv: int, block_size: int, device: torch.device) -> AttentionGroup:
    """A group's gather indices and mask from its sequences' block tables and query positions."""
    seqs = len(tables)
    rows = len(query_positions[0])
    blocks = max(len(t) for t in tables)
    padded = [t + [0] * (blocks - len(t)) for t in tables]
    table = torch.tensor(padded, dtype=torch.long, device=device)  # (seqs, blocks)
    heads = torch.arange(kv_heads, dtype=torch.long, device=device)
    gather = (table[:, None, :] * kv_heads + heads[None, :, None]).reshape(-1)
    positions = torch.tensor(query_positions, dtype=torch.long, device=device)  # (seqs, rows)
    keys = torch.arange(blocks * block_size, dtype=torch.long, device=device)
    valid = keys[None, None, :] <= positions[:, :, None]  # (seqs, rows, keys)
    if rows > 1:  # one mask row per (query row, query head of the KV head), rows major
        valid = valid[:, :, None, :].expand(seqs, rows, q_per_kv, keys.numel()).reshape(seqs, rows * q_per_kv, -1)
    return AttentionGroup(first, seqs, rows, blocks, gather, valid[:, None])


def attend(group: AttentionGroup, q: torch.Tensor, kv: torch.Tensor, block_size: int, scaling: float
           ) -> torch.Tensor:
    """Attention output rows ``(seqs * rows, heads * head_dim)`` of the group's query rows.

    ``q``: the group's rows ``(seqs * rows, heads, head_dim)`` (already rotated); ``kv``: one layer's
    pool ``(2, num_blocks * kv_heads, block_size * head_dim)``. Computed in float32.
    """
    seqs, rows, blocks = group.seqs, group.rows, group.blocks
    heads, head_dim = q.shape[1], q.shape[2]
    kv_heads = group.gather.numel() // (seqs * blocks)
    per_kv = heads // kv_heads
    gathered = kv.index_select(1, group.gather)
    if gathered.dtype != torch.float32:
        gathered = gathered.float()
        q = q.float()
    keys = gathered[0].view(seqs * kv_heads, blocks * block_size, head_dim)
    values = gathered[1].view(seqs * kv_heads, blocks, block_size, head_dim)
    if rows == 1:  # (seqs, heads, d) -> per KV head its query heads
        query = q.reshape(seqs * kv_heads, per_kv, head_dim)
    else:  # one sequence: (rows, kv_heads, per_kv, d) -> (kv_heads, rows * per_kv, d)
        query = q.reshape(rows, kv_heads, per_kv, head_dim).transpose(0, 1).reshape(kv_heads, rows * per_kv, head_dim)
    width = query.shape[1]
    if width == 1:  # a product with one column takes another kernel: compute two, keep one
        query = torch.cat((query, query), dim=1)
    scores = torch.matmul(keys, query.transpose(1, 2)).transpose(1, 2)  # (seqs*kv, width', keys)
    scores = scores.view(seqs, kv_heads, query.shape[1], -1)
    scores = torch.where(group.valid, scores * scaling, float("-inf"))
    probs = torch.softmax(scores, dim=-1).view(seqs * kv_heads, query.shape[1], blocks, block_size)
    out = torch.matmul(probs.transpose(1, 2), values).sum(dim=1)  # (seqs*kv, width', d)
    if width == 1:
        out = out[:, :1]
    if rows == 1:
        return out.reshape(seqs, heads * head_dim)
    return out.view(kv_heads, rows, per_kv, head_dim).transpose(0, 1).reshape(rows, heads * head_dim)
