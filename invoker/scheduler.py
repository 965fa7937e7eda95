"""Cluster scheduling: when an action has backlog beyond its instances, place new ones.

Every invoker runs a tick; per action queue one of them wins a short lock
(``keys.placement_lock``) and decides for that action:

0. invocations still queued past their deadline get a timeout record (never left waiting);
1. the autoscaler (:mod:`faas_llm.autoscale`) says how many instances to add, from the backlog,
   the runs in flight, the instances in the node reports and the start requests not yet
   visible as containers (``keys.action_starts``), within ``min_instances`` / ``max_instances``
   (the queue of an action with ``min_instances > 0`` is in the queues index from its creation, so its
   minimum starts with no invocation; those starts never "wait for a warm instance" instead);
2. for each, the placement policy (``settings.placement_policy``, :mod:`faas_llm.placement`)
   picks a node from the node reports and cache inventories. A "wait for a warm instance"
   decision books one expected run on that instance and starts nothing; otherwise a start
   request goes to the node's stream (``keys.node_starts``), which its invoker turns into a
   container (:meth:`invoker.pool.ContainerPool.place`).
   Busy warm instances are estimated tail-aware when the action has a run-time history
   (:mod:`invoker.run_times`: its observed run times, shared in Redis, and each run's start from the
   running-run registry): expected free time ``E[R - a | R > a]`` and its spread, as the simulator's
   "ours"; without a history, the expected run time (``expected_run_s``) and no spread.
3. migration-aware placement (:mod:`invoker.migrate_place`): when the node where the start would
   begin soonest is full and moving one of its runs elsewhere makes the start sooner, that run is
   migrated and the start waits for (then takes) its slot.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
from collections.abc import Callable, Iterable
from typing import Any

from faas_llm import starts
from faas_llm.autoscale import instances_to_start, starts_below_min
from faas_llm.errors import ActivationStatus
from faas_llm.keys import Keys
from faas_llm.placement import NodeView, PlacementPolicy, PlacementRequest, views_from_reports, with_start_under_way
from faas_llm.settings import Settings
from faas_llm.types import Action, ContainerState, Limits, NodeReport, now_ms
from invoker import streams
from invoker.cluster import ActionDefinitions, ModelSizes, read_inventories, read_reports
from invoker.migrate_place import MigrationPlacer
from invoker.run_times import busy_elapsed, read_distribution, with_registered_runs

log = logging.getLogger(__name__)
#: a start request the node has not taken within this long (a dead node) no longer counts
START_REQUEST_TTL_S = 10.0


def _with_busy(v: NodeView, pairs: list[tuple[float, float]], spread: bool, warm_idle: int) -> NodeView:
    return dataclasses.replace(v, warm_idle=warm_idle, warm_busy_free_s=tuple(e for e, _ in pairs),
                               warm_busy_sd_s=tuple(sd for _, sd in pairs) if spread else ())


def _busy_pairs(v: NodeView, run_sd: float | None) -> tuple[list[tuple[float, float]], bool]:
    """The view's busy instances as (expected, sd), soonest first, and whether it has a spread to keep
    (it carries one per instance and ``run_sd`` is known)."""
    times = v.warm_busy_free_s
    spread = run_sd is not None and len(v.warm_busy_sd_s) == len(times)
    sds = v.warm_busy_sd_s if spread else (0.0,) * len(times)
    return sorted(zip(times, sds, strict=True)), spread


def book_warm(views: list[NodeView], node: str, run_s: float, run_sd: float | None = None) -> list[NodeView]:
    """After deciding to wait for a warm instance on ``node``, that instance is busy one run longer
    (``run_s`` expected; ``run_sd`` its standard deviation where known: the spreads add as variances)."""
    out = []
    for v in views:
        if v.node == node:
            pairs, spread = _busy_pairs(v, run_sd)
            sd = run_sd or 0.0
            if v.warm_idle > 0:
                v = _with_busy(v, [*pairs, (run_s, sd)], spread, v.warm_idle - 1)
            elif pairs:
                (e, e_sd), rest = pairs[0], pairs[1:]
                v = _with_busy(v, [(e + run_s, math.hypot(e_sd, sd)), *rest], spread, v.warm_idle)
        out.append(v)
    return out


def idle_as_busy(v: NodeView, run_s: float, run_sd: float | None = None) -> NodeView:
    """The view with its idle warm instances counted busy for one run each (the autoscaler counted them)."""
    pairs, spread = _busy_pairs(v, run_sd)
    return _with_busy(v, [*pairs, *([(run_s, run_sd or 0.0)] * v.warm_idle)], spread, 0)


def book_start(views: list[NodeView], node: str, size_bytes: int) -> list[NodeView]:
    """After a start request to ``node``, it has one slot less and one more load queued."""
    return [dataclasses.replace(v, free_slots=v.free_slots - 1, queue_bytes=v.queue_bytes + size_bytes,
                                prewarmed=max(0, v.prewarmed - 1))
            if v.node == node else v for v in views]


def book_start_under_way(views: list[NodeView], node: str, size_bytes: int, load_s: float, run_s: float,
                         run_sd: float | None) -> list[NodeView]:
    """After a start request of the action to ``node`` (loaded in ``load_s``): the slot and the load are booked
    (:func:`book_start`), the new instance is listed among the action's busy ones, free after its load and one
    run (:func:`faas_llm.placement.with_start_under_way`: the pass's next decisions can wait for it instead of
    starting one load per queued request), and the node offers no second start of the action: its pool answers
    one while this one starts with ``WARMING`` and starts nothing (:func:`faas_llm.pool_policy.choose`)."""
    views = with_start_under_way(book_start(views, node, size_bytes), node, load_s, run_s, run_sd)
    return [dataclasses.replace(v, free_slots=0) if v.node == node else v for v in views]


def instances_of(reports: list[NodeReport], namespace: str, action: str) -> tuple[int, int]:
    """(live instances, runs in flight) of an action across the cluster."""
    instances = in_flight = 0
    for report in reports:
        for c in report.containers:
            if c.namespace == namespace and c.action == action and c.state is not ContainerState.REMOVING:
                instances += 1
                in_flight += c.active
    return instances, in_flight


class Scheduler:
    def __init__(self, settings: Settings, r: Any, keys: Keys, actions: ActionDefinitions, policy: PlacementPolicy,
                 consumer: str, expected_run_s: Callable[[str, str], float],
                 fail_backlog: Callable[[str, str, ActivationStatus, str, int], int],
                 expire_backlog: Callable[[str, str, Limits | None], int] | None = None,
                 boot_s: Callable[[], float] = lambda: 0.0,
                 send_migrate: Callable[[str, str], None] | None = None) -> None:
        self.settings, self.r, self.keys, self.actions = settings, r, keys, actions
        self.policy, self.consumer = policy, consumer
        self.expected_run_s = expected_run_s
        self.fail_backlog = fail_backlog
        self.expire_backlog = expire_backlog
        self.boot_s = boot_s
        self.sizes = ModelSizes(settings)
        self.group = keys.consumer_group()
        self.migrations = None if send_migrate is None else MigrationPlacer(
            settings, r, keys, send_migrate, expected_run_s, self.sizes.size, boot_s)
        # the periodic tick and the cold-start watch (invoker.coldwatch) tick from two threads: one at a time
        self._tick_lock = threading.Lock()

    def tick(self, only: Iterable[str] | None = None) -> dict[str, int]:
        """One scheduling pass over every action queue (or the queues ``only``); returns start requests sent
        per action."""
        with self._tick_lock:
            return self._tick(only)

    def _tick(self, only: Iterable[str] | None) -> dict[str, int]:
        lock_ms = max(200, int(self.settings.heartbeat_interval_s * 1500))
        mine: list[tuple[str, str, str, int]] = []
        queues = self.r.smembers(self.keys.queues_index()) if only is None else set(only)
        for queue in sorted(queues):
            target = streams.queue_action(self.keys, queue)
            if target is None:
                continue
            ns, name = target
            lock = self.keys.placement_lock(ns, name)
            # the lock keeps other invokers out for lock_ms; this invoker's own second pass within it goes on
            if not self.r.set(lock, self.consumer, nx=True, px=lock_ms) and self.r.get(lock) != self.consumer:
                continue
            # Start requests are read BEFORE the reports: a node publishes its report (with the new
            # container) before it removes the request, so every start is seen in one or the other.
            starts_key = self.keys.action_starts(ns, name)
            self.r.zremrangebyscore(starts_key, "-inf", now_ms())
            mine.append((queue, ns, name, int(self.r.zcard(starts_key))))
        if not mine:
            return {}
        reports = read_reports(self.r, self.keys)
        inventories = read_inventories(self.r, self.keys, [rep.node for rep in reports])
        sent: dict[str, int] = {}
        for queue, ns, name, pending_starts in mine:
            n = self._schedule(queue, ns, name, pending_starts, reports, inventories)
            if n:
                sent[f"{ns}/{name}"] = n
        return sent

    def _schedule(self, queue: str, ns: str, name: str, pending_starts: int, reports: list[NodeReport],
                  inventories: Any) -> int:
        backlog = streams.backlog(self.r, queue, self.group)
        action = self.actions.get(ns, name)
        if action is None:
            if backlog:
                failed = self.fail_backlog(ns, name, ActivationStatus.DEVELOPER_ERROR,
                                           "The requested resource does not exist.", backlog)
                log.warning("failed %d invocations of %s/%s: the action does not exist", failed, ns, name)
            return 0
        if backlog and self.expire_backlog is not None:
            backlog -= self.expire_backlog(ns, name, action.limits)
        instances, in_flight = instances_of(reports, ns, name)
        wanted = instances_to_start(action.scaling, instances + pending_starts, in_flight, backlog,
                                    action.limits.concurrency)
        if wanted <= 0:
            return 0
        return self._place(action, wanted, reports, inventories,
                           must_start=starts_below_min(action.scaling, instances + pending_starts))

    def _place(self, action: Action, wanted: int, reports: list[NodeReport], inventories: Any,
               must_start: int = 0) -> int:
        """Send up to ``wanted`` start requests; the first ``must_start`` (up to ``min_instances``) never
        wait for a warm instance instead."""
        ns, name = action.namespace, action.name
        request = PlacementRequest(ns, name, action.exec.model, self.sizes.size(action.exec.model),
                                   action.limits.memory)
        # a run that began since a node's last heartbeat shows there as an idle container: the registry
        # (written by the claim) says which are busy, so no start goes to a slot that is taken
        reports = with_registered_runs(self.r, self.keys, reports, now_ms())
        views, run_s, run_sd = self.views(request, reports, inventories)
        # the autoscaler counted idle instances already: they will be busy with the demand it saw
        views = [idle_as_busy(v, run_s, run_sd) for v in views]
        sent = 0
        for i in range(wanted):
            options = views if i >= must_start else [
                dataclasses.replace(v, warm_idle=0, warm_busy_free_s=()) for v in views]
            decision = self.policy.choose(request, options)
            hold = None if self.migrations is None else self.migrations.consider(
                action, request, options, decision, reports, inventories)
            if hold is not None and not hold.ready:
                break  # a migration frees a slot for this start: wait for it
            if hold is not None:
                self.send_start(hold.node, action)
                log.info("placing %s/%s on %s, in the slot it was held for (a migration or a run ending)", ns, name,
                         hold.node)
                views = book_start(views, hold.node, request.size_bytes)
                sent += 1
                continue
            if decision is None:
                log.info("no node can start %s/%s now", ns, name)
                break
            if decision.waits_for_warm:
                views = book_warm(views, decision.node, run_s, run_sd)
                continue
            self.send_start(decision.node, action)
            log.info("placing %s/%s on %s (%s, est. %.2fs)", ns, name, decision.node, decision.tier.value,
                     decision.startup_s)
            views = book_start_under_way(views, decision.node, request.size_bytes, decision.startup_s, run_s, run_sd)
            sent += 1
        return sent

    def views(self, request: PlacementRequest, reports: list[NodeReport], inventories: Any
              ) -> tuple[list[NodeView], float, float | None]:
        """The placement's views of ``request`` and a queued run's (expected seconds, standard deviation).

        With the action's run-time history (:func:`invoker.run_times.read_distribution`) busy instances
        carry the tail-aware estimate and its spread (busy-since from the running-run registry); without,
        the expected run time and no spread (``None``)."""
        ns, name = request.namespace, request.action
        dist = read_distribution(self.r, self.keys, ns, name)
        if dist is None:
            run_s = self.expected_run_s(ns, name)
            return (views_from_reports(request, reports, inventories, expected_run_s=run_s, boot_s=self.boot_s(),
                                       starting_as_busy=True),
                    run_s, None)
        elapsed = busy_elapsed(self.r, self.keys, reports, ns, name, now_ms())
        views = views_from_reports(request, reports, inventories, expected_run_s=dist.mean, boot_s=self.boot_s(),
                                   run_times=dist, busy_elapsed_s=elapsed, starting_as_busy=True)
        return views, dist.mean, math.sqrt(dist.variance)

    def send_start(self, node: str, action: Action) -> str:
        expires = now_ms() + int(max(START_REQUEST_TTL_S, 5 * self.settings.heartbeat_interval_s) * 1000)
        return starts.request_start(self.r, self.keys, node, action.namespace, action.name, expires)
