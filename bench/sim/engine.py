"""The event loop: requests arrive, warm instances serve, the placement policy starts new ones.

Dispatch follows the real invoker (``ARCHITECTURE.md``): an idle warm instance of the
model serves a request at once (every policy); otherwise the request joins its model's
queue and, while the queue has more requests than instances loading for it (or,
for ``locality``, busy instances it chose to wait for), the placement policy is asked
where to start one. Instances *pull* from their model's queue: whichever becomes free
first (a busy one finishing, a new one finishing its load) serves the oldest request.
A request's startup latency is its arrival to the moment an instance starts serving it;
its tier is the load tier of a fresh instance, or ``warm``.

Each node has a network fetch queue (registry loads, FIFO at the registry bandwidth), an
SSD read queue (FIFO at the SSD bandwidth) and no queue for DRAM loads (each GPU has its
own PCIe link; ServerlessLLM's model); ``single_loader`` puts every load in one FIFO
queue instead. Policies see the SSD queue as ``queue_s`` and the pending registry bytes
as ``queue_bytes`` (as the invoker's views carry them). A DRAM and an SSD LRU cache
(a registry load fills both, an SSD load fills DRAM), GPU slots and memory; idle
instances are kept ``keep_alive_s`` (or, with ``keep_until_needed``, until their slot is wanted or
``max_idle_s``: the real :func:`faas_llm.pool_policy.keep_alive_removals`) and are evicted
least-recently-used (the real :func:`faas_llm.pool_policy.lru_victims`) when a start needs their room.
``tail_estimate`` gives the policy busy instances' free times from each model's run-time distribution
(:class:`faas_llm.placement.RunTimeDistribution`); ``starting_as_servers`` lists the model's starting instances
among them (free after their load and one run: :func:`faas_llm.placement.starting_free`);
``cluster.start_overhead_s`` adds a fixed runtime boot/init time to every new instance (0 in the comparison;
measured in ``bench/sim_validate.py``). Policies see exactly what the invoker's views carry, built with the real
:class:`~faas_llm.placement.NodeView`.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from bench.sim.cluster import Instance, InstState, Node
from bench.sim.costs import ClusterSpec, GpuModel
from bench.sim.workload import Request, Workload, expected_run_s, run_distributions
from faas_llm.placement import (
    Decision,
    NodeView,
    PlacementPolicy,
    PlacementRequest,
    RunTimeDistribution,
    starting_free,
)
from faas_llm.pool_policy import PoolCapacity, has_room, keep_alive_removals, lru_victims
from faas_llm.types import LoadTier

ARRIVE, LOAD_DONE, RUN_DONE, EXPIRE, MOVE_DONE, BOOT_DONE, TICK, LEASE_END, HOLD_LAPSE = range(9)
#: a start held for a run about to end waits at most max(this, 3 x the expected wait), as the invoker's
#: MigrationPlacer hold (invoker.migrate_place.MIN_HOLD_MS)
MIN_HOLD_S = 15.0
UNLIMITED = 1 << 40


@dataclass
class Served:
    request: int
    latency_s: float
    tier: LoadTier


@dataclass
class SimResult:
    served: list[Served] = field(default_factory=list)
    unserved: int = 0
    placements: int = 0
    migrations: int = 0
    migrations_cancelled: int = 0
    #: starts held for the slot of a run about to end (``faas_llm.migration_policy.plan_wait``)
    waits: int = 0
    waits_lapsed: int = 0
    cache_evictions: int = 0
    instances_evicted: int = 0


#: a migration hook: (sim, model index, request, views, decision) -> True when it planned a move
MigrationHook = Callable[["Simulator", int, PlacementRequest, list[NodeView], Decision | None], bool]


class Simulator:
    """One run of one policy over one workload on one cluster (fresh state every run)."""

    def __init__(
        self,
        workload: Workload,
        policy: PlacementPolicy,
        cluster: ClusterSpec,
        gpu: GpuModel,
        *,
        seed: int,
        oracle: bool = False,
        clairvoyant: bool = False,
        migration: MigrationHook | None = None,
        keep_until_needed: bool = False,
        max_idle_s: float = 3600.0,
        tail_estimate: bool = False,
        starting_as_servers: bool = False,
        tick_s: float | None = None,
        warming: bool = False,
    ) -> None:
        self.w = workload
        self.policy = policy
        self.cluster = cluster
        self.gpu = gpu
        self.oracle = oracle  # unlimited slots and memory, no load queues, true run times
        self.clairvoyant = clairvoyant or oracle  # true run times in the warm-wait estimates
        self.migration = migration
        self.now = 0.0
        self.result = SimResult()
        self.nodes = [Node.build(i, name, cluster) for i, name in enumerate(cluster.node_names())]
        self.slots = UNLIMITED if oracle else cluster.slots_per_node
        self.memory_mb = UNLIMITED if oracle else cluster.node_memory_mb
        n = len(workload.models)
        self.sizes = [m.size_bytes for m in workload.models]
        self.names = [m.name for m in workload.models]
        self.requests = [
            PlacementRequest("bench", m.name, m.name, m.size_bytes, gpu.instance_memory_mb(m, cluster))
            for m in workload.models
        ]
        self.expected_run = expected_run_s(workload, cluster, gpu)
        #: keep-alive as the real pool applies it (faas_llm.pool_policy.keep_alive_removals)
        self.keep_until_needed = keep_until_needed
        self.max_idle_s = max_idle_s
        #: busy instances' free times from each model's run-time distribution given the time run so far
        #: (faas_llm.placement.RunTimeDistribution), instead of "mean minus elapsed"
        self.run_dists = run_distributions(workload, cluster, gpu) if tail_estimate else None
        #: instances still loading count as future servers in the warm-wait estimate (free after their load and
        #: the one queued run each covers), as :func:`faas_llm.placement.views_from_reports` builds them with
        #: ``starting_as_busy``; off: only busy instances can be waited for
        self.starting_as_servers = starting_as_servers
        #: the real invoker's scheduling (invoker/scheduler.py, invoker/coldwatch.py): an arrival for a model with no
        #: instance (none idle, busy or starting) is placed at once; every other placement, the re-decision of the
        #: waits for busy warm instances and the retries of blocked models happen on its periodic tick (``tick_s``
        #: apart). None: every arrival is placed at once
        self.tick_s = tick_s
        self._tick_at: float | None = None
        #: the real pool's WARMING outcome (faas_llm.pool_policy.choose): a start request for a model that already
        #: has an instance starting on that node (it has no run yet) starts nothing; the queue waits for that one
        self.warming = warming
        self.queue: list[deque[Request]] = [deque() for _ in range(n)]
        self.starting = [0] * n
        self.claims = [0] * n  # requests waiting for a busy warm instance (locality's WARM decisions)
        self.idle: list[dict[int, Instance]] = [{} for _ in range(n)]
        self.busy: list[dict[int, Instance]] = [{} for _ in range(n)]
        self.blocked: set[int] = set()
        self.instances: dict[int, Instance] = {}
        self._ids = itertools.count()
        self._seq = itertools.count()
        self._events: list[tuple[float, int, int, object]] = []
        self._deploy(seed)

    # --- setup ---------------------------------------------------------------------------------

    def _deploy(self, seed: int) -> None:
        """Deployment-time copies on node SSDs (ServerlessLLM downloads a model at deploy)."""
        rng = random.Random(seed)
        order = list(range(len(self.nodes)))
        for m in range(len(self.w.models)):
            rng.shuffle(order)
            for i in order[: self.cluster.ssd_replicas]:
                self.nodes[i].ssd.insert(self.names[m], self.sizes[m])

    def _push(self, t: float, kind: int, data: object) -> None:
        heapq.heappush(self._events, (t, next(self._seq), kind, data))

    # --- the loop -------------------------------------------------------------------------------

    def run(self) -> SimResult:
        for req in self.w.requests:
            self._push(req.t, ARRIVE, req)
        while self._events:
            t, _, kind, data = heapq.heappop(self._events)
            self.now = t
            if kind == ARRIVE:
                assert isinstance(data, Request)
                self._arrive(data)
            elif kind == LOAD_DONE:
                assert isinstance(data, Instance)
                self._load_done(data)
            elif kind == RUN_DONE:
                assert isinstance(data, Instance)
                self._run_done(data)
            elif kind == EXPIRE:
                assert isinstance(data, tuple)
                self._expire(*data)
            elif kind == MOVE_DONE:
                assert isinstance(data, Instance)
                self._move_done(data)
            elif kind == BOOT_DONE:
                assert isinstance(data, Instance)
                self._begin_load(data)
            elif kind == TICK:
                self._tick()
            elif kind == LEASE_END:
                assert isinstance(data, tuple)
                self._lease_end(*data)
            elif kind == HOLD_LAPSE:
                assert isinstance(data, tuple)
                self._hold_lapse(*data)
        self.result.unserved = sum(len(q) for q in self.queue)
        self.result.cache_evictions = sum(n.dram.evictions + n.ssd.evictions for n in self.nodes)
        return self.result

    def _arrive(self, req: Request) -> None:
        idle = self.idle[req.model]
        if idle:
            # pack onto the most recently used idle instance (the pool's warm choice)
            inst = max(idle.values(), key=lambda i: (i.last_used, -i.id))
            self._serve(inst, req)
            return
        self.queue[req.model].append(req)
        if self.tick_s is None or not self._has_instance(req.model):
            self._cover(req.model)  # the cold-start watch: placed at once
        else:
            self._schedule_tick()

    def _has_instance(self, m: int) -> bool:
        return bool(self.idle[m] or self.busy[m] or self.starting[m])

    def _schedule_tick(self) -> None:
        assert self.tick_s is not None
        if self._tick_at is None:
            self._tick_at = (math.floor(self.now / self.tick_s) + 1) * self.tick_s
            self._push(self._tick_at, TICK, None)

    def _tick(self) -> None:
        """The invoker's periodic scheduling pass: every queued model is placed afresh (its waits for busy
        warm instances decided again, as the real scheduler books them only within one pass)."""
        self._tick_at = None
        for m in range(len(self.queue)):
            if self.queue[m]:
                self.claims[m] = 0
                self.blocked.discard(m)
                self._cover(m)
        if any(self.queue):
            self._schedule_tick()

    def _uncovered(self, m: int) -> int:
        return len(self.queue[m]) - self.starting[m] - self.claims[m]

    def _cover(self, m: int) -> None:
        """Ask the policy for instances until every queued request of ``m`` has one coming."""
        while self._uncovered(m) > 0:
            request = self.requests[m]
            views = self.views(m)
            decision = self.policy.choose(request, views)
            self.result.placements += 1
            if self.migration is not None and self.migration(self, m, request, views, decision):
                continue
            if decision is None:
                self.blocked.add(m)
                return
            if decision.waits_for_warm:
                self.claims[m] += 1
            elif self.warming and self._starting_on(self.node_index(decision.node), m):
                return  # WARMING: the node's starting instance of m is the one this start gets
            elif self.start_load(self.node_index(decision.node), m) is None:
                self.blocked.add(m)  # the policy chose a node without room: wait for capacity
                return
        self.blocked.discard(m)

    def _starting_on(self, n: int, m: int) -> bool:
        return any(i.model == m and i.state is InstState.STARTING for i in self.nodes[n].instances.values())

    def _retry_blocked(self) -> None:
        if not self.blocked or self.tick_s is not None:
            return  # with ticks: retried on the next one
        for m in sorted(self.blocked, key=lambda m: (self.queue[m][0].t if self.queue[m] else math.inf, m)):
            if self.queue[m] and not self._could_start(m):
                continue  # nothing changed for it: no room anywhere (it had no warm option either)
            self.blocked.discard(m)
            self._cover(m)

    # --- what a policy sees ---------------------------------------------------------------------

    def node_index(self, name: str) -> int:
        return int(name[1:])

    def busy_free_s(self, m: int) -> list[list[tuple[float, float]]]:
        """Per node, (expected seconds, standard deviation) until each busy warm instance of ``m`` is free,
        after the claimed requests.

        Non-clairvoyant: ``expected_run_s`` of the model (its rates at the workload's mean tokens), or with
        ``tail_estimate`` its run-time distribution given the time run so far (mean and spread; each queued
        run adds the distribution's mean and variance); not the request's true length. Clairvoyant runs use
        the true end times (no spread).
        """
        per_node: list[list[tuple[float, float]]] = [[] for _ in self.nodes]
        busy = [i for i in self.busy[m].values() if i.evict_for is None]
        starting = self._starting_of(m) if self.starting_as_servers else []
        if not busy and not starting:
            return per_node
        run, run_var = self.expected_run[m], 0.0
        dist = self.run_dists[m] if self.run_dists is not None else None
        if dist is not None:
            run, run_var = dist.mean, dist.variance  # a queued request's run, not yet started
        heap = [(*self._busy_end(i, run, dist), i.node) for i in busy]
        # a starting instance is free after its load and the run of the queued request it covers
        for i in starting:
            e, sd = starting_free(i.ready_at - self.now, run, math.sqrt(run_var))
            heap.append((self.now + e, sd * sd, i.node))
        heapq.heapify(heap)
        queued = list(itertools.islice(self.queue[m], self.claims[m])) if self.clairvoyant else []
        for k in range(self.claims[m]):
            t, var, node = heapq.heappop(heap)
            if self.clairvoyant:
                heapq.heappush(heap, (t + queued[k].run_s, 0.0, node))
            else:
                heapq.heappush(heap, (t + run, var + run_var, node))
        for t, var, node in heap:
            per_node[node].append((t - self.now, math.sqrt(var)))
        return per_node

    def _starting_of(self, m: int) -> list[Instance]:
        """Instances of ``m`` loading to serve its queue (not migration targets), if any are starting."""
        if not self.starting[m]:
            return []
        return [i for n in self.nodes for i in n.instances.values() if i.model == m and i.state is InstState.STARTING]

    def _busy_end(self, inst: Instance, run: float, dist: RunTimeDistribution | None) -> tuple[float, float]:
        """(when a busy instance is expected free, the variance): its true end (clairvoyant), the tail-aware
        estimate, or the model's mean run from its start (no variance known)."""
        if self.clairvoyant:
            return inst.run_end, 0.0
        if dist is not None:
            elapsed = self.now - inst.run_start
            return self.now + dist.expected_remaining(elapsed), dist.remaining_variance(elapsed)
        return max(self.now, inst.run_start + run), 0.0

    def view(self, node: Node, m: int, busy_free: list[tuple[float, float]] | None = None,
             idle: int | None = None) -> NodeView:
        name = self.names[m]
        busy_free = busy_free or []
        # the pool's WARMING: a second start of m where one is starting starts nothing; a view that lists starting
        # instances as servers says so (the start under way is the option there), as views_from_reports does
        refused = self.warming and self.starting_as_servers and self._starting_on(node.index, m)
        return NodeView(
            node=node.name,
            free_slots=0 if refused else max(0, self.slots - node.occupied_slots),
            free_memory_mb=max(0, self.memory_mb - node.occupied_mb),
            warm_idle=sum(1 for i in self.idle[m].values() if i.node == node.index) if idle is None else idle,
            warm_busy_free_s=tuple(t for t, _ in busy_free),
            warm_busy_sd_s=tuple(sd for _, sd in busy_free) if self.run_dists is not None else (),
            in_dram=name in node.dram,
            in_ssd=name in node.ssd,
            bw_dram=self.cluster.bw_dram,
            bw_ssd=self.cluster.bw_ssd,
            bw_registry=self.cluster.bw_registry,
            queue_s=0.0 if self.oracle else max(0.0, node.loader_free_at - self.now),
            # registry fetches still pending, as the real views carry them (bytes, drained at registry bandwidth)
            queue_bytes=0 if self.oracle else int(max(0.0, node.fetch_free_at - self.now) * self.cluster.bw_registry),
            boot_s=self.cluster.start_overhead_s,
        )

    def views(self, m: int) -> list[NodeView]:
        busy = self.busy_free_s(m)
        idle = [0] * len(self.nodes)
        for inst in self.idle[m].values():
            idle[inst.node] += 1
        return [self.view(node, m, busy[node.index], idle[node.index]) for node in self.nodes]

    def _could_start(self, m: int) -> bool:
        """Some node has a free slot and the memory (else a blocked model stays blocked)."""
        need = self.requests[m].memory_mb
        return any(self.slots > n.occupied_slots and self.memory_mb - n.occupied_mb >= need for n in self.nodes)

    # --- instances ------------------------------------------------------------------------------

    def _make_room(self, node: Node, memory_mb: int) -> bool:
        live = [i.container_view() for i in node.instances.values()]
        capacity = PoolCapacity(self.slots, self.memory_mb)
        if has_room(live, memory_mb, capacity):
            return True
        victims = lru_victims(live, memory_mb, capacity)
        for vid in victims:
            self._remove(node.instances[int(vid)], lease_hold_s=self.cluster.evicted_lease_hold_s)
            self.result.instances_evicted += 1
        return bool(victims)

    def _load_time(self, node: Node, m: int, tier: LoadTier) -> tuple[float, float]:
        """(start, end) of a load of ``m`` from ``tier`` on ``node``'s loader."""
        bws = {LoadTier.DRAM: self.cluster.bw_dram, LoadTier.SSD: self.cluster.bw_ssd}
        bw = bws.get(tier, self.cluster.bw_registry)
        seconds = self.sizes[m] / bw
        if self.oracle or (tier is LoadTier.DRAM and not self.cluster.single_loader):
            return self.now, self.now + seconds
        if tier is LoadTier.REGISTRY and not self.cluster.single_loader:
            start = max(self.now, node.fetch_free_at)
            node.fetch_free_at = start + seconds
        else:
            start = max(self.now, node.loader_free_at)
            node.loader_free_at = start + seconds
        return start, start + seconds

    def start_load(self, n: int, m: int, *, migrating: bool = False) -> Instance | None:
        """A new instance of ``m`` on node ``n``, loading from its fastest tier; None without room."""
        node = self.nodes[n]
        memory = self.requests[m].memory_mb
        if not self._make_room(node, memory):
            return None
        name = self.names[m]
        agent = self.cluster.agent_loads and not self.oracle
        tier = node.fastest_tier(name)
        if agent:
            end = self.now + self.cluster.start_overhead_s  # the runtime boots, then asks for its model
        else:
            if tier is LoadTier.DRAM:
                node.dram.pin(name)
            elif tier is LoadTier.SSD:
                node.ssd.pin(name)
            _, end = self._load_time(node, m, tier)
            end += self.cluster.start_overhead_s
        state = InstState.MIGRATING_IN if migrating else InstState.STARTING
        inst = Instance(next(self._ids), m, n, memory, state, tier)
        inst.ready_at = end
        inst.last_used = self.now
        self.instances[inst.id] = inst
        node.instances[inst.id] = inst
        node.occupied_slots += 1
        node.occupied_mb += memory
        if not migrating:
            self.starting[m] += 1
        self._push(end, BOOT_DONE if agent else LOAD_DONE, inst)
        return inst

    def _begin_load(self, inst: Instance) -> None:
        """The booted runtime asks the cache agent for its model (``ClusterSpec.agent_loads``)."""
        if inst.state is InstState.REMOVED:
            return
        node, m = self.nodes[inst.node], inst.model
        name = self.names[m]
        flight = node.flights.get(m)
        if flight is not None and flight[0] > self.now:  # single flight: wait for the load in progress
            end, inst.tier = flight
            inst.joined = True
            self._push(end, LOAD_DONE, inst)
            return
        tier = node.fastest_tier(name)
        if tier is LoadTier.DRAM:
            node.dram.pin(name)
        elif node.dram.insert(name, self.sizes[m]):  # the DRAM extent is reserved before the read
            node.dram.pin(name)
            if tier is LoadTier.SSD:
                node.ssd.pin(name)
        else:  # no room (every resident checkpoint leased): the runtime reads the SSD copy itself
            start = self.now
            if tier is LoadTier.REGISTRY:
                _, start = self._load_time(node, m, LoadTier.REGISTRY)
                node.ssd.insert(name, self.sizes[m])
            saved, self.now = self.now, start
            _, end = self._load_time(node, m, LoadTier.SSD)
            self.now = saved
            inst.tier = LoadTier.LOCAL
            self._push(end, LOAD_DONE, inst)
            return
        _, end = self._load_time(node, m, tier)
        inst.tier = tier
        if tier is not LoadTier.DRAM:
            node.flights[m] = (end, tier)
        self._push(end, LOAD_DONE, inst)

    def _fill_caches(self, node: Node, m: int, tier: LoadTier) -> None:
        name, size = self.names[m], self.sizes[m]
        if self.cluster.agent_loads and not self.oracle:
            self._agent_filled(node, m, tier)
            return
        if tier is LoadTier.DRAM:
            node.dram.unpin(name)
            node.dram.touch(name)
            node.ssd.touch(name)
            return
        if tier is LoadTier.SSD:
            node.ssd.unpin(name)
            node.ssd.touch(name)
        else:
            node.ssd.insert(name, size)
        node.dram.insert(name, size)

    def _agent_filled(self, node: Node, m: int, tier: LoadTier) -> None:
        """A load by the cache agent (``_begin_load``) is done: its pins go, its copies are used."""
        name = self.names[m]
        if node.flights.get(m, (math.inf,))[0] <= self.now:
            del node.flights[m]
        if tier is LoadTier.LOCAL:
            node.ssd.touch(name)
            return
        node.dram.unpin(name)
        node.dram.touch(name)
        if tier is LoadTier.SSD:
            node.ssd.unpin(name)
            node.ssd.touch(name)
        elif tier is LoadTier.REGISTRY:
            node.ssd.insert(name, self.sizes[m])
        # a DRAM hit does not use the SSD copy (the agent reads SSD only to fill DRAM)

    def _load_done(self, inst: Instance) -> None:
        node = self.nodes[inst.node]
        if not inst.joined:
            self._fill_caches(node, inst.model, inst.tier)
        if (self.cluster.dram_lease_while_live and inst.tier is not LoadTier.LOCAL
                and self.names[inst.model] in node.dram):
            node.dram.pin(self.names[inst.model])
            inst.leased = True
        if inst.state is InstState.MIGRATING_IN:
            if inst.takes_over is not None:
                self._push(self.now + inst.resume_s, MOVE_DONE, inst)
                return
            inst.state = InstState.STARTING  # its migration was cancelled: an ordinary new instance
        else:
            self.starting[inst.model] -= 1
        self._ready(inst)

    def _ready(self, inst: Instance) -> None:
        """A loaded or freed instance pulls the oldest queued request of its model, or goes idle."""
        q = self.queue[inst.model]
        if q:
            self._serve(inst, q.popleft())
            self.claims[inst.model] = min(self.claims[inst.model], len(q))
            return
        node = self.nodes[inst.node]
        if inst.occupies:
            node.occupied_slots -= 1
            node.occupied_mb -= inst.memory_mb
        self.busy[inst.model].pop(inst.id, None)
        inst.state = InstState.IDLE
        inst.last_used = self.now
        self.idle[inst.model][inst.id] = inst
        self._push(self.now + self.cluster.keep_alive_s, EXPIRE, (inst, self.now))
        self._retry_blocked()

    def _serve(self, inst: Instance, req: Request) -> None:
        tier = inst.tier if inst.fresh else LoadTier.WARM
        if tier is LoadTier.WARM and self.claims[req.model] > 0:
            self.claims[req.model] -= 1
        self.result.served.append(Served(req.id, self.now - req.t, tier))
        node = self.nodes[inst.node]
        if inst.state is InstState.IDLE:
            del self.idle[inst.model][inst.id]
            node.occupied_slots += 1
            node.occupied_mb += inst.memory_mb
        inst.fresh = False
        inst.state = InstState.BUSY
        inst.request = req
        inst.run_start = self.now
        inst.run_end = self.now + req.run_s
        self.busy[inst.model][inst.id] = inst
        self._push(inst.run_end, RUN_DONE, inst)

    def _run_done(self, inst: Instance) -> None:
        if inst.state is not InstState.BUSY or inst.run_end != self.now:
            return  # it moved away (migration) or was removed
        inst.last_used = self.now
        inst.request = None
        if inst.evict_for is not None:
            if not inst.held:
                self.result.migrations_cancelled += 1  # it finished before its move did
            inst.held = False
            self._release_source(inst)
            return
        self._ready(inst)

    def _expire(self, inst: Instance, idle_since: float) -> None:
        if inst.state is not InstState.IDLE or inst.last_used != idle_since:
            return
        gone = keep_alive_removals([inst.container_view()], [str(inst.id)], self.now,
                                   until_needed=self.keep_until_needed, max_idle_s=self.max_idle_s)
        if gone:
            self._remove(inst)
        else:  # kept while its slot is not wanted: look again when it reaches the idle cap (float-safe)
            again = idle_since + max(self.max_idle_s, self.cluster.keep_alive_s)
            self._push(again if again > self.now else self.now + 1e-6 * max(1.0, self.now), EXPIRE,
                       (inst, idle_since))

    def _remove(self, inst: Instance, lease_hold_s: float = 0.0) -> None:
        node = self.nodes[inst.node]
        if inst.occupies:
            node.occupied_slots -= 1
            node.occupied_mb -= inst.memory_mb
        self.idle[inst.model].pop(inst.id, None)
        self.busy[inst.model].pop(inst.id, None)
        inst.state = InstState.REMOVED
        if inst.leased and lease_hold_s > 0:  # killed: its lease expires later
            self._push(self.now + lease_hold_s, LEASE_END, (node.index, inst.model))
        elif inst.leased:
            self._lease_end(node.index, inst.model)
        inst.leased = False
        del node.instances[inst.id]
        del self.instances[inst.id]

    def _lease_end(self, n: int, m: int) -> None:
        """A DRAM lease goes (released or expired); that counts as a use (the cache agent's last_used)."""
        node = self.nodes[n]
        node.dram.unpin(self.names[m])
        node.dram.touch(self.names[m])

    # --- migration (applied here, planned by faas_llm.migration_policy) -------------------------

    def begin_migration(self, victim: Instance, dest: int, resume_s: float, waiting_model: int) -> bool:
        """Load the victim's model on ``dest``; when it has resumed there, the victim's slot loads ``waiting_model``."""
        target = self.start_load(dest, victim.model, migrating=True)
        if target is None:
            return False
        target.takes_over = victim.id
        target.resume_s = resume_s
        victim.evict_for = waiting_model
        self.starting[waiting_model] += 1  # the reserved load covers one queued request
        self.result.migrations += 1
        return True

    def hold_for(self, victim: Instance, waiting_model: int, expected_wait_s: float) -> bool:
        """Hold ``victim``'s slot for ``waiting_model``: when its run ends, that model loads there; if it has
        not ended after max(:data:`MIN_HOLD_S`, 3 x ``expected_wait_s``), the hold lapses and the model is
        placed again (the invoker's hold expires so)."""
        if victim.evict_for is not None:
            return False
        victim.evict_for = waiting_model
        victim.held = victim.waited = True
        self.starting[waiting_model] += 1  # the held slot covers one queued request
        self.result.waits += 1
        self._push(self.now + max(MIN_HOLD_S, 3 * expected_wait_s), HOLD_LAPSE, (victim, waiting_model))
        return True

    def _hold_lapse(self, victim: Instance, waiting_model: int) -> None:
        if not victim.held or victim.evict_for != waiting_model or victim.state is not InstState.BUSY:
            return  # it ended (the start took its slot) or was removed
        victim.evict_for = None
        victim.held = False
        self.starting[waiting_model] -= 1
        self.result.waits_lapsed += 1
        self._cover(waiting_model)

    def _move_done(self, target: Instance) -> None:
        victim = self.instances.get(target.takes_over) if target.takes_over is not None else None
        target.takes_over = None
        if victim is None or victim.state is not InstState.BUSY:
            target.state = InstState.STARTING  # the victim finished first: an ordinary instance now
            self._ready(target)
            return
        target.state = InstState.BUSY
        target.fresh = False
        target.request = victim.request
        target.run_start = victim.run_start
        target.run_end = victim.run_end
        self.busy[target.model][target.id] = target
        self._push(target.run_end, RUN_DONE, target)
        self._release_source(victim)

    def _release_source(self, victim: Instance) -> None:
        node, waiting = victim.node, victim.evict_for
        assert waiting is not None
        victim.evict_for = None
        self._remove(victim)
        self.starting[waiting] -= 1
        if self.start_load(node, waiting) is None:
            self._cover(waiting)  # the room went elsewhere meanwhile: place it again
        self._retry_blocked()
