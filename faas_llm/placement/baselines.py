"""Blind baselines: policies that place without the startup-time cost model (pure).

They still report the estimate of what their choice costs (the same cost model as ``locality``), so a
simulator can compare them.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from faas_llm.placement.model import Decision, NodeView, PlacementRequest, load_decision, startable_nodes


@dataclass
class RandomPolicy:
    """A seeded random node among those that can start an instance."""

    name: str = "random"
    seed: int = 0
    rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def choose(self, request: PlacementRequest, nodes: Sequence[NodeView]) -> Decision | None:
        startable = startable_nodes(request, nodes)
        return load_decision(request, self.rng.choice(startable)) if startable else None


@dataclass
class RoundRobinPolicy:
    """The next startable node by id, in turn (the turn advances on every placement)."""

    name: str = "round-robin"
    turn: int = 0

    def choose(self, request: PlacementRequest, nodes: Sequence[NodeView]) -> Decision | None:
        startable = startable_nodes(request, nodes)
        if not startable:
            return None
        node = startable[self.turn % len(startable)]
        self.turn += 1
        return load_decision(request, node)


def stable_hash(text: str) -> int:
    """A hash that is the same in every process (Python's ``hash`` is salted)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


@dataclass
class HashHomePolicy:
    """OpenWhisk's home invoker: hash(namespace/action) -> home; step to the next node when full."""

    name: str = "hash"

    def choose(self, request: PlacementRequest, nodes: Sequence[NodeView]) -> Decision | None:
        ordered = sorted(nodes, key=lambda n: n.node)
        if not ordered:
            return None
        home = stable_hash(request.key) % len(ordered)
        for step in range(len(ordered)):
            node = ordered[(home + step) % len(ordered)]
            if node.can_start(request.memory_mb):
                return load_decision(request, node)
        return None


@dataclass
class LeastLoadedPolicy:
    """The node with the most free slots (then the shortest load queue, then the id)."""

    name: str = "least-loaded"

    def choose(self, request: PlacementRequest, nodes: Sequence[NodeView]) -> Decision | None:
        startable = startable_nodes(request, nodes)
        if not startable:
            return None
        node = min(startable, key=lambda n: (-n.free_slots, n.queue_seconds(), n.node))
        return load_decision(request, node)
