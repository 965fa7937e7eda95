"""Placement policies: on which node should a new instance of a model start? (pure functions)

A policy takes plain data — one :class:`NodeView` per node and a
:class:`PlacementRequest` — and returns a :class:`Decision` (node, estimated seconds
until the model could serve there, and the tier it would load from) or ``None`` when
no node can take it. No I/O: the invoker builds the views from Redis (node reports and
cache inventories, see :func:`views_from_reports`) and a simulator builds them from a
trace; both get the same decisions.

Policies (``settings.placement_policy`` names one; :func:`make_policy`):

``locality`` (ours)
    For each node, the time until the model could serve there is the minimum of

    * waiting for a warm instance of the model: 0 when one is idle, else the
      expected free time of the soonest busy one; and
    * starting a new instance (only with a free slot and memory): the node's queue of
      pending loads, plus the runtime's boot time unless a prewarmed runtime is ready
      there, plus ``size / bandwidth`` of the fastest tier that holds the checkpoint
      (DRAM, SSD, the registry, which holds everything).

    It picks the node with the smallest estimate; ties go to the faster tier, then
    to the node id (deterministic). It waits for a busy warm instance only when that
    is *clearly* sooner than the best load (its expected free time plus ``warm_z``
    standard deviations <= the load, where the views carry the deviation): a busy
    instance's free time is an estimate of a heavy-tailed quantity, a load's is not.
    Callers that know an action's run-time distribution estimate a busy instance's
    free time with :meth:`RunTimeDistribution.expected_remaining` (``E[R - a | R > a]``
    for an instance that has run ``a`` s, rather than "mean - a") and its spread with
    :meth:`RunTimeDistribution.remaining_variance`. An instance still *starting* is a
    future server too (:func:`starting_free`): it covers one queued request when its load is
    done and is free one run later; a view that lists it among the busy instances
    (``views_from_reports(starting_as_busy=True)``) lets a deep queue wait for the starts
    already under way instead of starting one more load per queued request.
``serverlessllm``
    ServerlessLLM's storage-aware rule: among nodes with a free slot and a local
    copy, DRAM costs ``size / bw_dram`` (no queue), SSD costs
    ``queue + size / bw_ssd``; pick the minimum. Warm instances are not modelled.
    With no local copy anywhere it falls back to a registry load on the node with
    the shortest queue (ServerlessLLM downloads at deploy time, so it never faces
    that case); ``serverlessllm-strict`` returns ``None`` instead.
``random``
    A seeded random node among those with a free slot.
``round-robin``
    The next node (by id) with a free slot, in turn.
``hash``
    OpenWhisk's home invoker: ``hash(namespace/action)`` picks a home node among
    all nodes (sorted by id); when it is full, step to the next one.
``least-loaded``
    The node with the most free slots (then the shortest load queue, then the id).

The baselines place blindly but still report the estimate of what their choice
costs (same cost model as ``locality``), so a simulator can compare them.
"""

from __future__ import annotations

import bisect
import dataclasses
import hashlib
import math
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from faas_llm.errors import ConfigError
from faas_llm.types import CacheInventory, ContainerState, LoadTier, NodeReport

MB = 1_000_000
#: Bandwidths (bytes/s) assumed where a node has not measured one (0 means unknown).
DEFAULT_BANDWIDTH: Mapping[LoadTier, float] = {
    LoadTier.DRAM: 10_000 * MB,
    LoadTier.SSD: 1_000 * MB,
    LoadTier.REGISTRY: 200 * MB,
}
#: Order in which tiers win ties (faster first).
_TIER_RANK = {LoadTier.WARM: 0, LoadTier.DRAM: 1, LoadTier.SSD: 2, LoadTier.REGISTRY: 3, LoadTier.LOCAL: 4}


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
        if best is None or (seconds, _TIER_RANK[tier]) < (best[0], _TIER_RANK[best[1]]):
            best = (seconds, tier)
    assert best is not None  # the registry always holds the checkpoint
    return node.queue_seconds() + node.start_overhead() + best[0], best[1]


class RunTimeDistribution:
    """An action's observed run times (seconds): the tail-aware remaining-time estimate of a busy instance.

    LLM run times are heavy-tailed (outputs of 1 to 1,000+ tokens), so "the mean minus what it has
    run" is a poor guess: an instance that has already run past the typical length is likely to be
    one of the long ones. :meth:`expected_remaining` is ``E[R - a | R > a]`` over the empirical
    distribution, for an instance that has run ``a`` seconds.
    """

    def __init__(self, samples: Iterable[float]) -> None:
        self.sorted = sorted(max(0.0, float(x)) for x in samples)
        if not self.sorted:
            raise ConfigError("a run-time distribution needs at least one sample")
        # suffix sums: self._suffix[i] = sum(self.sorted[i:])
        self._suffix = [0.0] * (len(self.sorted) + 1)
        self._suffix2 = [0.0] * (len(self.sorted) + 1)
        for i in range(len(self.sorted) - 1, -1, -1):
            self._suffix[i] = self._suffix[i + 1] + self.sorted[i]
            self._suffix2[i] = self._suffix2[i + 1] + self.sorted[i] ** 2

    @property
    def mean(self) -> float:
        return self._suffix[0] / len(self.sorted)

    def expected_remaining(self, elapsed_s: float) -> float:
        """Expected seconds left for a run that has lasted ``elapsed_s`` (``E[R - a | R > a]``).

        Past the longest sample it returns the mean (the sample is finite; the run is an outlier
        whose end the history says nothing about, so assume it is halfway through a fresh one)."""
        a = max(0.0, elapsed_s)
        i = bisect.bisect_right(self.sorted, a)
        longer = len(self.sorted) - i
        if longer == 0:
            return self.mean
        return self._suffix[i] / longer - a

    @property
    def variance(self) -> float:
        n = len(self.sorted)
        return max(0.0, self._suffix2[0] / n - self.mean**2)

    @classmethod
    def of(cls, samples: Iterable[float], min_samples: int = 1) -> RunTimeDistribution | None:
        """The distribution of ``samples``, or ``None`` with fewer than ``min_samples`` (no history yet)."""
        values = [float(x) for x in samples]
        return cls(values) if values and len(values) >= max(1, min_samples) else None

    def busy_free(self, elapsed_s: Sequence[float], queued: int = 0) -> tuple[float, float]:
        """(expected seconds, standard deviation) until a busy instance is free: the soonest of its runs
        (``elapsed_s``: how long each has run; none known: one just started) by expected remaining time,
        plus ``queued`` runs booked after it (each adds the mean and the variance)."""
        runs = [(self.expected_remaining(a), self.remaining_variance(a)) for a in elapsed_s] or [
            (self.mean, self.variance)]
        expected, var = min(runs)
        q = max(0, queued)
        return expected + q * self.mean, math.sqrt(var + q * self.variance)

    def remaining_variance(self, elapsed_s: float) -> float:
        """``Var[R - a | R > a]`` (past the longest sample: the unconditional variance)."""
        a = max(0.0, elapsed_s)
        i = bisect.bisect_right(self.sorted, a)
        longer = len(self.sorted) - i
        if longer == 0:
            return self.variance
        mean = self._suffix[i] / longer
        return max(0.0, self._suffix2[i] / longer - mean * mean)


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


def _best(candidates: Iterable[Decision]) -> Decision | None:
    return min(candidates, key=lambda d: (d.startup_s, _TIER_RANK[d.tier], d.node), default=None)


def _startable(request: PlacementRequest, nodes: Sequence[NodeView]) -> list[NodeView]:
    return sorted((n for n in nodes if n.can_start(request.memory_mb)), key=lambda n: n.node)


def _decide_load(request: PlacementRequest, node: NodeView) -> Decision:
    seconds, tier = load_estimate(request, node)
    return Decision(node.node, seconds, tier)


# --- policies -------------------------------------------------------------------------------


@dataclass
class LocalityPolicy:
    """Ours: min over nodes of (warm wait, queue + size / bw of the fastest holding tier)."""

    name: str = "locality"
    #: consider waiting for busy warm instances (off: only start new instances)
    use_warm: bool = True
    #: wait for a busy instance only when its expected free time plus ``warm_z`` standard deviations (where the
    #: views carry them: ``warm_busy_sd_s``) is <= the best load: a load's time is nearly deterministic, a busy
    #: instance's free time is not; 0 is the plain comparison of expectations
    warm_z: float = 1.0

    def choose(self, request: PlacementRequest, nodes: Sequence[NodeView]) -> Decision | None:
        loads = [_decide_load(request, n) for n in nodes if n.can_start(request.memory_mb)]
        best_load = _best(loads)
        warms: list[tuple[float, Decision]] = []
        if self.use_warm:
            for node in nodes:
                got = warm_wait_bounded(node, self.warm_z)
                if got is not None:
                    warms.append((got[1], Decision(node.node, got[0], LoadTier.WARM)))
        if not warms:
            return best_load
        upper, best_warm = min(warms, key=lambda w: (w[0], w[1].startup_s, w[1].node))
        if best_load is None or upper <= best_load.startup_s:
            return best_warm
        return best_load


@dataclass
class ServerlessLLMPolicy:
    """ServerlessLLM's storage-aware rule (DRAM: size/bw_dram; SSD: queue + size/bw_ssd)."""

    name: str = "serverlessllm"
    registry_fallback: bool = True

    def choose(self, request: PlacementRequest, nodes: Sequence[NodeView]) -> Decision | None:
        startable = _startable(request, nodes)
        options: list[Decision] = []
        for node in startable:
            if node.in_dram:
                options.append(Decision(node.node, request.size_bytes / node.bandwidth(LoadTier.DRAM), LoadTier.DRAM))
            elif node.in_ssd:
                seconds = node.queue_seconds() + request.size_bytes / node.bandwidth(LoadTier.SSD)
                options.append(Decision(node.node, seconds, LoadTier.SSD))
        if options or not self.registry_fallback:
            return _best(options)
        return _best(
            Decision(n.node, n.queue_seconds() + request.size_bytes / n.bandwidth(LoadTier.REGISTRY), LoadTier.REGISTRY)
            for n in startable
        )


@dataclass
class RandomPolicy:
    """A seeded random node among those that can start an instance."""

    name: str = "random"
    seed: int = 0
    rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def choose(self, request: PlacementRequest, nodes: Sequence[NodeView]) -> Decision | None:
        startable = _startable(request, nodes)
        return _decide_load(request, self.rng.choice(startable)) if startable else None


@dataclass
class RoundRobinPolicy:
    """The next startable node by id, in turn (the turn advances on every placement)."""

    name: str = "round-robin"
    turn: int = 0

    def choose(self, request: PlacementRequest, nodes: Sequence[NodeView]) -> Decision | None:
        startable = _startable(request, nodes)
        if not startable:
            return None
        node = startable[self.turn % len(startable)]
        self.turn += 1
        return _decide_load(request, node)


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
                return _decide_load(request, node)
        return None


@dataclass
class LeastLoadedPolicy:
    """The node with the most free slots (then the shortest load queue, then the id)."""

    name: str = "least-loaded"

    def choose(self, request: PlacementRequest, nodes: Sequence[NodeView]) -> Decision | None:
        startable = _startable(request, nodes)
        if not startable:
            return None
        node = min(startable, key=lambda n: (-n.free_slots, n.queue_seconds(), n.node))
        return _decide_load(request, node)


# --- registry -------------------------------------------------------------------------------

POLICIES: dict[str, Callable[[int], PlacementPolicy]] = {
    "locality": lambda seed: LocalityPolicy(),
    "serverlessllm": lambda seed: ServerlessLLMPolicy(),
    "serverlessllm-strict": lambda seed: ServerlessLLMPolicy(name="serverlessllm-strict", registry_fallback=False),
    "random": lambda seed: RandomPolicy(seed=seed),
    "round-robin": lambda seed: RoundRobinPolicy(),
    "hash": lambda seed: HashHomePolicy(),
    "least-loaded": lambda seed: LeastLoadedPolicy(),
}


def make_policy(name: str, seed: int = 0) -> PlacementPolicy:
    """A fresh policy (with its own state) by registry name; unknown names raise ConfigError."""
    try:
        factory = POLICIES[name]
    except KeyError:
        raise ConfigError(f"unknown placement policy {name!r}: choose one of {', '.join(sorted(POLICIES))}") from None
    return factory(seed)


# --- from Redis records to views --------------------------------------------------------------


def views_from_reports(
    request: PlacementRequest,
    reports: Sequence[NodeReport],
    inventories: Mapping[str, CacheInventory],
    *,
    expected_run_s: float = 1.0,
    model_sizes: Mapping[str, int] | None = None,
    boot_s: float = 0.0,
    run_times: RunTimeDistribution | None = None,
    busy_elapsed_s: Mapping[str, Sequence[float]] | None = None,
    starting_as_busy: bool = False,
) -> list[NodeView]:
    """Node views for ``request`` from node reports and cache inventories (pure).

    A node without an inventory is treated as holding nothing locally (registry only).
    Busy warm instances of the action are expected free after ``expected_run_s``
    scaled by their load; ``STARTING`` containers on a node count as its queue of
    pending loads (each at its model's size from ``model_sizes``, default the
    request's size); a node without a ``PREWARMED`` container pays ``boot_s`` to start one.

    With ``run_times`` (the action's observed run-time distribution) a busy instance is expected free
    after :meth:`RunTimeDistribution.busy_free` of its runs' elapsed times (``busy_elapsed_s``: container
    id -> seconds each of its runs has lasted; a container missing from it: a run just started), and
    the views carry the spread (``warm_busy_sd_s``), as the simulator's "ours" builds them; without it,
    ``expected_run_s`` as above and no spread (the plain comparison).

    With ``starting_as_busy`` the action's own ``STARTING`` containers are listed among the busy
    instances too, free after :func:`starting_load_left` and one run (:func:`starting_free`): a queued
    request can wait for a start already under way (each start covers one request; the autoscaler counts
    them as instances); and a node with one has no free slot for the action (the pool's ``WARMING``:
    :func:`faas_llm.pool_policy.choose` starts no second container of an action while one is starting).
    """
    sizes = model_sizes or {}
    elapsed = busy_elapsed_s or {}
    views: list[NodeView] = []
    for report in reports:
        inv = inventories.get(report.node)
        live = [c for c in report.containers if c.state is not ContainerState.REMOVING]
        mine = [c for c in live if c.namespace == request.namespace and c.action == request.action]
        idle = sum(1 for c in mine if c.state is ContainerState.IDLE or (
            c.state is ContainerState.BUSY and c.active < c.concurrency))
        full = [c for c in mine if c.state is ContainerState.BUSY and c.active >= c.concurrency]
        if run_times is not None:
            pairs = [run_times.busy_free(elapsed.get(c.id, ())) for c in full]
            busy, busy_sd = tuple(e for e, _ in pairs), tuple(sd for _, sd in pairs)
        else:
            busy = tuple(expected_run_s * max(1, c.active) / max(1, c.concurrency) for c in full)
            busy_sd = ()
        starting = [c for c in live if c.state is ContainerState.STARTING]
        occupied = [c for c in live if c.state in (ContainerState.BUSY, ContainerState.STARTING)]
        queue_bytes = sum(sizes.get(c.model or "", request.size_bytes) for c in starting)
        if inv is not None:
            queue_bytes += inv.pending_bytes
        view = NodeView(
            node=report.node,
            # idle and prewarmed containers are reclaimable (the pool evicts LRU idle ones)
            free_slots=max(0, report.max_containers - len(occupied)),
            free_memory_mb=report.free_memory_mb,
            warm_idle=idle,
            warm_busy_free_s=busy,
            warm_busy_sd_s=busy_sd,
            in_dram=inv is not None and request.model in inv.dram.models,
            in_ssd=inv is not None and request.model in inv.ssd.models,
            bw_dram=inv.dram.read_bandwidth if inv else 0.0,
            bw_ssd=inv.ssd.read_bandwidth if inv else 0.0,
            bw_registry=inv.registry_bandwidth if inv else 0.0,
            queue_bytes=queue_bytes,
            draining=report.draining,
            boot_s=boot_s,
            prewarmed=sum(1 for c in live if c.state is ContainerState.PREWARMED),
        )
        coming = sum(1 for c in mine if c.state is ContainerState.STARTING)
        if starting_as_busy and coming:
            run_s, run_sd = (run_times.mean, math.sqrt(run_times.variance)) if run_times is not None \
                else (expected_run_s, 0.0)
            e, sd = starting_free(starting_load_left(request, view), run_s, run_sd)
            # the pool answers a second start of the action where one is starting with WARMING (it starts
            # nothing): the start under way is the option there, not a new one
            view = dataclasses.replace(view, warm_busy_free_s=(*busy, *([e] * coming)),
                                       warm_busy_sd_s=(*busy_sd, *([sd] * coming)) if run_times is not None else (),
                                       free_slots=0)
        views.append(view)
    return views


def seconds_or_inf(decision: Decision | None) -> float:
    return decision.startup_s if decision is not None else math.inf
