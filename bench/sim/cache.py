"""A checkpoint cache tier (DRAM or SSD) of one node: capacity in bytes, LRU eviction, pins."""

from __future__ import annotations

from collections import OrderedDict

from faas_llm.errors import ConfigError


class LRUCache:
    """Whole checkpoints by name; never evicts a pinned one (a load is reading it)."""

    def __init__(self, capacity_bytes: int) -> None:
        if capacity_bytes < 0:
            raise ConfigError(f"cache capacity must be >= 0, got {capacity_bytes}")
        self.capacity = capacity_bytes
        self.used = 0
        self._items: OrderedDict[str, int] = OrderedDict()  # least recently used first
        self._pins: dict[str, int] = {}
        self.evictions = 0

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __len__(self) -> int:
        return len(self._items)

    def names(self) -> list[str]:
        """Least recently used first."""
        return list(self._items)

    def touch(self, name: str) -> None:
        if name in self._items:
            self._items.move_to_end(name)

    def pin(self, name: str) -> None:
        if name not in self._items:
            raise ConfigError(f"cannot pin {name!r}: not cached")
        self._pins[name] = self._pins.get(name, 0) + 1

    def unpin(self, name: str) -> None:
        count = self._pins.get(name, 0)
        if count <= 0:
            raise ConfigError(f"{name!r} is not pinned")
        if count == 1:
            del self._pins[name]
        else:
            self._pins[name] = count - 1

    def insert(self, name: str, size: int) -> bool:
        """Cache ``name`` (most recently used), evicting unpinned LRU entries; False if it cannot fit."""
        if name in self._items:
            self._items.move_to_end(name)
            return True
        if size > self.capacity:
            return False
        victims: list[str] = []
        free = self.capacity - self.used
        for old, old_size in self._items.items():
            if free >= size:
                break
            if old in self._pins:
                continue
            victims.append(old)
            free += old_size
        if free < size:
            return False
        for old in victims:
            self.used -= self._items.pop(old)
            self.evictions += 1
        self._items[name] = size
        self.used += size
        return True
