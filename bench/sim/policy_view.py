"""What a placement policy sees in the simulator: the real :class:`~faas_llm.placement.NodeView`, built from the
simulated cluster as the invoker's views carry it (:func:`faas_llm.placement.views_from_reports`)."""

from __future__ import annotations

import heapq
import itertools
import math
from typing import TYPE_CHECKING

from bench.sim.cluster import Instance, InstState, Node
from faas_llm.placement import NodeView, RunTimeDistribution, starting_free

if TYPE_CHECKING:
    from bench.sim.engine import Simulator


def busy_free_s(sim: Simulator, m: int) -> list[list[tuple[float, float]]]:
    """Per node, (expected seconds, standard deviation) until each busy warm instance of ``m`` is free,
    after the claimed requests.

    Non-clairvoyant: ``expected_run_s`` of the model (its rates at the workload's mean tokens), or with
    ``tail_estimate`` its run-time distribution given the time run so far (mean and spread; each queued
    run adds the distribution's mean and variance); not the request's true length. Clairvoyant runs use
    the true end times (no spread).
    """
    per_node: list[list[tuple[float, float]]] = [[] for _ in sim.nodes]
    busy = [i for i in sim.busy[m].values() if i.evict_for is None]
    starting = starting_of(sim, m) if sim.starting_as_servers else []
    if not busy and not starting:
        return per_node
    run, run_var = sim.expected_run[m], 0.0
    dist = sim.run_dists[m] if sim.run_dists is not None else None
    if dist is not None:
        run, run_var = dist.mean, dist.variance  # a queued request's run, not yet started
    heap = [(*busy_end(sim, i, run, dist), i.node) for i in busy]
    # a starting instance is free after its load and the run of the queued request it covers
    for i in starting:
        e, sd = starting_free(i.ready_at - sim.now, run, math.sqrt(run_var))
        heap.append((sim.now + e, sd * sd, i.node))
    heapq.heapify(heap)
    queued = list(itertools.islice(sim.queue[m], sim.claims[m])) if sim.clairvoyant else []
    for k in range(sim.claims[m]):
        t, var, node = heapq.heappop(heap)
        if sim.clairvoyant:
            heapq.heappush(heap, (t + queued[k].run_s, 0.0, node))
        else:
            heapq.heappush(heap, (t + run, var + run_var, node))
    for t, var, node in heap:
        per_node[node].append((t - sim.now, math.sqrt(var)))
    return per_node


def starting_of(sim: Simulator, m: int) -> list[Instance]:
    """Instances of ``m`` loading to serve its queue (not migration targets), if any are starting."""
    if not sim.starting[m]:
        return []
    return [i for n in sim.nodes for i in n.instances.values() if i.model == m and i.state is InstState.STARTING]


def busy_end(sim: Simulator, inst: Instance, run: float, dist: RunTimeDistribution | None) -> tuple[float, float]:
    """(when a busy instance is expected free, the variance): its true end (clairvoyant), the tail-aware
    estimate, or the model's mean run from its start (no variance known)."""
    if sim.clairvoyant:
        return inst.run_end, 0.0
    if dist is not None:
        elapsed = sim.now - inst.run_start
        return sim.now + dist.expected_remaining(elapsed), dist.remaining_variance(elapsed)
    return max(sim.now, inst.run_start + run), 0.0


def node_view(sim: Simulator, node: Node, m: int, busy_free: list[tuple[float, float]] | None = None,
              idle: int | None = None) -> NodeView:
    """What a policy knows of ``node`` for model ``m`` (``busy_free``: :func:`busy_free_s` of the node)."""
    name = sim.names[m]
    busy_free = busy_free or []
    # the pool's WARMING: a second start of m where one is starting starts nothing; a view that lists starting
    # instances as servers says so (the start under way is the option there), as views_from_reports does
    refused = sim.warming and sim.starting_as_servers and sim.starting_on(node.index, m)
    return NodeView(
        node=node.name,
        free_slots=0 if refused else max(0, sim.slots - node.occupied_slots),
        free_memory_mb=max(0, sim.memory_mb - node.occupied_mb),
        warm_idle=sum(1 for i in sim.idle[m].values() if i.node == node.index) if idle is None else idle,
        warm_busy_free_s=tuple(t for t, _ in busy_free),
        warm_busy_sd_s=tuple(sd for _, sd in busy_free) if sim.run_dists is not None else (),
        in_dram=name in node.dram,
        in_ssd=name in node.ssd,
        bw_dram=sim.cluster.bw_dram,
        bw_ssd=sim.cluster.bw_ssd,
        bw_registry=sim.cluster.bw_registry,
        queue_s=0.0 if sim.oracle else max(0.0, node.loader_free_at - sim.now),
        # registry fetches still pending, as the real views carry them (bytes, drained at registry bandwidth)
        queue_bytes=0 if sim.oracle else int(max(0.0, node.fetch_free_at - sim.now) * sim.cluster.bw_registry),
        boot_s=sim.cluster.start_overhead_s,
    )


def node_views(sim: Simulator, m: int) -> list[NodeView]:
    """Every node's view for model ``m``."""
    busy = busy_free_s(sim, m)
    idle = [0] * len(sim.nodes)
    for inst in sim.idle[m].values():
        idle[inst.node] += 1
    return [node_view(sim, node, m, busy[node.index], idle[node.index]) for node in sim.nodes]


def could_start(sim: Simulator, m: int) -> bool:
    """Some node has a free slot and the memory (else a blocked model stays blocked)."""
    need = sim.requests[m].memory_mb
    return any(sim.slots > n.occupied_slots and sim.memory_mb - n.occupied_mb >= need for n in sim.nodes)

