"""The cache agent's pure policies: allocator, LRU victims that are never in use, lease expiry."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cache_agent.policy import (
    Resident,
    allocate,
    choose_dram_victims,
    choose_ssd_victims,
    ema,
    expired_leases,
    free_bytes,
    lru_order,
    release,
)

A = 16


def test_allocate_first_fit_aligned_and_release_merges() -> None:
    free = ((0, 160),)
    a, free = allocate(free, 40, A) or pytest.fail("no room")
    assert a == 0 and free == ((40, 120),)
    b, free = allocate(free, 16, A) or pytest.fail("no room")
    assert b == 48  # aligned up from 40; the 8-byte gap stays free
    assert free == ((40, 8), (64, 96))
    assert allocate(free, 97, A) is None
    free = release(free, b, 16)
    free = release(free, a, 40)
    assert free == ((0, 160),)


def test_release_refuses_double_free() -> None:
    with pytest.raises(ValueError):
        release(((0, 32),), 16, 16)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 64), min_size=1, max_size=20), st.randoms(use_true_random=False))
def test_allocator_never_overlaps_and_conserves_bytes(sizes: list[int], rnd) -> None:  # type: ignore[no-untyped-def]
    capacity = 1024
    free: tuple[tuple[int, int], ...] = ((0, capacity),)
    live: list[tuple[int, int]] = []
    for size in sizes:
        placed = allocate(free, size, A)
        if placed is not None:
            offset, free = placed
            assert offset % A == 0
            assert all(offset + size <= o or o + s <= offset for o, s in live)
            live.append((offset, size))
        if live and rnd.random() < 0.4:
            offset, size = live.pop(rnd.randrange(len(live)))
            free = release(free, offset, size)
        assert free_bytes(free) + sum(s for _, s in live) == capacity
    for offset, size in live:
        free = release(free, offset, size)
    assert free == ((0, capacity),)


def test_dram_victim_is_the_least_recently_used_not_in_use() -> None:
    # three 32-byte checkpoints fill a 96-byte pool; "a" is oldest but leased
    entries = [
        Resident("a", 32, last_used=1.0, in_use=True, offset=0),
        Resident("b", 32, last_used=3.0, in_use=False, offset=32),
        Resident("c", 32, last_used=2.0, in_use=False, offset=64),
    ]
    assert choose_dram_victims(entries, (), 32, A) == ["c"]
    assert lru_order(entries) == [entries[2], entries[1]]


def test_dram_victims_until_contiguous_room() -> None:
    entries = [
        Resident("a", 32, 1.0, False, 0),
        Resident("b", 32, 2.0, True, 32),
        Resident("c", 32, 3.0, False, 64),
    ]
    # 64 contiguous bytes: evicting a and c leaves two 32-byte holes around the leased b: impossible
    assert choose_dram_victims(entries, (), 64, A) is None
    entries[1] = Resident("b", 32, 2.0, False, 32)
    assert choose_dram_victims(entries, (), 64, A) == ["a", "b"]
    assert choose_dram_victims(entries, ((96, 32),), 32, A) == []


def test_in_use_never_evicted_even_when_everything_is_in_use() -> None:
    entries = [Resident("a", 64, 1.0, True, 0)]
    assert choose_dram_victims(entries, (), 16, A) is None
    assert choose_ssd_victims(entries, 64, 64, 16) is None


def test_ssd_victims_by_bytes_in_lru_order() -> None:
    entries = [Resident("old", 40, 1.0, False), Resident("pinned", 40, 0.5, True), Resident("new", 40, 9.0, False)]
    assert choose_ssd_victims(entries, 120, 120, 30) == ["old"]
    assert choose_ssd_victims(entries, 120, 120, 80) == ["old", "new"]
    assert choose_ssd_victims(entries, 120, 120, 81) is None
    assert choose_ssd_victims(entries, 120, 40, 80) == []
    assert choose_ssd_victims([], 10, 0, 11) is None


def test_expired_leases_and_ema() -> None:
    assert expired_leases({"x": 5.0, "y": 10.0, "z": 4.0}, now=5.0) == ["x", "z"]
    assert expired_leases({}, now=1.0) == []
    assert ema(0.0, 100.0) == 100.0
    assert ema(100.0, 200.0, weight=0.5) == 150.0
    assert ema(100.0, 0.0) == 100.0
