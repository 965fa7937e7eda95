"""Instances' loads in the simulator: room on a node (the pool's LRU eviction), the load queues, the cache tiers a
load reads and fills, and the cache agent's loads (``ClusterSpec.agent_loads``)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from bench.sim.cluster import Instance, InstState, Node
from bench.sim.events import BOOT_DONE, LOAD_DONE, MOVE_DONE
from faas_llm.pool_policy import PoolCapacity, has_room, lru_victims
from faas_llm.types import LoadTier

if TYPE_CHECKING:
    from bench.sim.engine import Simulator


def make_room(sim: Simulator, node: Node, memory_mb: int) -> bool:
    live = [i.container_view() for i in node.instances.values()]
    capacity = PoolCapacity(sim.slots, sim.memory_mb)
    if has_room(live, memory_mb, capacity):
        return True
    victims = lru_victims(live, memory_mb, capacity)
    for vid in victims:
        sim.remove(node.instances[int(vid)], lease_hold_s=sim.cluster.evicted_lease_hold_s)
        sim.result.instances_evicted += 1
    return bool(victims)


def load_time(sim: Simulator, node: Node, m: int, tier: LoadTier) -> tuple[float, float]:
    """(start, end) of a load of ``m`` from ``tier`` on ``node``'s loader."""
    bws = {LoadTier.DRAM: sim.cluster.bw_dram, LoadTier.SSD: sim.cluster.bw_ssd}
    bw = bws.get(tier, sim.cluster.bw_registry)
    seconds = sim.sizes[m] / bw
    if sim.oracle or (tier is LoadTier.DRAM and not sim.cluster.single_loader):
        return sim.now, sim.now + seconds
    if tier is LoadTier.REGISTRY and not sim.cluster.single_loader:
        start = max(sim.now, node.fetch_free_at)
        node.fetch_free_at = start + seconds
    else:
        start = max(sim.now, node.loader_free_at)
        node.loader_free_at = start + seconds
    return start, start + seconds


def start_load(sim: Simulator, n: int, m: int, *, migrating: bool = False) -> Instance | None:
    """A new instance of ``m`` on node ``n``, loading from its fastest tier; None without room."""
    node = sim.nodes[n]
    memory = sim.requests[m].memory_mb
    if not make_room(sim, node, memory):
        return None
    name = sim.names[m]
    agent = sim.cluster.agent_loads and not sim.oracle
    tier = node.fastest_tier(name)
    if agent:
        end = sim.now + sim.cluster.start_overhead_s  # the runtime boots, then asks for its model
    else:
        if tier is LoadTier.DRAM:
            node.dram.pin(name)
        elif tier is LoadTier.SSD:
            node.ssd.pin(name)
        _, end = load_time(sim, node, m, tier)
        end += sim.cluster.start_overhead_s
    state = InstState.MIGRATING_IN if migrating else InstState.STARTING
    inst = Instance(sim.new_instance_id(), m, n, memory, state, tier)
    inst.ready_at = end
    inst.last_used = sim.now
    sim.instances[inst.id] = inst
    node.instances[inst.id] = inst
    node.occupied_slots += 1
    node.occupied_mb += memory
    if not migrating:
        sim.starting[m] += 1
    sim.push(end, BOOT_DONE if agent else LOAD_DONE, inst)
    return inst


def begin_load(sim: Simulator, inst: Instance) -> None:
    """The booted runtime asks the cache agent for its model (``ClusterSpec.agent_loads``)."""
    if inst.state is InstState.REMOVED:
        return
    node, m = sim.nodes[inst.node], inst.model
    name = sim.names[m]
    flight = node.flights.get(m)
    if flight is not None and flight[0] > sim.now:  # single flight: wait for the load in progress
        end, inst.tier = flight
        inst.joined = True
        sim.push(end, LOAD_DONE, inst)
        return
    tier = node.fastest_tier(name)
    if tier is LoadTier.DRAM:
        node.dram.pin(name)
    elif node.dram.insert(name, sim.sizes[m]):  # the DRAM extent is reserved before the read
        node.dram.pin(name)
        if tier is LoadTier.SSD:
            node.ssd.pin(name)
    else:  # no room (every resident checkpoint leased): the runtime reads the SSD copy itself
        start = sim.now
        if tier is LoadTier.REGISTRY:
            _, start = load_time(sim, node, m, LoadTier.REGISTRY)
            node.ssd.insert(name, sim.sizes[m])
        saved, sim.now = sim.now, start
        _, end = load_time(sim, node, m, LoadTier.SSD)
        sim.now = saved
        inst.tier = LoadTier.LOCAL
        sim.push(end, LOAD_DONE, inst)
        return
    _, end = load_time(sim, node, m, tier)
    inst.tier = tier
    if tier is not LoadTier.DRAM:
        node.flights[m] = (end, tier)
    sim.push(end, LOAD_DONE, inst)


def fill_caches(sim: Simulator, node: Node, m: int, tier: LoadTier) -> None:
    name, size = sim.names[m], sim.sizes[m]
    if sim.cluster.agent_loads and not sim.oracle:
        agent_filled(sim, node, m, tier)
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


def agent_filled(sim: Simulator, node: Node, m: int, tier: LoadTier) -> None:
    """A load by the cache agent (``_begin_load``) is done: its pins go, its copies are used."""
    name = sim.names[m]
    if node.flights.get(m, (math.inf,))[0] <= sim.now:
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
        node.ssd.insert(name, sim.sizes[m])


def load_done(sim: Simulator, inst: Instance) -> None:
    node = sim.nodes[inst.node]
    if not inst.joined:
        fill_caches(sim, node, inst.model, inst.tier)
    if (sim.cluster.dram_lease_while_live and inst.tier is not LoadTier.LOCAL
            and sim.names[inst.model] in node.dram):
        node.dram.pin(sim.names[inst.model])
        inst.leased = True
    if inst.state is InstState.MIGRATING_IN:
        if inst.takes_over is not None:
            sim.push(sim.now + inst.resume_s, MOVE_DONE, inst)
            return
        inst.state = InstState.STARTING  # its migration was cancelled: an ordinary new instance
    else:
        sim.starting[inst.model] -= 1
    sim.ready(inst)

