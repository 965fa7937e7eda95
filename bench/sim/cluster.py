"""Cluster state of the simulator: nodes (caches, load queue, GPU slots) and model instances."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from bench.sim.cache import LRUCache
from bench.sim.costs import ClusterSpec
from bench.sim.workload import Request
from faas_llm.pool_policy import ContainerView
from faas_llm.types import ContainerState, LoadTier


class InstState(str, Enum):
    STARTING = "starting"  # loading its model to serve the model's queue
    MIGRATING_IN = "migrating_in"  # loading a victim's model, then resuming its inference
    BUSY = "busy"
    IDLE = "idle"
    REMOVED = "removed"


_POOL_STATE = {
    InstState.STARTING: ContainerState.STARTING,
    InstState.MIGRATING_IN: ContainerState.STARTING,
    InstState.BUSY: ContainerState.BUSY,
    InstState.IDLE: ContainerState.IDLE,
    InstState.REMOVED: ContainerState.REMOVING,
}


@dataclass
class Instance:
    id: int
    model: int
    node: int
    memory_mb: int
    state: InstState
    tier: LoadTier
    #: not yet served a request (its first one is credited to ``tier``)
    fresh: bool = True
    last_used: float = 0.0
    run_start: float = 0.0
    run_end: float = 0.0
    request: Request | None = None
    #: a migration source, or a run waited for (``held``): when it leaves, this model's reserved load takes
    #: its slot
    evict_for: int | None = None
    held: bool = False
    #: a start was held for its run once (a run is waited for at most once, as in the invoker)
    waited: bool = False
    #: a migration destination: the source instance it takes over, and its resume seconds
    takes_over: int | None = None
    resume_s: float = 0.0
    #: when a starting instance is loaded, as computed at its start (queue ahead + size / bandwidth: what the
    #: placement estimated); with ``ClusterSpec.agent_loads`` only the boot's end (the load is decided later)
    ready_at: float = 0.0
    #: holds a lease on its checkpoint in the node's DRAM tier (``ClusterSpec.dram_lease_while_live``)
    leased: bool = False
    #: joined another start's load of its model (single flight): holds no pin of its own
    joined: bool = False

    @property
    def occupies(self) -> bool:
        """Holds its slot and memory (idle instances are reclaimable, as in the real pool)."""
        return self.state in (InstState.STARTING, InstState.MIGRATING_IN, InstState.BUSY)

    def container_view(self) -> ContainerView:
        return ContainerView(
            id=str(self.id), state=_POOL_STATE[self.state], namespace="bench", action=str(self.model),
            memory_mb=self.memory_mb, active=1 if self.state is InstState.BUSY else 0, last_used=self.last_used,
        )


@dataclass
class Node:
    index: int
    name: str
    dram: LRUCache
    ssd: LRUCache
    #: when the node's SSD read queue drains (every load, in single-loader mode)
    loader_free_at: float = 0.0
    #: when the node's network fetch queue (registry loads) drains
    fetch_free_at: float = 0.0
    instances: dict[int, Instance] = field(default_factory=dict)
    #: the cache agent's loads in flight (``ClusterSpec.agent_loads``): model index -> (end, tier)
    flights: dict[int, tuple[float, LoadTier]] = field(default_factory=dict)
    occupied_slots: int = 0
    occupied_mb: int = 0

    @classmethod
    def build(cls, index: int, name: str, spec: ClusterSpec) -> Node:
        return cls(index, name, LRUCache(spec.dram_bytes), LRUCache(spec.ssd_bytes))

    def fastest_tier(self, model_name: str) -> LoadTier:
        if model_name in self.dram:
            return LoadTier.DRAM
        if model_name in self.ssd:
            return LoadTier.SSD
        return LoadTier.REGISTRY
