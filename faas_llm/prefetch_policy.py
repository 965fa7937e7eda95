"""Which checkpoints to keep where, ahead of demand (pure: data in, plan out).

Inputs: recent invocations per model (``counts``, summed over the last
``settings.prefetch_window_s`` from Redis by :mod:`worker.tasks.tick`), models pinned by
actions with ``min_instances > 0`` (``pinned``: model -> instances), and each live node's cache
contents. Rules:

* a model is *kept* when it was invoked at least ``min_invocations`` times in the window, or is
  pinned; it is wanted on ``ceil(count / invocations_per_replica)`` nodes, at least its pin,
  at most ``max_replicas`` and the number of nodes. Popular models are kept on more nodes;
* the ``dram_models`` most invoked kept models (and pinned ones) go to DRAM, the others to SSD;
* missing replicas go to the nodes that make them cheapest: a node holding the checkpoint on
  SSD first (a DRAM fill from local disk), then the most free space in the tier, then node id;
* everything else is *cold*: the policy stops refreshing it, and the cache agents' LRU ages
  it out as other checkpoints need the space (the agents never evict a checkpoint in use).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from faas_llm.errors import ConfigError

Tier = Literal["dram", "ssd"]


@dataclass(frozen=True)
class PolicyConfig:
    max_replicas: int = 3
    invocations_per_replica: int = 20
    min_invocations: int = 2
    dram_models: int = 2

    def __post_init__(self) -> None:
        if self.max_replicas < 0 or self.invocations_per_replica < 1 or self.min_invocations < 1 \
                or self.dram_models < 0:
            raise ConfigError(f"invalid prefetch policy config {self}")


@dataclass(frozen=True)
class NodeCache:
    """What a live node's cache agent holds."""

    node: str
    dram: frozenset[str] = frozenset()
    ssd: frozenset[str] = frozenset()
    dram_free_bytes: int = 0
    ssd_free_bytes: int = 0

    def holds(self, model: str, tier: Tier) -> bool:
        return model in self.dram if tier == "dram" else (model in self.ssd or model in self.dram)


@dataclass(frozen=True)
class Prefetch:
    model: str
    node: str
    tier: Tier


@dataclass(frozen=True)
class Plan:
    prefetches: tuple[Prefetch, ...]
    #: model -> (tier, replicas wanted)
    kept: dict[str, tuple[Tier, int]] = field(default_factory=dict)
    cold: tuple[str, ...] = ()


def replicas_wanted(count: int, pin: int, config: PolicyConfig, nodes: int) -> int:
    """How many nodes should hold a model invoked ``count`` times in the window (pinned to ``pin``)."""
    by_load = min(max(1, math.ceil(count / config.invocations_per_replica)), config.max_replicas) \
        if count >= config.min_invocations else 0
    return max(0, min(max(by_load, pin), nodes))


def plan_prefetch(counts: Mapping[str, int], nodes: Sequence[NodeCache], config: PolicyConfig | None = None,
                  pinned: Mapping[str, int] | None = None) -> Plan:
    """The prefetches that bring the cluster to the wanted placement (deterministic)."""
    config = config or PolicyConfig()
    pinned = pinned or {}
    models = sorted(set(counts) | set(pinned), key=lambda m: (-counts.get(m, 0), -pinned.get(m, 0), m))
    kept: dict[str, tuple[Tier, int]] = {}
    cold: list[str] = []
    dram_slots = config.dram_models
    for model in models:
        wanted = replicas_wanted(counts.get(model, 0), pinned.get(model, 0), config, len(nodes))
        if wanted <= 0:
            cold.append(model)
            continue
        tier: Tier = "ssd"
        if pinned.get(model, 0) > 0:
            tier = "dram"
        elif dram_slots > 0:
            tier = "dram"
            dram_slots -= 1
        kept[model] = (tier, wanted)
    out: list[Prefetch] = []
    for model, (tier, wanted) in kept.items():
        holders = [n for n in nodes if n.holds(model, tier)]
        missing = wanted - len(holders)
        if missing <= 0:
            continue
        candidates = [n for n in nodes if not n.holds(model, tier)]
        free = (lambda n: n.dram_free_bytes) if tier == "dram" else (lambda n: n.ssd_free_bytes)
        candidates.sort(key=lambda n: (0 if (tier == "dram" and model in n.ssd) else 1, -free(n), n.node))
        out.extend(Prefetch(model, n.node, tier) for n in candidates[:missing])
    return Plan(tuple(out), kept, tuple(sorted(cold)))
