"""From the invoker's Redis records to a policy's views (pure): node reports and cache inventories -> NodeView."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

from faas_llm.placement.distribution import RunTimeDistribution
from faas_llm.placement.model import NodeView, PlacementRequest, starting_free, starting_load_left
from faas_llm.types import CacheInventory, ContainerInfo, ContainerState, NodeReport


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
    views: list[NodeView] = []
    for report in reports:
        live = [c for c in report.containers if c.state is not ContainerState.REMOVING]
        mine = [c for c in live if c.namespace == request.namespace and c.action == request.action]
        busy, busy_sd = _busy_times(mine, run_times, busy_elapsed_s or {}, expected_run_s)
        view = _node_view(request, report, inventories.get(report.node), live, mine, model_sizes or {}, boot_s)
        view = dataclasses.replace(view, warm_busy_free_s=busy, warm_busy_sd_s=busy_sd)
        coming = sum(1 for c in mine if c.state is ContainerState.STARTING)
        if starting_as_busy and coming:
            view = _with_starts_as_busy(request, view, coming, run_times, expected_run_s)
        views.append(view)
    return views


def _busy_times(mine: Sequence[ContainerInfo], run_times: RunTimeDistribution | None,
                elapsed: Mapping[str, Sequence[float]], expected_run_s: float
                ) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(expected seconds until free, standard deviations) of the action's full busy containers: tail-aware from
    its run-time distribution where known, else ``expected_run_s`` scaled by their load (no spread)."""
    full = [c for c in mine if c.state is ContainerState.BUSY and c.active >= c.concurrency]
    if run_times is not None:
        pairs = [run_times.busy_free(elapsed.get(c.id, ())) for c in full]
        return tuple(e for e, _ in pairs), tuple(sd for _, sd in pairs)
    return tuple(expected_run_s * max(1, c.active) / max(1, c.concurrency) for c in full), ()


def _node_view(request: PlacementRequest, report: NodeReport, inv: CacheInventory | None,
               live: Sequence[ContainerInfo], mine: Sequence[ContainerInfo], sizes: Mapping[str, int],
               boot_s: float) -> NodeView:
    """The node's slots, memory, idle instances of the action, cache tiers and queue of pending loads."""
    idle = sum(1 for c in mine if c.state is ContainerState.IDLE or (
        c.state is ContainerState.BUSY and c.active < c.concurrency))
    starting = [c for c in live if c.state is ContainerState.STARTING]
    occupied = [c for c in live if c.state in (ContainerState.BUSY, ContainerState.STARTING)]
    queue_bytes = sum(sizes.get(c.model or "", request.size_bytes) for c in starting)
    if inv is not None:
        queue_bytes += inv.pending_bytes
    return NodeView(
        node=report.node,
        # idle and prewarmed containers are reclaimable (the pool evicts LRU idle ones)
        free_slots=max(0, report.max_containers - len(occupied)),
        free_memory_mb=report.free_memory_mb,
        warm_idle=idle,
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


def _with_starts_as_busy(request: PlacementRequest, view: NodeView, coming: int,
                         run_times: RunTimeDistribution | None, expected_run_s: float) -> NodeView:
    """The view with the action's ``coming`` starting containers listed among its busy instances, and no slot
    for a second start (the pool answers one with ``WARMING`` and starts nothing: the start under way is the
    option there, not a new one)."""
    run_s, run_sd = (run_times.mean, math.sqrt(run_times.variance)) if run_times is not None \
        else (expected_run_s, 0.0)
    e, sd = starting_free(starting_load_left(request, view), run_s, run_sd)
    return dataclasses.replace(view, warm_busy_free_s=(*view.warm_busy_free_s, *([e] * coming)),
                               warm_busy_sd_s=(*view.warm_busy_sd_s, *([sd] * coming)) if run_times is not None
                               else (), free_slots=0)
