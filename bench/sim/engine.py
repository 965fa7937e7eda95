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

Parts: :mod:`.policy_view` (what a policy sees), :mod:`.loads` (loads, caches, room), :mod:`.moves` (applying
migrations and holds), :mod:`.events` (event kinds); this module is the loop and the dispatch.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from bench.sim import loads, moves, policy_view
from bench.sim.cluster import Instance, InstState, Node
from bench.sim.costs import ClusterSpec, GpuModel
from bench.sim.events import (
    ARRIVE,
    BOOT_DONE,
    EXPIRE,
    HOLD_LAPSE,
    LEASE_END,
    LOAD_DONE,
    MOVE_DONE,
    RUN_DONE,
    TICK,
    UNLIMITED,
)
from bench.sim.workload import Request, Workload, expected_run_s, run_distributions
from faas_llm.placement import Decision, NodeView, PlacementPolicy, PlacementRequest
from faas_llm.pool_policy import keep_alive_removals
from faas_llm.types import LoadTier


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
        self._init_cluster()
        self._init_estimates(keep_until_needed, max_idle_s, tail_estimate, starting_as_servers)
        #: the real invoker's scheduling (invoker/scheduler.py, invoker/coldwatch.py): an arrival for a model with no
        #: instance (none idle, busy or starting) is placed at once; every other placement, the re-decision of the
        #: waits for busy warm instances and the retries of blocked models happen on its periodic tick (``tick_s``
        #: apart). None: every arrival is placed at once
        self.tick_s = tick_s
        self._tick_at: float | None = None
        #: the real pool's WARMING outcome (faas_llm.pool_policy.choose): a start request for a model that already
        #: has an instance starting on that node (it has no run yet) starts nothing; the queue waits for that one
        self.warming = warming
        self._init_queues()
        self._deploy(seed)

    # --- setup ---------------------------------------------------------------------------------

    def _init_cluster(self) -> None:
        """Nodes, their capacity (unlimited for the oracle) and the models' placement requests."""
        cluster, workload = self.cluster, self.w
        self.nodes = [Node.build(i, name, cluster) for i, name in enumerate(cluster.node_names())]
        self.slots = UNLIMITED if self.oracle else cluster.slots_per_node
        self.memory_mb = UNLIMITED if self.oracle else cluster.node_memory_mb
        self.sizes = [m.size_bytes for m in workload.models]
        self.names = [m.name for m in workload.models]
        self.requests = [
            PlacementRequest("bench", m.name, m.name, m.size_bytes, self.gpu.instance_memory_mb(m, cluster))
            for m in workload.models
        ]

    def _init_estimates(self, keep_until_needed: bool, max_idle_s: float, tail_estimate: bool,
                        starting_as_servers: bool) -> None:
        """What the scheduler can know of run times, and the keep-alive rule."""
        self.expected_run = expected_run_s(self.w, self.cluster, self.gpu)
        #: keep-alive as the real pool applies it (faas_llm.pool_policy.keep_alive_removals)
        self.keep_until_needed = keep_until_needed
        self.max_idle_s = max_idle_s
        #: busy instances' free times from each model's run-time distribution given the time run so far
        #: (faas_llm.placement.RunTimeDistribution), instead of "mean minus elapsed"
        self.run_dists = run_distributions(self.w, self.cluster, self.gpu) if tail_estimate else None
        #: instances still loading count as future servers in the warm-wait estimate (free after their load and
        #: the one queued run each covers), as :func:`faas_llm.placement.views_from_reports` builds them with
        #: ``starting_as_busy``; off: only busy instances can be waited for
        self.starting_as_servers = starting_as_servers

    def _init_queues(self) -> None:
        """Per model: its queue, starts under way, warm waits, idle and busy instances; the event heap."""
        n = len(self.w.models)
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

    def _deploy(self, seed: int) -> None:
        """Deployment-time copies on node SSDs (ServerlessLLM downloads a model at deploy)."""
        rng = random.Random(seed)
        order = list(range(len(self.nodes)))
        for m in range(len(self.w.models)):
            rng.shuffle(order)
            for i in order[: self.cluster.ssd_replicas]:
                self.nodes[i].ssd.insert(self.names[m], self.sizes[m])

    def push(self, t: float, kind: int, data: object) -> None:
        heapq.heappush(self._events, (t, next(self._seq), kind, data))

    # --- the loop -------------------------------------------------------------------------------

    def run(self) -> SimResult:
        for req in self.w.requests:
            self.push(req.t, ARRIVE, req)
        while self._events:
            t, _, kind, data = heapq.heappop(self._events)
            self.now = t
            if kind == ARRIVE:
                assert isinstance(data, Request)
                self._arrive(data)
            elif kind == LOAD_DONE:
                assert isinstance(data, Instance)
                loads.load_done(self, data)
            elif kind == RUN_DONE:
                assert isinstance(data, Instance)
                self._run_done(data)
            elif kind == EXPIRE:
                assert isinstance(data, tuple)
                self._expire(*data)
            elif kind == MOVE_DONE:
                assert isinstance(data, Instance)
                moves.move_done(self, data)
            elif kind == BOOT_DONE:
                assert isinstance(data, Instance)
                loads.begin_load(self, data)
            elif kind == TICK:
                self._tick()
            elif kind == LEASE_END:
                assert isinstance(data, tuple)
                self._lease_end(*data)
            elif kind == HOLD_LAPSE:
                assert isinstance(data, tuple)
                moves.hold_lapse(self, *data)
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
            self.cover(req.model)  # the cold-start watch: placed at once
        else:
            self._schedule_tick()

    def _has_instance(self, m: int) -> bool:
        return bool(self.idle[m] or self.busy[m] or self.starting[m])

    def _schedule_tick(self) -> None:
        assert self.tick_s is not None
        if self._tick_at is None:
            self._tick_at = (math.floor(self.now / self.tick_s) + 1) * self.tick_s
            self.push(self._tick_at, TICK, None)

    def _tick(self) -> None:
        """The invoker's periodic scheduling pass: every queued model is placed afresh (its waits for busy
        warm instances decided again, as the real scheduler books them only within one pass)."""
        self._tick_at = None
        for m in range(len(self.queue)):
            if self.queue[m]:
                self.claims[m] = 0
                self.blocked.discard(m)
                self.cover(m)
        if any(self.queue):
            self._schedule_tick()

    def _uncovered(self, m: int) -> int:
        return len(self.queue[m]) - self.starting[m] - self.claims[m]

    def cover(self, m: int) -> None:
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
            elif self.warming and self.starting_on(self.node_index(decision.node), m):
                return  # WARMING: the node's starting instance of m is the one this start gets
            elif self.start_load(self.node_index(decision.node), m) is None:
                self.blocked.add(m)  # the policy chose a node without room: wait for capacity
                return
        self.blocked.discard(m)

    def starting_on(self, n: int, m: int) -> bool:
        return any(i.model == m and i.state is InstState.STARTING for i in self.nodes[n].instances.values())

    def retry_blocked(self) -> None:
        if not self.blocked or self.tick_s is not None:
            return  # with ticks: retried on the next one
        for m in sorted(self.blocked, key=lambda m: (self.queue[m][0].t if self.queue[m] else math.inf, m)):
            if self.queue[m] and not policy_view.could_start(self, m):
                continue  # nothing changed for it: no room anywhere (it had no warm option either)
            self.blocked.discard(m)
            self.cover(m)

    # --- what a policy sees ---------------------------------------------------------------------

    def node_index(self, name: str) -> int:
        return int(name[1:])

    # --- the parts' entry points (bench.sim.policy_view, .loads, .moves) ---------------------------

    def busy_free_s(self, m: int) -> list[list[tuple[float, float]]]:
        return policy_view.busy_free_s(self, m)

    def view(self, node: Node, m: int, busy_free: list[tuple[float, float]] | None = None,
             idle: int | None = None) -> NodeView:
        return policy_view.node_view(self, node, m, busy_free, idle)

    def views(self, m: int) -> list[NodeView]:
        return policy_view.node_views(self, m)

    def start_load(self, n: int, m: int, *, migrating: bool = False) -> Instance | None:
        """A new instance of ``m`` on node ``n``, loading from its fastest tier; None without room."""
        return loads.start_load(self, n, m, migrating=migrating)

    def new_instance_id(self) -> int:
        return next(self._ids)

    def begin_migration(self, victim: Instance, dest: int, resume_s: float, waiting_model: int) -> bool:
        return moves.begin_migration(self, victim, dest, resume_s, waiting_model)

    def hold_for(self, victim: Instance, waiting_model: int, expected_wait_s: float) -> bool:
        return moves.hold_for(self, victim, waiting_model, expected_wait_s)

    # --- instances ------------------------------------------------------------------------------


    def ready(self, inst: Instance) -> None:
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
        self.push(self.now + self.cluster.keep_alive_s, EXPIRE, (inst, self.now))
        self.retry_blocked()

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
        self.push(inst.run_end, RUN_DONE, inst)

    def _run_done(self, inst: Instance) -> None:
        if inst.state is not InstState.BUSY or inst.run_end != self.now:
            return  # it moved away (migration) or was removed
        inst.last_used = self.now
        inst.request = None
        if inst.evict_for is not None:
            if not inst.held:
                self.result.migrations_cancelled += 1  # it finished before its move did
            inst.held = False
            moves.release_source(self, inst)
            return
        self.ready(inst)

    def _expire(self, inst: Instance, idle_since: float) -> None:
        if inst.state is not InstState.IDLE or inst.last_used != idle_since:
            return
        gone = keep_alive_removals([inst.container_view()], [str(inst.id)], self.now,
                                   until_needed=self.keep_until_needed, max_idle_s=self.max_idle_s)
        if gone:
            self.remove(inst)
        else:  # kept while its slot is not wanted: look again when it reaches the idle cap (float-safe)
            again = idle_since + max(self.max_idle_s, self.cluster.keep_alive_s)
            self.push(again if again > self.now else self.now + 1e-6 * max(1.0, self.now), EXPIRE,
                       (inst, idle_since))

    def remove(self, inst: Instance, lease_hold_s: float = 0.0) -> None:
        node = self.nodes[inst.node]
        if inst.occupies:
            node.occupied_slots -= 1
            node.occupied_mb -= inst.memory_mb
        self.idle[inst.model].pop(inst.id, None)
        self.busy[inst.model].pop(inst.id, None)
        inst.state = InstState.REMOVED
        if inst.leased and lease_hold_s > 0:  # killed: its lease expires later
            self.push(self.now + lease_hold_s, LEASE_END, (node.index, inst.model))
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

