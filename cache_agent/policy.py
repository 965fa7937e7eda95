"""Pure policies of the cache agent: the DRAM pool's allocator, LRU victim choice for both
tiers (never a checkpoint in use), and lease expiry. Data in, decision out; no I/O.

The DRAM pool is one segment; a checkpoint occupies one contiguous, aligned extent of it.
Free space is a sorted tuple of ``(offset, nbytes)`` extents with no two adjacent.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

Extents = tuple[tuple[int, int], ...]


def align_up(value: int, alignment: int) -> int:
    return (value + alignment - 1) // alignment * alignment


def allocate(free: Extents, nbytes: int, alignment: int) -> tuple[int, Extents] | None:
    """First fit: an ``alignment``-aligned offset for ``nbytes`` and the free list left, or None."""
    if nbytes <= 0:
        raise ValueError("nbytes must be > 0")
    for i, (start, size) in enumerate(free):
        offset = align_up(start, alignment)
        end = start + size
        if offset + nbytes <= end:
            rest = [(start, offset - start)] if offset > start else []
            if offset + nbytes < end:
                rest.append((offset + nbytes, end - offset - nbytes))
            return offset, (*free[:i], *rest, *free[i + 1:])
    return None


def release(free: Extents, offset: int, nbytes: int) -> Extents:
    """Give ``[offset, offset+nbytes)`` back, merging with its neighbours."""
    if nbytes <= 0:
        raise ValueError("nbytes must be > 0")
    for start, size in free:
        if offset < start + size and start < offset + nbytes:
            raise ValueError(f"extent [{offset}, {offset + nbytes}) overlaps free extent [{start}, {start + size})")
    merged: list[tuple[int, int]] = []
    for start, size in sorted((*free, (offset, nbytes))):
        if merged and merged[-1][0] + merged[-1][1] == start:
            merged[-1] = (merged[-1][0], merged[-1][1] + size)
        else:
            merged.append((start, size))
    return tuple(merged)


def free_bytes(free: Extents) -> int:
    return sum(size for _, size in free)


@dataclass(frozen=True)
class Resident:
    """A checkpoint held in a tier, as the eviction policy sees it."""

    key: str
    nbytes: int
    last_used: float
    in_use: bool
    offset: int = 0


def lru_order(entries: Iterable[Resident]) -> list[Resident]:
    """Evictable entries (not in use), least recently used first (ties: by key, for determinism)."""
    return sorted((e for e in entries if not e.in_use), key=lambda e: (e.last_used, e.key))


def choose_dram_victims(entries: Iterable[Resident], free: Extents, nbytes: int, alignment: int) -> list[str] | None:
    """The fewest least-recently-used, not-in-use checkpoints to evict (in LRU order) so that
    ``nbytes`` fit in one contiguous extent; [] if they fit already; None if they cannot fit
    even with every evictable checkpoint gone."""
    if allocate(free, nbytes, alignment) is not None:
        return []
    victims: list[str] = []
    for entry in lru_order(entries):
        free = release(free, entry.offset, entry.nbytes)
        victims.append(entry.key)
        if allocate(free, nbytes, alignment) is not None:
            return victims
    return None


def choose_ssd_victims(entries: Iterable[Resident], capacity: int, used: int, nbytes: int) -> list[str] | None:
    """The least-recently-used, not-in-use entries to delete so that ``nbytes`` more fit in
    ``capacity`` (files, so only the byte count matters); None if impossible."""
    if nbytes > capacity:
        return None
    victims: list[str] = []
    for entry in lru_order(entries):
        if used + nbytes <= capacity:
            break
        used -= entry.nbytes
        victims.append(entry.key)
    return victims if used + nbytes <= capacity else None


def expired_leases(deadlines: Mapping[str, float], now: float) -> list[str]:
    """Lease ids whose deadline has passed."""
    return sorted(lease for lease, deadline in deadlines.items() if deadline <= now)


def ema(previous: float, sample: float, weight: float = 0.3) -> float:
    """Exponential moving average of a measured bandwidth (the first sample is taken as is)."""
    if sample <= 0:
        return previous
    return sample if previous <= 0 else (1 - weight) * previous + weight * sample
