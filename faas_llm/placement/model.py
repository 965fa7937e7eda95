"""What a placement policy knows and decides, and the cost model every policy shares (pure).

:class:`NodeView` is what a policy knows of one node for one model, :class:`PlacementRequest` the
instance to place, :class:`Decision` the answer. :func:`load_estimate` is the time to start a new
instance on a node (queue + runtime boot + size / bandwidth of the fastest tier holding the
checkpoint); the ``warm_wait*`` and ``starting_*`` functions estimate when an existing instance (busy,
or still starting) could serve.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from faas_llm.types import LoadTier

MB = 1_000_000
#: Bandwidths (bytes/s) assumed where a node has not measured one (0 means unknown).
DEFAULT_BANDWIDTH: Mapping[LoadTier, float] = {
    LoadTier.DRAM: 10_000 * MB,
    LoadTier.SSD: 1_000 * MB,
    LoadTier.REGISTRY: 200 * MB,
}
#: Order in which tiers win ties (faster first).
TIER_RANK = {LoadTier.WARM: 0, LoadTier.DRAM: 1, LoadTier.SSD: 2, LoadTier.REGISTRY: 3, LoadTier.LOCAL: 4}


@dataclass(frozen=True)
class NodeView:
    """What a policy knows of one node, for one model."""

    node: str
    free_slots: int
    free_memory_mb: int = 1 << 30
    #: idle warm instances of the model (they could serve now)
    warm_idle: int = 0
    #: expected seconds until each busy warm instance of the model is free
    warm_busy_free_s: tuple[float, ...] = ()
    #: standard deviation of each of those times, where the caller knows it (same order; empty: unknown, 0)
    warm_busy_sd_s: tuple[float, ...] = ()
    in_dram: bool = False
    in_ssd: bool = False
    bw_dram: float = 0.0
    bw_ssd: float = 0.0
    bw_registry: float = 0.0
    #: seconds until the node's queue of pending loads drains
    queue_s: float = 0.0
    #: bytes of pending loads not already counted in ``queue_s`` (drained at registry bandwidth)
    queue_bytes: int = 0
    draining: bool = False
    #: seconds to bring up a runtime process where no prewarmed one is ready (0: not modelled)
    boot_s: float = 0.0
    #: prewarmed runtimes ready on the node (a start takes one and skips ``boot_s``)
    prewarmed: int = 0

    def bandwidth(self, tier: LoadTier) -> float:
        measured = {LoadTier.DRAM: self.bw_dram, LoadTier.SSD: self.bw_ssd, LoadTier.REGISTRY: self.bw_registry}
        value = measured.get(tier, 0.0)
        return value if value > 0 else DEFAULT_BANDWIDTH[tier]

    def queue_seconds(self) -> float:
        extra = self.queue_bytes / self.bandwidth(LoadTier.REGISTRY) if self.queue_bytes > 0 else 0.0
        return max(0.0, self.queue_s) + extra

    def start_overhead(self) -> float:
        return 0.0 if self.prewarmed > 0 else max(0.0, self.boot_s)

    def can_start(self, memory_mb: int) -> bool:
        return not self.draining and self.free_slots > 0 and self.free_memory_mb >= memory_mb

    def tiers_holding(self) -> list[LoadTier]:
        tiers = [LoadTier.DRAM] if self.in_dram else []
        if self.in_ssd:
            tiers.append(LoadTier.SSD)
        return [*tiers, LoadTier.REGISTRY]


@dataclass(frozen=True)
class PlacementRequest:
    """The instance to place: an action's model and its checkpoint size."""

    namespace: str
    action: str
    model: str
    size_bytes: int
    memory_mb: int = 0

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.action}"


@dataclass(frozen=True)
class Decision:
    """Start (or, for ``tier == WARM``, wait for) an instance on ``node``."""

    node: str
    startup_s: float
    tier: LoadTier

    @property
    def waits_for_warm(self) -> bool:
        return self.tier is LoadTier.WARM


class PlacementPolicy(Protocol):
    name: str

    def choose(self, request: PlacementRequest, nodes: Sequence[NodeView]) -> Decision | None: ...


# --- cost model ---------------------------------------------------------------------------


def load_estimate(request: PlacementRequest, node: NodeView) -> tuple[float, LoadTier]:
    """Seconds to start a new instance on ``node``: queue + runtime boot (none with a prewarmed
    runtime) + size / bw of the fastest holding tier."""
    best: tuple[float, LoadTier] | None = None
    for tier in node.tiers_holding():
        seconds = request.size_bytes / node.bandwidth(tier)
        if best is None or (seconds, TIER_RANK[tier]) < (best[0], TIER_RANK[best[1]]):
            best = (seconds, tier)
    assert best is not None  # the registry always holds the checkpoint
    return node.queue_seconds() + node.start_overhead() + best[0], best[1]


def starting_free(load_left_s: float, run_s: float, run_sd: float = 0.0) -> tuple[float, float]:
    """(expected seconds, standard deviation) until an instance that is still starting could take a request
    beyond the one it covers: its load is done in ``load_left_s``, then it runs one queued request (``run_s``
    expected, ``run_sd`` its deviation). As a busy instance's, so a policy can book waits on it."""
    return max(0.0, load_left_s) + max(0.0, run_s), max(0.0, run_sd)


def with_start_under_way(views: Sequence[NodeView], node: str, load_s: float, run_s: float,
                         run_sd: float | None = None) -> list[NodeView]:
    """The views after a start was sent to ``node`` (loaded in ``load_s``: the decision's ``startup_s``): the new
    instance is listed among the action's busy ones (:func:`starting_free`), so the next decisions of the same
    scheduling pass can wait for it instead of starting another load for every queued request. Views that carry
    a spread per busy instance get ``run_sd`` (unknown: 0); the caller still books the slot and the queue."""
    out = []
    for v in views:
        if v.node == node:
            e, sd = starting_free(load_s, run_s, run_sd or 0.0)
            spread = len(v.warm_busy_sd_s) == len(v.warm_busy_free_s) and (run_sd is not None or v.warm_busy_sd_s)
            v = dataclasses.replace(v, warm_busy_free_s=(*v.warm_busy_free_s, e),
                                    warm_busy_sd_s=(*v.warm_busy_sd_s, sd) if spread else v.warm_busy_sd_s)
        out.append(v)
    return out


def starting_load_left(request: PlacementRequest, node: NodeView) -> float:
    """Seconds until a start of ``request`` already under way on ``node`` is loaded, when its progress is
    unknown: done by the time the node's queue of pending loads (which counts it) drains, and no sooner
    than its own boot and load from the fastest tier holding the checkpoint."""
    own = load_estimate(request, dataclasses.replace(node, queue_s=0.0, queue_bytes=0))[0]
    return max(node.queue_seconds(), own)


def warm_wait_bounded(node: NodeView, z: float) -> tuple[float, float] | None:
    """(expected seconds, expected + ``z`` standard deviations) of the soonest warm instance on ``node`` by the
    second figure, or ``None`` without one. A busy instance's free time is an estimate of a heavy-tailed
    quantity; its spread shrinks (relative to its mean) when several runs are queued ahead."""
    if node.warm_idle > 0:
        return 0.0, 0.0
    if not node.warm_busy_free_s:
        return None
    sds = node.warm_busy_sd_s if len(node.warm_busy_sd_s) == len(node.warm_busy_free_s) else ()
    pairs = [(max(0.0, e), max(0.0, e) + z * (sds[k] if sds else 0.0)) for k, e in enumerate(node.warm_busy_free_s)]
    return min(pairs, key=lambda p: (p[1], p[0]))


def warm_wait(node: NodeView) -> float | None:
    """Seconds until a warm instance on ``node`` could serve, or ``None`` without one."""
    if node.warm_idle > 0:
        return 0.0
    if node.warm_busy_free_s:
        return max(0.0, min(node.warm_busy_free_s))
    return None


def soonest(candidates: Iterable[Decision]) -> Decision | None:
    """The decision that serves soonest (ties: the faster tier, then the node id: deterministic)."""
    return min(candidates, key=lambda d: (d.startup_s, TIER_RANK[d.tier], d.node), default=None)


def startable_nodes(request: PlacementRequest, nodes: Sequence[NodeView]) -> list[NodeView]:
    """The nodes that could start an instance of ``request`` now, by id."""
    return sorted((n for n in nodes if n.can_start(request.memory_mb)), key=lambda n: n.node)


def load_decision(request: PlacementRequest, node: NodeView) -> Decision:
    """Start a new instance on ``node``, with its load estimate."""
    seconds, tier = load_estimate(request, node)
    return Decision(node.node, seconds, tier)


def seconds_or_inf(decision: Decision | None) -> float:
    return decision.startup_s if decision is not None else math.inf
