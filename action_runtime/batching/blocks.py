"""The KV cache's blocks: fixed-size pages of ``block_size`` token positions (pure bookkeeping).

A sequence holds a list of block ids (its block table); position ``p`` of the sequence lives in
block ``table[p // block_size]`` at offset ``p % block_size``. Block 0 is never handed out: it stays
all zeros and pads the block tables of shorter sequences in a batch (see :mod:`.paged`).
Sizing: :func:`blocks_for_budget` turns the per-container memory budget into a block count.
"""

from __future__ import annotations

from collections import deque

#: the all-zero block that pads block tables; never allocated
NULL_BLOCK = 0


def blocks_for(tokens: int, block_size: int) -> int:
    """Blocks that hold ``tokens`` positions."""
    return -(-max(0, tokens) // block_size)


def blocks_for_budget(budget_bytes: int, bytes_per_token: int, block_size: int) -> int:
    """Blocks (the null block included) that fit in ``budget_bytes`` at ``bytes_per_token`` (K and V of
    every layer for one position); at least two, so one block can be handed out."""
    per_block = max(1, bytes_per_token * block_size)
    return max(2, budget_bytes // per_block)


class BlockPool:
    """Free and used blocks. Not thread-safe: only the step loop touches it."""

    def __init__(self, num_blocks: int, block_size: int) -> None:
        if num_blocks < 2:
            raise ValueError("a block pool needs at least two blocks (one is the null block)")
        if block_size < 1:
            raise ValueError("block_size must be positive")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self._free: deque[int] = deque(range(1, num_blocks))

    @property
    def capacity_tokens(self) -> int:
        """Positions the pool holds when one sequence has every block."""
        return (self.num_blocks - 1) * self.block_size

    @property
    def free(self) -> int:
        return len(self._free)

    def can_allocate(self, n: int) -> bool:
        return n <= len(self._free)

    def allocate(self, n: int) -> list[int]:
        """``n`` free blocks (lowest ids first: a freed block is reused soon, while its pages are warm)."""
        if n > len(self._free):
            raise MemoryError(f"{n} blocks asked for, {len(self._free)} free")
        return [self._free.popleft() for _ in range(n)]

    def release(self, blocks: list[int]) -> None:
        for block in reversed(blocks):
            self._free.appendleft(block)
        blocks.clear()

    def extra_blocks(self, table: list[int], tokens: int) -> int:
        """Blocks a sequence with block table ``table`` lacks to hold ``tokens`` positions."""
        return max(0, blocks_for(tokens, self.block_size) - len(table))

    def grow(self, table: list[int], tokens: int) -> list[int]:
        """Extend ``table`` in place to hold ``tokens`` positions; returns the new blocks."""
        new = self.allocate(self.extra_blocks(table, tokens))
        table.extend(new)
        return new
